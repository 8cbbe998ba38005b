"""A benchmark is one folder (``rankmix/tasks/<name>/``: reader, made-up data in the real layout, scorer) plus its
task yaml: found by name, its tiny data read by its own reader, its files in the data fingerprint, its data
written for the rehearsal, and a tiny run that trains and scores with it, without editing anything else."""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

import rankmix.tasks
from conftest import OFFLINE_ENV, REPO, run_train
from rankmix.data.fingerprints import data_paths, fingerprint
from rankmix.data.sources import build_splits
from rankmix.errors import ConfigError

BENCHMARK = '''
"""toyqa: sums, as a newcomer's benchmark would be: one JSON file with train and test question lists."""
import json
import random
from pathlib import Path

PATHS = {"qa_file": "toyqa's qa.json: {'train': [{'q', 'a'}], 'test': [...]}"}


def read(source):
    data = json.loads(Path(source["qa_file"]).read_text())
    rec = lambda r: {"inputs": r["q"], "targets": r["a"], "task": "toyqa"}
    train = [rec(r) for r in data["train"]]
    return {"train": train[4:], "validation": train[:4], "test": [rec(r) for r in data["test"]]}


def write(root, seed):
    rng = random.Random(seed)
    qa = lambda: (lambda a, b: {"q": f"{a}+{b}", "a": str(a + b)})(rng.randrange(5), rng.randrange(5))
    path = Path(root) / "qa.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"train": [qa() for _ in range(40)], "test": [qa() for _ in range(8)]}))
    return {"qa_file": str(path)}


def score(records):
    return {"accuracy": 100 * sum(r["prediction"].strip() == r["targets"] for r in records) / len(records)}
'''


