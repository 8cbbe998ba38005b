"""Atomic writes: a file appears whole or not at all (a temporary file in the same folder, renamed over the
target), with the umask's mode; what a killed writer left is found by ``stale_temporaries``. ``atomic_folder``: the
same for a folder written once. ``one_writer``: a
cache that several runs side by side may fill (a folder of generated data, a features file) is filled by one of
them while the others wait."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def stale_temporaries(path: Path) -> list[Path]:
    """The temporary files ``atomic_open`` left beside ``path`` when a writer was killed."""
    return sorted(Path(path).parent.glob(f".{Path(path).name}.*.tmp"))


@contextmanager
def atomic_open(path: Path, binary: bool = False) -> Iterator:
    """A text file (``binary``: a bytes file, e.g. for ``torch.save``) that appears at ``path`` only once fully
    written (temporary file + ``os.replace``), with the mode a plain ``open`` gives (0666 less the umask)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.chmod(tmp, 0o666 & ~_umask())
    try:
        with (os.fdopen(fd, "wb") if binary else os.fdopen(fd, "w", encoding="utf-8")) as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def atomic_folder(path: Path) -> Iterator[Path]:
    """A folder that appears at ``path`` only once fully written, with the umask's mode: yields a temporary sibling
    of this writer's own to write into (``stale_temporaries`` finds one a killed writer left), then renames it to
    ``path``. Where another process renamed its copy there first (writers side by side of the
    same deterministic content), this one is dropped; a failed write leaves nothing behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    own = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))   # unique across hosts too
    os.chmod(own, 0o777 & ~_umask())   # mkdtemp's 0700 would stay on the renamed folder
    try:
        yield own
        try:
            own.rename(path)
        except OSError:
            if not path.is_dir():   # not another process that wrote it first
                raise
    finally:
        shutil.rmtree(own, ignore_errors=True)


def write_jsonl_atomic(path: Path, records: Iterable[dict]) -> None:
    with atomic_open(path) as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


@contextmanager
def one_writer(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``<path>.lock`` (blocking): runs side by side that fill the same cache at ``path``
    do so one after the other, and each then finds what the first wrote. Not re-entrant: a process that holds the
    lock of ``path`` must not ask for it again (``flock`` would wait on itself); nested caches use their own paths."""
    import fcntl

    lock = Path(f"{path}.lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
