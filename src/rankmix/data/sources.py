"""Where an instruction data module's splits come from, when no ``data_dir`` is given: ``source.kind``.

- ``symbolic``: the generated symbol tasks of ``rankmix.data.synthetic`` (the default run).
- ``flan_like``: the generated FLAN-like suite of ``rankmix.data.flan_like`` (tiny scale of the FLAN tables).
- ``flan``: SMoRA's FLAN-v2 subset from files (``rankmix.data.flan``): the test file the user gives (task names
  without the ``_10templates`` suffix, whichever copy it is), and ``n_train`` + ``n_validation`` records per test
  task sampled from a ``Muennighoff/flan`` training folder.
- ``commonsense_like``: the generated commonsense-style suite of ``rankmix.data.commonsense_like`` (tiny
  scale of the MoSLoRA tables), in the LLM-Adapters record format.
- ``commonsense``: MoSLoRA's commonsense data from files (``rankmix.data.commonsense``): commonsense_170k
  (a file or hub id), ``n_validation`` records split off it as LLM-Adapters does, and the 8 test sets.
- ``multidomain``: SMoRA Tab. 2's training mixture (``rankmix.data.multidomain``), ``val_size`` held out.
- ``<name>`` of a benchmark folder, ``rankmix/tasks/<name>/``: its reader, on its files or on its made-up copy.

``train_fraction`` (default 1) keeps that fraction of the training split, drawn with ``seed``; smaller
fractions are subsets of larger ones (MoSLoRA Fig. 4).
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path

from rankmix.data import commonsense, flan, multidomain
from rankmix.data.commonsense_like import generate_commonsense_like
from rankmix.data.flan_like import generate_flan_like
from rankmix.data.synthetic import generate_records
from rankmix.errors import ConfigError, DataError

KINDS = ("symbolic", "flan_like", "flan", "commonsense_like", "commonsense", "multidomain")


def build_splits(source: Mapping, cache_dir: Path | None = None) -> dict[str, list[dict]]:
    """``{"train": [...], "validation": [...], "test": [...]}`` records for ``source``; a benchmark folder's made-up
    data (``rankmix.tasks``) is written under ``cache_dir``."""
    splits = _splits(source, cache_dir)
    fraction = float(source.get("train_fraction", 1.0))
    if not 0.0 < fraction <= 1.0:
        raise ConfigError("task.datamodule.source.train_fraction", fraction, "must be in (0, 1]")
    if fraction < 1.0:
        order = list(range(len(splits["train"])))
        random.Random(source.get("seed", 0)).shuffle(order)
        keep = sorted(order[: max(1, round(fraction * len(order)))])
        splits["train"] = [splits["train"][i] for i in keep]
    return splits


def _splits(source: Mapping, cache_dir: Path | None) -> dict[str, list[dict]]:
    from rankmix import tasks

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
                raise ConfigError(f"task.datamodule.source.{key}", source.get(key), f"is required for the FLAN files; {flan.WHERE_TO_GET}"
                                  if key == "test_file" else "a folder with Muennighoff/flan's train/*_train.jsonl")
        test = [{**r, "task": flan.base_task(r["task"])} for r in flan.load_test(source["test_file"])]
        tasks = sorted({r["task"] for r in test})
        n_val = int(source.get("n_validation") or 0)
        pool = flan.sample_train(source["train_dir"], tasks, int(source["n_train"]) + n_val, source["seed"])
        meta = {r["task"]: (r["domain"], r["metric"]) for r in test}
        seen: dict[str, int] = defaultdict(int)
        splits: dict[str, list[dict]] = {"train": [], "validation": [], "test": test}
        for r in pool:
            domain, metric = meta[r["task"]]
            seen[r["task"]] += 1
            splits["validation" if seen[r["task"]] <= n_val else "train"].append({**r, "domain": domain, "metric": metric})
        return splits
    if kind == "commonsense_like":
        return {split: [commonsense.to_instruction(rec, name)
                        for name, rec in generate_commonsense_like(source["datasets"], n, source["seed"] + 7919 * i)]
                for i, (split, n) in enumerate(sizes.items())}
    if kind == "commonsense":
        return _commonsense_files(source)
    if kind == "multidomain":
        return multidomain.splits(source)
    if kind in tasks.names():
        return tasks.splits(kind, dict(source), cache_dir or Path(".cache"))
    raise ConfigError("task.datamodule.source.kind", kind,
                      f"must be one of {', '.join(KINDS)} or a benchmark folder ({', '.join(tasks.names()) or 'none'})")


def _commonsense_files(source: Mapping) -> dict[str, list[dict]]:
    import datasets

    for key, why in (("train_file", commonsense.TRAIN_WHERE),
                     ("test_dir", "a folder holding LLM-Adapters' dataset/<name>/test.json for the 8 test sets")):
        if not source.get(key):
            raise ConfigError(f"task.datamodule.source.{key}", source.get(key), f"is required; {why}")
    train = [commonsense.to_instruction(r, commonsense.TRAIN_TASK) for r in commonsense.load_train(source["train_file"])]
    n_val = int(source.get("n_validation") or 0)
    if n_val and len(train) <= n_val:
        raise DataError(f"{source['train_file']}: {len(train)} training records; {n_val} are held out for validation "
                        "(task.datamodule.source.n_validation), so it needs more")
    validation: list[dict] = []
    if n_val:  # finetune.py: train_test_split(test_size=val_set_size, shuffle=True, seed=42)
        parts = datasets.Dataset.from_list(train).train_test_split(test_size=n_val, shuffle=True, seed=source["seed"])
        train, validation = list(parts["train"]), list(parts["test"])
    test = [commonsense.to_instruction(r, name) for name in source.get("datasets") or commonsense.DATASETS
            for r in commonsense.load_test(source["test_dir"], name)]
    return {"train": train, "validation": validation, "test": test}
