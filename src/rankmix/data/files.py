"""Reading and writing record files (errors name the file, line and fix), and atomic writes for every file."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from rankmix.errors import DataError


def inside(root: Path, relative: str, what: str, source: Path | str) -> Path:
    """``root / relative``, refused when a name read from a data file (a task name, an image id) leads out of
    ``root`` (``../``, an absolute path)."""
    norm = os.path.normpath(relative)
    if os.path.isabs(norm) or norm == ".." or norm.startswith(".." + os.sep):  # lexical: symlinked folders are fine
        raise DataError(f"{source}: {what} {relative!r} leads out of {root}; names in data files must stay inside it")
    return Path(root) / relative


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def stale_temporaries(path: Path) -> list[Path]:
    """The temporary files ``atomic_open`` left beside ``path`` when a writer was killed."""
    return sorted(Path(path).parent.glob(f".{Path(path).name}.*.tmp"))


@contextmanager
def atomic_open(path: Path) -> Iterator:
    """A text file that appears at ``path`` only once fully written (temporary file + ``os.replace``), with the
    mode a plain ``open`` gives (0666 less the umask)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.chmod(tmp, 0o666 & ~_umask())
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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


def write_jsonl_atomic(path: Path, records: Iterable[dict]) -> None:
    with atomic_open(path) as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def read_records(path: Path) -> list[dict]:
    """A JSON array or JSON-lines file of objects; errors name the file and the record or line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: not valid JSON at line {e.lineno} ({e.msg})") from None
    out = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
    return out


def check_fields(source, records: list, fields: tuple[str, ...], what: str) -> list[dict]:
    """Records read from a user's file (or hub dataset) ``source``: at least one, each an object whose ``fields``
    are strings; the first bad one is named by its number in the file."""
    if not records:
        raise DataError(f"{source}: no records; {what} need {', '.join(fields)}")
    for i, rec in enumerate(records, 1):
        if not isinstance(rec, dict):
            raise DataError(f"{source}: record {i} is a {type(rec).__name__}, not an object with {', '.join(fields)}")
        for key in fields:
            if key not in rec:
                raise DataError(f"{source}: record {i} lacks field {key!r}; {what} need {', '.join(fields)}")
            if not isinstance(rec[key], str):
                raise DataError(f"{source}: record {i}: field {key!r} must be a string, got "
                                f"{type(rec[key]).__name__} ({rec[key]!r})")
    return records


def jsonl_lines(path: Path) -> Iterator[tuple[int, object]]:
    """``(line number, parsed value)`` of each non-blank line of a JSON-lines file (``.gz`` read compressed); a line
    that is not JSON raises ``DataError`` naming the file and line."""
    import gzip

    opener = gzip.open if Path(path).name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: not valid JSON ({e.msg}); each line must be one JSON object") from None


def check_jsonl(path: Path, required: tuple[str, ...]) -> int:
    """Validate that every line of ``path`` is a JSON object with the ``required`` string fields.

    Returns the number of records. Raises ``DataError`` naming the first bad line.
    """
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    n = 0
    for lineno, rec in jsonl_lines(path):
        if not isinstance(rec, dict):
            raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(rec).__name__}")
        for key in required:
            if key not in rec:
                raise DataError(f"{path}:{lineno}: missing field {key!r}; records need {', '.join(required)}")
            if not isinstance(rec[key], str):
                raise DataError(f"{path}:{lineno}: field {key!r} must be a string, got {type(rec[key]).__name__}")
        n += 1
    if n == 0:
        raise DataError(f"{path}: no records")
    return n


def write_hub_parquet(path: Path, rows: list[dict], features) -> None:
    """``rows`` as a hub parquet file: the arrow table of a ``datasets.Dataset``, its features in the metadata."""
    import datasets
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(datasets.Dataset.from_list(rows, features=features).data.table, path)


def write_hub_readme(path: Path, configs: dict[str, dict[str, str]], note: str) -> None:
    """A hub dataset README whose YAML ``configs`` map each config's splits to file globs
    (``{config: {split: "data/test-*"}}``): what ``datasets.load_dataset(folder, config)`` reads."""
    lines = ["---", "configs:"]
    for name, splits in configs.items():
        lines += [f"- config_name: {name}", "  data_files:"]
        lines += [f"  - split: {split}\n    path: \"{glob}\"" for split, glob in splits.items()]
    with atomic_open(path) as f:
        f.write("\n".join([*lines, "---", "", note, ""]))


def local_dataset_kwargs(path: Path | str) -> dict:
    """``load_dataset`` keywords for a local folder in a hub dataset's layout (nothing for a hub id): a cache of its
    own, named by the folder's absolute path. The shared cache keys a folder with README ``configs`` by its name and
    file patterns alone (datasets 5), so two copies named ``mmlu`` with different contents would both get the first
    one read."""
    import datasets

    from rankmix.config import digest

    if not Path(path).is_dir():
        return {}
    where = str(Path(path).resolve())
    return {"cache_dir": str(Path(datasets.config.HF_DATASETS_CACHE) / "rankmix-local" / digest(where, 16))}



def record_data_fingerprint(cfg) -> None:
    """``cfg.data_fingerprint``: the contents of the data files the task reads (``fingerprint`` of ``data_paths``),
    so an edited file makes the run's config hash, and so its result, out of date. Generated data: no key."""
    from omegaconf import OmegaConf, open_dict

    found = fingerprint(data_paths(OmegaConf.to_container(cfg.task.datamodule, resolve=True)))
    if found is not None:
        with open_dict(cfg):
            cfg.data_fingerprint = found
