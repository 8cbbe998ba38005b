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


def _import_graph() -> dict[str, set[str]]:
    """``{module: the rankmix modules it imports}``, every import counted, those inside functions too."""
    root = REPO / "src" / "rankmix"
    mods = {}
    for path in root.rglob("*.py"):
        parts = path.relative_to(REPO / "src").with_suffix("").parts
        mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path

    def owner(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph = {m: set() for m in mods}
    for m, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("rankmix"):
                targets = [owner(f"{node.module}.{a.name}") or owner(node.module) for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [owner(a.name) for a in node.names if a.name.startswith("rankmix")]
            else:
                continue
            graph[m] |= {t for t in targets if t and t != m}
    return graph


def test_the_package_has_no_import_cycles_and_nothing_imports_the_entry():
    graph = _import_graph()
    assert "rankmix.train" in graph and not [m for m, ts in graph.items() if "rankmix.train" in ts]

    def reaches(start: str, goal: str) -> bool:
        seen, todo = set(), [start]
        while todo:
            for t in graph[todo.pop()] - seen:
                if t == goal:
                    return True
                seen.add(t)
                todo.append(t)
        return False

    # a package's own __init__ re-exporting its modules is not a cycle of the code's layers
    cycles = [(m, t) for m, ts in graph.items() for t in ts if not t.startswith(m + ".") and reaches(t, m)
              and not m.startswith(t + ".")]
    assert not cycles, cycles
