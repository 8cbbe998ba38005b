"""Reading a user's record files: JSON or JSON lines, every error naming the file, the record or line, and the fix;
names read from them kept inside their folder."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

from rankmix.errors import DataError


def inside(root: Path, relative: str, what: str, source: Path | str) -> Path:
    """``root / relative``, refused when a name read from a data file (a task name, an image id) leads out of
    ``root`` (``../``, an absolute path)."""
    norm = os.path.normpath(relative)
    if os.path.isabs(norm) or norm == ".." or norm.startswith(".." + os.sep):  # lexical: symlinked folders are fine
        raise DataError(f"{source}: {what} {relative!r} leads out of {root}; names in data files must stay inside it")
    return Path(root) / relative


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
