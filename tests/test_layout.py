"""The code's shape: no module reaches into another's private names."""

import ast

from conftest import REPO


def test_no_module_imports_a_private_name_of_another():
    found = []
    for path in [*(REPO / "src").rglob("*.py"), *(REPO / "kernels").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("rankmix"):
                found += [f"{path.relative_to(REPO)}: {node.module}.{a.name}" for a in node.names
                          if a.name.startswith("_") and not a.name.startswith("__")]
    assert not found, found
