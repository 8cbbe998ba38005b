"""SMoRA Tab. 2's training mixture: SMoRA's mixed files or one loader per public source in its record format."""

import json

import pytest

from rankmix.data import multidomain
from rankmix.errors import ConfigError, DataError


def _write(path, records, lines=False):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records) if lines else json.dumps(records))
    return str(path)


def test_each_source_format_becomes_the_llama_factory_user_turn(tmp_path):
    sources = {
        "dolly": {"domain": "general", "format": "dolly", "train_file": _write(tmp_path / "dolly.jsonl", [
            {"instruction": "Summarise.", "context": "A long text.", "response": "Short.", "category": "summarization"},
            {"instruction": "Name a colour.", "context": "", "response": "Blue.", "category": "open_qa"}], lines=True)},
        "gsm8k": {"domain": "math", "format": "gsm8k", "train_file": _write(tmp_path / "gsm8k.jsonl", [
            {"question": "Ann has 2 pens and buys 3. How many?", "answer": "2 + 3 = <<2+3=5>>5\n#### 5"}], lines=True)},
        "medical": {"domain": "medical", "format": "alpaca", "train_file": _write(tmp_path / "med.json", [
            {"instruction": "What helps a cold?", "input": "Patient: sneezing.", "output": "Rest."}])},
        "code": {"domain": "code", "format": "prompt_completion", "train_file": _write(tmp_path / "code.json", [
            {"prompt": "Write add(a, b).", "completion": "def add(a, b):\n    return a + b"}])},
    }
    records = multidomain.mixture({"sources": sources})
    by_domain = {r["task"]: r for r in records}
    assert [r["task"] for r in records] == ["code", "general", "general", "math", "medical"]  # name order
    assert by_domain["medical"]["inputs"] == "What helps a cold?\nPatient: sneezing."
    assert records[1]["inputs"] == "Summarise.\nA long text." and records[2]["inputs"] == "Name a colour."
    assert by_domain["math"]["targets"].endswith("#### 5")
    assert by_domain["code"]["targets"] == "def add(a, b):\n    return a + b"


def test_mixed_files_and_held_out_share(tmp_path):
    for domain in ("general", "law"):
        _write(tmp_path / domain / "train.json",
               [{"instruction": f"{domain} {i}", "input": "", "output": str(i)} for i in range(50)])
    source = {"mixed_dir": str(tmp_path), "domains": ["general", "law"], "val_size": 0.1, "seed": 42}
    splits = multidomain.splits(source)
    assert len(splits["validation"]) == 10 and len(splits["train"]) == 90
    assert splits["test"] == splits["validation"]
    assert {r["inputs"] for r in splits["train"]}.isdisjoint({r["inputs"] for r in splits["validation"]})
    assert multidomain.splits(source) == splits  # the same draw for the same seed


def test_bad_mixtures_name_the_file_record_and_fix(tmp_path):
    with pytest.raises(ConfigError, match="Google Drive"):
        multidomain.mixture({"domains": ["law"]})
    with pytest.raises(DataError, match=r"law/train.json: not found"):
        multidomain.mixture({"mixed_dir": str(tmp_path), "domains": ["law"]})
    bad = _write(tmp_path / "dolly.jsonl", [{"instruction": "x", "context": "", "response": "y"},
                                            {"instruction": "x", "context": ""}], lines=True)
    with pytest.raises(DataError, match=r"dolly.jsonl: record 2 lacks field 'response'"):
        multidomain.mixture({"sources": {"dolly": {"domain": "general", "format": "dolly", "train_file": bad}}})
    with pytest.raises(ConfigError, match="sources.dolly.format"):
        multidomain.mixture({"sources": {"dolly": {"domain": "general", "format": "sharegpt", "train_file": bad}}})
    with pytest.raises(ConfigError, match="sources.dolly.domain"):
        multidomain.mixture({"sources": {"dolly": {"format": "dolly", "train_file": bad}}})


def test_two_local_copies_of_the_same_name_are_each_read_as_they_are(tmp_path):
    """datasets 5 caches a README-configured folder under its name and patterns: without a cache of its own, the
    second ``train`` folder would be served the first one's rows."""
    import datasets

    from rankmix.data.hub_files import write_hub_parquet, write_hub_readme
    from rankmix.data.multidomain import read_source

    features = datasets.Features({"question": datasets.Value("string"), "answer": datasets.Value("string")})
    for copy, n in (("one", 2), ("two", 3)):
        root = tmp_path / copy / "gsm8k"
        write_hub_parquet(root / "main" / "train-00000-of-00001.parquet",
                          [{"question": f"{copy} {i}", "answer": "#### 1"} for i in range(n)], features)
        write_hub_readme(root / "README.md", {"main": {"train": "main/train-*"}}, "test copy")
    assert [r["question"] for r in read_source(str(tmp_path / "one" / "gsm8k"), "main")] == ["one 0", "one 1"]
    assert [r["question"] for r in read_source(str(tmp_path / "two" / "gsm8k"), "main")] == ["two 0", "two 1", "two 2"]
