"""Reading and writing record files (errors name the file, line and fix), and atomic writes for every file."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from rankmix.errors import DataError


@contextmanager
def atomic_open(path: Path) -> Iterator:
    """A text file that appears at ``path`` only once fully written (temporary file + ``os.replace``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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


def check_jsonl(path: Path, required: tuple[str, ...]) -> int:
    """Validate that every line of ``path`` is a JSON object with the ``required`` string fields.

    Returns the number of records. Raises ``DataError`` naming the first bad line.
    """
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    n = 0
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: not valid JSON ({e.msg}); each line must be one JSON object") from None
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
