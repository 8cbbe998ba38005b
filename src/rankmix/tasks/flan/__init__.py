"""SMoRA's FLAN-v2 subset (SMoRA §3, Tab. 1/5/6): 48 tasks in 10 clusters, scored per task, per cluster and on
average (``rankmix.metrics.flan``).

Files (``PATHS``), as the README tells users to download them:

- ``test_file``: SMoRA's ``datasets/combined_test.json`` (records ``{inputs, targets, task, domain, metric}``; task
  names with or without the ``_10templates`` suffix, whichever copy it is);
- ``train_dir``: ``Muennighoff/flan``'s ``train/{task}_10templates_train.jsonl`` (``inputs, targets, task``), from
  which ``n_train`` + ``n_validation`` records of each test task are drawn with ``seed``; the first
  ``n_validation`` of each task drawn are the validation split.

The made-up copy (``write``) holds the symbol tasks of ``made_up`` (SMoRA's 10 clusters and three metric kinds,
learnable by a tiny LM) in that layout: ``TRAIN_RECORDS`` per task in the training folder, ``TEST_RECORDS`` per task
in the test file.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from rankmix.data import flan
from rankmix.metrics.flan import score_flan as score
from rankmix.tasks.flan.made_up import TASKS, generate_flan_like

__all__ = ["PATHS", "read", "score", "write"]

PATHS = {"test_file": flan.WHERE_TO_GET,
         "train_dir": "a folder with Muennighoff/flan's train/{task}_10templates_train.jsonl"}
TRAIN_RECORDS, TEST_RECORDS = 150, 20


def read(source: dict) -> dict[str, list[dict]]:
    """The splits: the test file as it is, and ``n_train`` + ``n_validation`` training records of each of its tasks."""
    test = [{**r, "task": flan.base_task(r["task"])} for r in flan.load_test(source["test_file"])]
    n_val = int(source.get("n_validation") or 0)
    pool = flan.sample_train(source["train_dir"], sorted({r["task"] for r in test}), int(source["n_train"]) + n_val,
                             source["seed"])
    meta = {r["task"]: (r["domain"], r["metric"]) for r in test}
    seen: dict[str, int] = defaultdict(int)
    splits: dict[str, list[dict]] = {"train": [], "validation": [], "test": test}
    for r in pool:
        domain, metric = meta[r["task"]]
        seen[r["task"]] += 1
        splits["validation" if seen[r["task"]] <= n_val else "train"].append({**r, "domain": domain, "metric": metric})
    return splits


def write(root: Path, seed: int) -> dict[str, str]:
    """``smora/datasets/combined_test.json`` and ``flan/train/{task}_10templates_train.jsonl`` under ``root``."""
    root = Path(root).resolve()
    test_file, train_dir = root / "smora" / "datasets" / "combined_test.json", root / "flan" / "train"
    named = lambda r: {**r, "task": r["task"] + flan.SUFFIX}  # noqa: E731 -- the files' task names carry the suffix
    test_file.parent.mkdir(parents=True, exist_ok=True)
    test_file.write_text(json.dumps([named(r) for r in generate_flan_like(list(TASKS), TEST_RECORDS, seed + 7919)],
                                    indent=4))
    by_task: dict[str, list[dict]] = defaultdict(list)
    for r in generate_flan_like(list(TASKS), TRAIN_RECORDS, seed):
        by_task[r["task"]].append({"inputs": r["inputs"], "targets": r["targets"], "task": r["task"] + flan.SUFFIX})
    train_dir.mkdir(parents=True, exist_ok=True)
    for task, rows in by_task.items():
        (train_dir / f"{task}{flan.SUFFIX}_train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {"test_file": str(test_file), "train_dir": str(train_dir)}
