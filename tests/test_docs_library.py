"""docs/library.md runs as written: its ```python blocks, in order, in one namespace."""

from __future__ import annotations

import re

from conftest import REPO

DOC = REPO / "docs" / "library.md"


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def test_the_library_walkthrough_runs_as_written(capsys):
    blocks = python_blocks(DOC.read_text())
    assert len(blocks) >= 6, "docs/library.md lost its examples"
    namespace: dict = {"__name__": "library_md"}
    for i, block in enumerate(blocks, 1):
        exec(compile(block, f"{DOC}:block{i}", "exec"), namespace)   # an assert in the page that fails fails here
    assert "smora: wrapped 4 layers" in capsys.readouterr().out
    assert namespace["losses"][-1] < namespace["losses"][0]