def readme_task_yaml() -> str:
    """The task yaml the README's "Adding a benchmark" gives, for this folder."""
    text = (REPO / "README.md").read_text()
    block = text.split("## Adding a benchmark", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    return block.replace("mybench", "toyqa").replace("my_file", "qa_file").replace("max_epochs: 3", "max_epochs: 1")


TASK_YAML = readme_task_yaml()


@pytest.fixture()
def folder(tmp_path, monkeypatch):
    """``<tmp>/ext/toyqa/``: a benchmark folder outside the checkout (``RANKMIX_TASKS``), found as one inside it is."""
    pkg = tmp_path / "ext" / "toyqa"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(textwrap.dedent(BENCHMARK))
    monkeypatch.setattr(rankmix.tasks, "__path__", [*rankmix.tasks.__path__, str(pkg.parent)])
    monkeypatch.delitem(sys.modules, "rankmix.tasks.toyqa", raising=False)   # this test's copy, not an earlier one
    return tmp_path / "ext"


def test_the_folder_is_found_and_its_tiny_data_goes_through_its_reader(folder, tmp_path):
    assert "toyqa" in rankmix.tasks.names()
    splits = build_splits({"kind": "toyqa", "seed": 3}, tmp_path / "cache")
    assert [len(splits[s]) for s in ("train", "validation", "test")] == [36, 4, 8]
    assert list((tmp_path / "cache" / "tiny_data").glob("toyqa-*/qa.json"))   # the real layout, written once
    assert all(r["task"] == "toyqa" and "+" in r["inputs"] for r in splits["test"])


def test_an_edited_folder_is_written_and_read_again(folder, tmp_path):
    from rankmix.data.instruction import InstructionDataModule

    prepared = lambda: InstructionDataModule(None, str(tmp_path), {"kind": "toyqa", "seed": 0}).files()["train"]  # noqa: E731
    before = prepared()
    with open(folder / "toyqa" / "__init__.py", "a") as f:
        f.write("# the writer changed\n")
    assert prepared() != before


def test_its_declared_files_are_in_the_data_fingerprint(folder, tmp_path):
    written = rankmix.tasks.get("toyqa").write(tmp_path / "data", 0)
    node = {"source": {"kind": "toyqa", "qa_file": written["qa_file"]}}
    assert [str(p) for p in data_paths(node)] == [written["qa_file"]]
    before = fingerprint(data_paths(node))
    (tmp_path / "data" / "qa.json").write_text(json.dumps({"train": [], "test": []}))
    assert fingerprint(data_paths(node)) != before


def test_the_rehearsal_writes_its_data_from_the_folder(folder, tmp_path):
    from rankmix.rehearsal.run import written_data

    composed = {"task": {"datamodule": {"source": {"kind": "toyqa"}}}}
    out = written_data("toyqa", composed, tmp_path / "r")
    assert list(out) == ["task.datamodule.source.qa_file"] and out["task.datamodule.source.qa_file"].endswith("qa.json")


@pytest.mark.parametrize(("task", "key"), [("flan", "test_file"), ("commonsense", "test_dir")])
def test_at_paper_scale_a_benchmark_reads_its_files_never_its_made_up_copy(task, key, tmp_path):
    from rankmix.config import compose_run
    from rankmix.data.loading import prepared_datamodule

    cfg = compose_run([f"task={task}", "scale=paper", f"paths.cache_dir={tmp_path}"])
    with pytest.raises(ConfigError, match=f"task.datamodule.source.{key}=None: is required .* {task}: "):
        prepared_datamodule(cfg)
    assert not (tmp_path / "tiny_data").exists()


@pytest.mark.parametrize(("kind", "now"), [("flan_like", "flan"), ("commonsense_like", "commonsense")])
def test_a_former_generated_kind_is_refused_naming_the_folder(kind, now):
    with pytest.raises(ConfigError, match=rf"source.kind='{kind}': no longer a kind: write kind: {now} .*tasks/{now}/"):
        build_splits({"kind": kind, "seed": 0})


def test_a_half_given_or_unknown_benchmark_is_refused(folder, tmp_path):
    with pytest.raises(ConfigError, match="no benchmark folder rankmix/tasks/nope/"):
        rankmix.tasks.get("nope")
    bad = folder / "broken"
    bad.mkdir()
    (bad / "__init__.py").write_text("PATHS = {}\n")
    with pytest.raises(Exception, match="lacks read, write"):
        rankmix.tasks.get("broken")


@pytest.mark.slow
def test_a_tiny_run_trains_and_scores_with_the_folder_and_one_yaml(folder, tmp_path, monkeypatch):
    conf = tmp_path / "myconf" / "task"
    conf.mkdir(parents=True)
    (conf / "toyqa.yaml").write_text(TASK_YAML)
    monkeypatch.setenv("RANKMIX_TASKS", str(folder))
    r = run_train(tmp_path, f"hydra.searchpath=[file://{tmp_path / 'myconf'}]", "task=toyqa")
    assert r.returncode == 0, r.stderr[-3000:]
    result = r.result()
    assert "test/accuracy" in result["metrics"] and result["config"]["task"]["datamodule"]["source"]["kind"] == "toyqa"
    assert (REPO / "src" / "rankmix" / "tasks" / "toyqa").exists() is False


TABLE_YAML = """id: toy
title: "toyqa: LoRA on LLaMA-2 7B"
rows:
  set: [task=toyqa, backbone=llama2_7b, method=lora]
  sweep: {method.r: [8]}
"""


@pytest.mark.slow
def test_a_newcomers_benchmark_and_its_table_rehearse_at_paper_scale_with_nothing_else_edited(tmp_path):
    """In a copy of the checkout: the folder, its task yaml and a table yaml added, nothing else; ``make rehearse``
    of that table runs its row at ``scale=paper`` on the LLaMA-2 7B stand-in with data its ``write`` made."""
    copy = tmp_path / "checkout"
    for part in ("src", "conf", "kernels"):
        shutil.copytree(REPO / part, copy / part, symlinks=True, ignore=shutil.ignore_patterns("__pycache__", "local"))
    (copy / "src" / "rankmix" / "tasks" / "toyqa").mkdir()
    (copy / "src" / "rankmix" / "tasks" / "toyqa" / "__init__.py").write_text(textwrap.dedent(BENCHMARK))
    (copy / "conf" / "task" / "toyqa.yaml").write_text(TASK_YAML)
    (copy / "conf" / "table" / "toy.yaml").write_text(TABLE_YAML)
    report = tmp_path / "rehearse.md"
    proc = subprocess.run([sys.executable, "-m", "rankmix.rehearsal", "--tables", "toy", "--out", str(report)],
                          cwd=copy, capture_output=True, text=True, timeout=900,
                          env={**os.environ, **OFFLINE_ENV, "PYTHONPATH": str(copy / "src")})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    text = report.read_text()
    assert "1/1 rows pass" in text.splitlines()[0]
    (row,) = [line for line in text.splitlines() if line.startswith("| toy | method.r=8 | toyqa | pass |")]
    assert "`{inputs} =`" in row and "| 6.76B |" in row   # its prompt, and the real 7B's projected size
