"""Reading and writing JSON-lines record files, with errors that name the file, line and fix."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from rankmix.errors import DataError


def write_jsonl_atomic(path: Path, records: Iterable[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            for r in records:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
