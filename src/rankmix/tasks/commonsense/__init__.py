"""Commonsense reasoning as MoSLoRA evaluates it (the LLM-Adapters protocol; MoSLoRA §4.1, Tab. 1/3/4, Fig. 4):
train on commonsense_170k, test on 8 sets, accuracy per set and the average (``rankmix.data.commonsense``).

Files (``PATHS``), as the README tells users to download them:

- ``train_file``: LLM-Adapters' ``ft-training_set/commonsense_170k.json`` (or its hub id ``zwhe99/commonsense_170k``),
  of which ``n_validation`` records are split off with ``seed`` as ``finetune.py`` does
  (``train_test_split(test_size=n_validation, shuffle=True, seed=42)``);
- ``test_dir``: LLM-Adapters' ``dataset/`` folder, ``<set>/test.json`` for each of ``datasets``.

The made-up copy (``write``) holds the sets of ``made_up`` (the same 8 sets, record format and instruction
templates over a small world) in that layout: ``TRAIN_RECORDS`` per set interleaved in the training file and
``TEST_RECORDS`` per set in each test file.

The prediction is the text after the first ``### Response:`` of the decoded prompt and generation (``prediction``,
LLM-Adapters' evaluator), not the generated tokens alone.
"""

from __future__ import annotations

import json
from pathlib import Path

from rankmix.data import commonsense
from rankmix.data.commonsense import prediction
from rankmix.data.commonsense import score_commonsense as score
from rankmix.errors import DataError
from rankmix.tasks.commonsense.made_up import DATASETS, generate_commonsense_like

__all__ = ["PATHS", "prediction", "read", "score", "write"]

PATHS = {"train_file": commonsense.TRAIN_WHERE,
         "test_dir": "a folder holding LLM-Adapters' dataset/<name>/test.json for the 8 test sets"}
TRAIN_RECORDS, TEST_RECORDS = 256, 25


def read(source: dict) -> dict[str, list[dict]]:
    """commonsense_170k less ``n_validation`` held-out records, those records, and the test sets of ``datasets``."""
    import datasets

    train = [commonsense.to_instruction(r, commonsense.TRAIN_TASK)
             for r in commonsense.load_train(source["train_file"])]
    n_val = int(source.get("n_validation") or 0)
    if n_val and len(train) <= n_val:
        raise DataError(f"{source['train_file']}: {len(train)} training records; {n_val} are held out for validation "
                        "(task.datamodule.source.n_validation), so it needs more")
    validation: list[dict] = []
    if n_val:
        parts = datasets.Dataset.from_list(train).train_test_split(test_size=n_val, shuffle=True, seed=source["seed"])
        train, validation = list(parts["train"]), list(parts["test"])
    test = [commonsense.to_instruction(r, name) for name in source.get("datasets") or commonsense.DATASETS
            for r in commonsense.load_test(source["test_dir"], name)]
    return {"train": train, "validation": validation, "test": test}


def write(root: Path, seed: int) -> dict[str, str]:
    """``LLM-Adapters/ft-training_set/commonsense_170k.json`` and ``LLM-Adapters/dataset/<set>/test.json`` under
    ``root``."""
    base = Path(root).resolve() / "LLM-Adapters"
    train_file, test_dir = base / "ft-training_set" / "commonsense_170k.json", base / "dataset"
    train_file.parent.mkdir(parents=True, exist_ok=True)
    train_file.write_text(json.dumps([rec for _, rec in generate_commonsense_like(list(DATASETS), TRAIN_RECORDS, seed)],
                                     indent=4))
    tests: dict[str, list[dict]] = {name: [] for name in DATASETS}
    for name, rec in generate_commonsense_like(list(DATASETS), TEST_RECORDS, seed + 7919):
        tests[name].append(rec)
    for name, recs in tests.items():
        (test_dir / name).mkdir(parents=True, exist_ok=True)
        (test_dir / name / "test.json").write_text(json.dumps(recs, indent=4))
    return {"train_file": str(train_file), "test_dir": str(test_dir)}
