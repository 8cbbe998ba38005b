"""What a run's data is: the local files and folders its data module's config names (``data_paths``: the built-in
data keys and those each benchmark folder declares), and a short hash of what they hold (``fingerprint``), recorded
in the run's config so an edited file makes its result out of date. ``code_fingerprint``: what generated data in the
cache is keyed by beside its settings, the code that wrote it, so an edited generator writes it again."""

from __future__ import annotations

import functools
from collections.abc import Iterable
from pathlib import Path

DATA_KEYS = ("data_dir", "images_dir", "test_file", "train_dir", "train_file", "test_dir", "mixed_dir",
             "instance_dir")  # instance_dir: the DreamBooth subject's photos
HASHED_BYTES = 64 << 20  # files up to this size are keyed by their contents, larger ones by size and mtime
HASHED_TOTAL = 1 << 30   # at most this much is read per fingerprint (an image folder is keyed by sizes and mtimes)


def data_paths(node) -> list[Path]:
    """The local files and folders a data module's config names (``data_dir``, ``test_file``, ``features.*``, ...;
    hub ids and nulls left out), in a fixed order."""
    from rankmix.tasks import declared_keys

    found, keys = [], set(DATA_KEYS) | declared_keys()   # the benchmark folders declare theirs

    def walk(n, under_features=False):
        if isinstance(n, dict):
            for k in sorted(n):
                v = n[k]
                if isinstance(v, (dict, list)):
                    walk(v, under_features or k == "features")
                elif isinstance(v, str) and (k in keys or under_features) and Path(v).exists():
                    found.append(Path(v))
        elif isinstance(n, list):
            for v in n:
                walk(v, under_features)

    walk(node)
    return found


def fingerprint(paths: Iterable[Path]) -> str | None:
    """A short hash of what ``paths`` hold: every file (folders walked) by its path and size and its contents'
    SHA-256, or, past ``HASHED_BYTES`` per file or ``HASHED_TOTAL`` in all, its mtime; None for no paths. An
    edited data file changes it; a copied or touched one whose contents are hashed does not."""
    import hashlib

    h, any_path, budget = hashlib.sha256(), False, HASHED_TOTAL
    for root in paths:
        any_path = True
        files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
        for p in files:
            st = p.stat()
            h.update(f"{p}\0{st.st_size}\0".encode())
            if st.st_size <= min(HASHED_BYTES, budget):
                budget -= st.st_size
                with open(p, "rb") as f:
                    for block in iter(lambda: f.read(1 << 20), b""):
                        h.update(block)
            else:
                h.update(f"mtime {st.st_mtime_ns}\0".encode())
    return h.hexdigest()[:16] if any_path else None


def record_data_fingerprint(cfg) -> None:
    """``cfg.data_fingerprint``: the contents of the data files the task reads (``fingerprint`` of ``data_paths``),
    so an edited file makes the run's config hash, and so its result, out of date. Generated data: no key."""
    from omegaconf import OmegaConf, open_dict

    found = fingerprint(data_paths(OmegaConf.to_container(cfg.task.datamodule, resolve=True)))
    if found is not None:
        with open_dict(cfg):
            cfg.data_fingerprint = found


@functools.cache
def code_fingerprint(*modules: str) -> str:
    """A short hash of the named modules' source files, read once per process (a key that stays the same while the
    run goes on, also if the code is edited meanwhile). Data a run generates into the cache (the shapes sets, their
    CLIP features, warm-started weights, ...) is keyed by it beside its settings: a run after an edit of the code that
    wrote it writes it again, rather than reading what the older code wrote."""
    import hashlib
    import importlib.util

    sha = hashlib.sha256()
    for m in modules:
        sha.update(m.encode() + b"\0" + Path(importlib.util.find_spec(m).origin).read_bytes() + b"\0")
    return sha.hexdigest()[:10]
