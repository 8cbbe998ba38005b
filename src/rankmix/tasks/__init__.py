"""Benchmarks, one folder each: ``rankmix/tasks/<name>/``, found by name (as lm-evaluation-harness's ``tasks/``).

A benchmark folder is a Python package whose ``__init__.py`` defines:

- ``PATHS``: ``{key: what it holds}``, the keys under ``task.datamodule.source`` that name its files. They are the
  only paths it reads, and the run's data fingerprint covers them, so an edited file makes the run out of date.
- ``read(source) -> {"train": [...], "validation": [...], "test": [...]}``: instruction records (``inputs``,
  ``targets``, ``task``) from the files those keys name, in the benchmark's real layout.
- ``write(root, seed) -> {key: path}``: a made-up copy of that layout under ``root``. At ``scale=tiny`` (the keys
  left null; at ``scale=paper`` they are required) the data module writes it under the cache and reads it with
  ``read``, so the tiny run goes through the paper-scale reader; ``make rehearse`` writes it to rehearse the
  paper-scale rows.
- ``score(records) -> {metric: value}`` (optional): the test scorer, given each record with its ``prediction``;
  without one the task uses the ``generic`` scorer (exact match and ROUGE per task, ``rankmix.metrics.text``).
- ``prediction(decoded) -> str`` (optional): the prediction read from the decoded prompt and generation together,
  for a protocol that reads it there; without one it is the generated text alone.

A task yaml selects it with ``task.datamodule.source.kind: <name>`` and ``task.scorer: <name>`` (a causal LM task:
``builder: {_target_: rankmix.modules.causal_lm.build_causal_lm, _partial_: true}``, the data module
``rankmix.data.instruction.InstructionDataModule``). Benchmark folders of one's own kept outside this checkout are
found too: ``RANKMIX_TASKS=<dir>[:<dir>...]``, each ``<dir>`` holding ``<name>/`` folders.
"""

from __future__ import annotations

import importlib
import json
import os
import pkgutil
from pathlib import Path
from types import ModuleType

from rankmix.errors import ConfigError, RankmixError

__path__ += [d for d in os.environ.get("RANKMIX_TASKS", "").split(os.pathsep) if d]  # noqa: F821 -- one's own
REQUIRED = ("PATHS", "read", "write")
PATHS_FILE = "written.json"   # in a made-up copy: {key: path under it} as its write returned them


def names() -> list[str]:
    """The benchmark folders found, by name."""
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if m.ispkg)


def get(name: str) -> ModuleType:
    """The benchmark ``name``, checked to define what a benchmark folder must."""
    if name not in names():
        raise ConfigError("task.datamodule.source.kind", name, f"no benchmark folder rankmix/tasks/{name}/; "
                          f"found: {', '.join(names()) or 'none'}")
    module = importlib.import_module(f"{__name__}.{name}")
    missing = [n for n in REQUIRED if not hasattr(module, n)]
    if missing:
        raise RankmixError(f"{module.__file__}: a benchmark folder defines {', '.join(REQUIRED)}; this one lacks "
                           f"{', '.join(missing)} (see rankmix/tasks/__init__.py)")
    return module


def code(name: str) -> str:
    """A short hash of the benchmark folder's Python files: its made-up copy and what is read from it are cached
    under it, so an edited writer or reader is run again."""
    from rankmix.config import digest

    folder = Path(get(name).__file__).parent
    return digest({str(p.relative_to(folder)): p.read_text() for p in sorted(folder.rglob("*.py"))}, 10)


def declared_keys() -> set[str]:
    """Every benchmark's path keys (``PATHS``): what the data fingerprint reads beside the built-in data keys."""
    return {key for name in names() for key in get(name).PATHS}


def splits(name: str, source: dict, cache_dir: Path, made_up: bool = True) -> dict[str, list[dict]]:
    """The benchmark's splits: read from the files its keys name, or, where they are all unset and ``made_up`` (every
    scale but ``paper``), from a made-up copy of its layout written once under ``cache_dir`` (keyed by the benchmark,
    the seed and the benchmark folder's code)."""
    from rankmix.config import digest

    bench = get(name)
    given = {k: source.get(k) for k in bench.PATHS}
    unset = [k for k, v in given.items() if not v]
    if len(unset) == len(given) and made_up:
        seed = int(source.get("seed", 0))
        root = Path(cache_dir) / "tiny_data" / f"{name}-{digest({'name': name, 'seed': seed, 'code': code(name)}, 10)}"
        source = {**source, **_written(bench, root, seed)}
    elif unset:
        why = "with the other paths of" if len(unset) < len(given) else "at scale=paper by"
        raise ConfigError(f"task.datamodule.source.{unset[0]}", None, f"is required {why} {name}: {bench.PATHS[unset[0]]}")
    return bench.read(source)


def _written(bench: ModuleType, root: Path, seed: int) -> dict[str, str]:
    """``bench.write(root, seed)``, written once, whole or not at all (``rankmix.atomic.atomic_folder``), with the
    paths it returned (``PATHS_FILE``), so that runs side by side never read a half-written copy."""
    from rankmix.atomic import atomic_folder

    keys = root / PATHS_FILE
    if not keys.is_file():
        with atomic_folder(root) as own:
            paths = {k: str(Path(v).resolve().relative_to(own.resolve())) for k, v in bench.write(own, seed).items()}
            (own / PATHS_FILE).write_text(json.dumps(paths))
        if not keys.is_file():
            raise RankmixError(f"{root} has no {PATHS_FILE}: it was not written by this writer; delete the folder")
    return {k: str(root / v) for k, v in json.loads(keys.read_text()).items()}
