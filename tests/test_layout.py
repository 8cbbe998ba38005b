"""The code's shape: no module reaches into another's private names."""

import ast

import pytest

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


@pytest.mark.slow
def test_a_runs_config_goes_down_from_the_entry_and_comes_back_at_most_twice(tmp_path):
    """Following ``cfg`` from ``train(cfg)`` through the functions that receive it, during a whole tiny run: the entry
    hands it down twice (the checks, then the run) and is not re-entered otherwise."""
    import json
    import os
    import subprocess
    import sys

    from conftest import OFFLINE_ENV, fast, path_overrides

    proc = subprocess.run([sys.executable, str(REPO / "tests" / "config_trace.py"), *path_overrides(tmp_path),
                           *fast(trainer__max_epochs=1)], cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**os.environ, **OFFLINE_ENV})
    line = next(x for x in proc.stdout.splitlines() if x.startswith("CONFIG_TRACE "))
    sequence = json.loads(line.split(" ", 1)[1])
    assert "rankmix: result:" in proc.stdout, proc.stderr[-2000:]  # the whole run was followed, to its result
    assert {"rankmix.run_checks", "rankmix.execution", "rankmix.fit", "rankmix.records"} <= set(sequence)
    assert sequence[0] == "rankmix.train" and sequence[1:].count("rankmix.train") <= 2, sequence


def test_every_package_is_in_the_distribution():
    """A wheel holds the packages pyproject.toml lists: every folder of the package with an ``__init__.py``."""
    import tomllib

    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    root = REPO / "src"
    found = {".".join(p.parent.relative_to(root).parts) for p in (root / "rankmix").rglob("__init__.py")}
    assert found - listed == set() and "rankmix.kernels" in listed
