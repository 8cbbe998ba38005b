"""FLAN-v2 subset of SMoRA (48 tasks, 10 clusters): the test file, sampled training data, the prompt.

- Test: SMoRA's ``datasets/combined_test.json`` (github StyxXuan/smora; the same 2,395 records as
  LoraRetriever's ``dataset/combined_test.json``): records ``{inputs, targets, task, domain, metric}``, task
  names with or without the ``_10templates`` suffix. It is on no hub; the user gives its path.
- Train: 1,000 records per task drawn with a fixed seed from HF ``Muennighoff/flan``
  (``train/{task}_10templates_train.jsonl``, fields ``inputs, targets, task``). The authors' own training
  file (a Google-Drive tarball) is not public, so the draw cannot match theirs record for record.
- Prompt: Llama-2 chat, ``[INST] {inputs} [/INST]``; the prediction is the generated text after ``[/INST]``.
"""

from __future__ import annotations

import random
from pathlib import Path

from rankmix.data.files import check_fields, inside, read_records
from rankmix.errors import DataError

TEST_FIELDS = ("inputs", "targets", "task", "domain", "metric")
METRICS = ("em", "bleu", "rouge")
SUFFIX = "_10templates"
WHERE_TO_GET = ("download datasets/combined_test.json from github.com/StyxXuan/smora (or dataset/combined_test.json "
                "of LoraRetriever) and set task.datamodule.source.test_file to its path")


def base_task(name: str) -> str:
    """Task name without the ``_10templates`` suffix (SMoRA and LoraRetriever differ there)."""
    return name[: -len(SUFFIX)] if name.endswith(SUFFIX) else name


def load_test(path: Path) -> list[dict]:
    """The FLAN test records, checked field by field."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: FLAN test file not found; {WHERE_TO_GET}")
    records = check_fields(path, read_records(path), TEST_FIELDS, "FLAN test records")
    for i, rec in enumerate(records, 1):
        if rec["metric"] not in METRICS:
            raise DataError(f"{path}: record {i} has metric {rec['metric']!r}; expected one of {', '.join(METRICS)}")
    return records


def sample_train(train_dir: Path, tasks: list[str], n_per_task: int, seed: int) -> list[dict]:
    """``n_per_task`` records of each task from ``{train_dir}/{task}_10templates_train.jsonl`` (fixed seed)."""
    rng = random.Random(seed)
    out = []
    for task in sorted({base_task(t) for t in tasks}):
        path = inside(Path(train_dir), f"{task}{SUFFIX}_train.jsonl", "task name", "the FLAN test file")
        if not path.is_file():
            raise DataError(f"{path}: FLAN training file not found; download train/{task}{SUFFIX}_train.jsonl "
                            "of the HF dataset Muennighoff/flan into the folder task.datamodule.source.train_dir")
        rows = check_fields(path, read_records(path), ("inputs", "targets"), "FLAN training records")
        picked = rng.sample(rows, min(n_per_task, len(rows)))
        out += [{"inputs": r["inputs"], "targets": r["targets"], "task": task} for r in picked]
    rng.shuffle(out)
    return out
