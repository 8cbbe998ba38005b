"""Where an instruction data module's splits come from, when no ``data_dir`` is given: ``source.kind``.

- ``symbolic``: the generated symbol tasks of ``rankmix.data.synthetic`` (the default run).
- ``flan_like``: the generated FLAN-like suite of ``rankmix.data.flan_like`` (tiny scale of the FLAN tables).
- ``flan``: SMoRA's FLAN-v2 subset from files (``rankmix.data.flan``): the test file the user gives, and
  ``n_train`` + ``n_validation`` records per test task sampled from a ``Muennighoff/flan`` training folder.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping

from rankmix.data import flan
from rankmix.data.flan_like import generate_flan_like
from rankmix.data.synthetic import generate_records
from rankmix.errors import ConfigError

KINDS = ("symbolic", "flan_like", "flan")


def build_splits(source: Mapping) -> dict[str, list[dict]]:
    """``{"train": [...], "validation": [...], "test": [...]}`` records for ``source``."""
    kind = source.get("kind", "symbolic")
    sizes = {"train": source.get("n_train"), "validation": source.get("n_validation"), "test": source.get("n_test")}
    if kind == "symbolic":
        return {split: list(generate_records(source["tasks"], n, source["min_len"], source["max_len"],
                                             source["seed"] + 7919 * i))
                for i, (split, n) in enumerate(sizes.items())}
    if kind == "flan_like":
        return {split: list(generate_flan_like(source["tasks"], n, source["seed"] + 7919 * i))
                for i, (split, n) in enumerate(sizes.items())}
    if kind == "flan":
        for key in ("test_file", "train_dir"):
            if not source.get(key):
                raise ConfigError(f"task.paper.datamodule.source.{key}", source.get(key), f"is required for the FLAN files; {flan.WHERE_TO_GET}"
                                  if key == "test_file" else "a folder with Muennighoff/flan's train/*_train.jsonl")
        test = flan.load_test(source["test_file"])
        tasks = sorted({flan.base_task(r["task"]) for r in test})
        n_val = int(source.get("n_validation") or 0)
        pool = flan.sample_train(source["train_dir"], tasks, int(source["n_train"]) + n_val, source["seed"])
        meta = {flan.base_task(r["task"]): (r["domain"], r["metric"]) for r in test}
        seen: dict[str, int] = defaultdict(int)
        splits: dict[str, list[dict]] = {"train": [], "validation": [], "test": test}
        for r in pool:
            domain, metric = meta[r["task"]]
            seen[r["task"]] += 1
            splits["validation" if seen[r["task"]] <= n_val else "train"].append({**r, "domain": domain, "metric": metric})
        return splits
    raise ConfigError("task.source.kind", kind, f"must be one of {', '.join(KINDS)}")
