"""Where an instruction data module's splits come from, when no ``data_dir`` is given: ``source.kind``.

- ``symbolic``: the generated symbol tasks of ``rankmix.data.synthetic`` (the default run).
- ``multidomain``: SMoRA Tab. 2's training mixture (``rankmix.data.multidomain``), ``val_size`` held out.
- ``<name>`` of a benchmark folder, ``rankmix/tasks/<name>/`` (``flan``, ``commonsense``, ...): its reader, on its
  files or, where they are unset below ``scale=paper``, on its made-up copy.

``train_fraction`` (default 1) keeps that fraction of the training split, drawn with ``seed``; smaller
fractions are subsets of larger ones (MoSLoRA Fig. 4).
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from pathlib import Path

from rankmix.data import multidomain
from rankmix.data.synthetic import generate_records
from rankmix.errors import ConfigError

KINDS = ("symbolic", "multidomain")
MOVED = {"flan_like": "flan", "commonsense_like": "commonsense"}   # former kinds -> the benchmark folder now read


def build_splits(source: Mapping, cache_dir: Path | None = None, made_up: bool = True) -> dict[str, list[dict]]:
    """``{"train": [...], "validation": [...], "test": [...]}`` records for ``source``; a benchmark folder's made-up
    data (``rankmix.tasks``) is written under ``cache_dir`` where ``made_up`` (below ``scale=paper``)."""
    splits = _splits(source, cache_dir, made_up)
    fraction = float(source.get("train_fraction", 1.0))
    if not 0.0 < fraction <= 1.0:
        raise ConfigError("task.datamodule.source.train_fraction", fraction, "must be in (0, 1]")
    if fraction < 1.0:
        order = list(range(len(splits["train"])))
        random.Random(source.get("seed", 0)).shuffle(order)
        keep = sorted(order[: max(1, round(fraction * len(order)))])
        splits["train"] = [splits["train"][i] for i in keep]
    return splits


def _splits(source: Mapping, cache_dir: Path | None, made_up: bool) -> dict[str, list[dict]]:
    from rankmix import tasks

    kind = source.get("kind", "symbolic")
    sizes = {"train": source.get("n_train"), "validation": source.get("n_validation"), "test": source.get("n_test")}
    if kind == "symbolic":
        return {split: list(generate_records(source["tasks"], n, source["min_len"], source["max_len"],
                                             source["seed"] + 7919 * i))
                for i, (split, n) in enumerate(sizes.items())}
    if kind == "multidomain":
        return multidomain.splits(source)
    if kind in tasks.names():
        return tasks.splits(kind, dict(source), cache_dir or Path(".cache"), made_up)
    if kind in MOVED:
        raise ConfigError("task.datamodule.source.kind", kind, f"no longer a kind: write kind: {MOVED[kind]} with its "
                          f"paths null, and the benchmark folder rankmix/tasks/{MOVED[kind]}/ writes its made-up files")
    raise ConfigError("task.datamodule.source.kind", kind,
                      f"must be one of {', '.join(KINDS)} or a benchmark folder ({', '.join(tasks.names()) or 'none'})")
