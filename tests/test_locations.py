"""One root for what rankmix writes: the current folder or $RANKMIX_ROOT, for the entry, the tables and figures."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

from conftest import OFFLINE_ENV, REPO


def _tool(cwd, *args, env=None):
    env = {k: v for k, v in {**os.environ, **OFFLINE_ENV, **(env or {})}.items() if k != "RANKMIX_ROOT" or env}
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def _copy_results(dest, table="rankmix-ranks"):
    shutil.copytree(REPO / "results" / table, dest / "results" / table)
    shutil.copytree(REPO / "results" / "paper", dest / "results" / "paper")


def test_the_tables_tool_writes_under_the_current_folder_not_the_package(tmp_path):
    """A second clone sharing one environment (the package imported from the first) writes only into itself."""
    _copy_results(tmp_path)
    (tmp_path / "results" / "rankmix-ranks" / "table.md").unlink()
    before = (REPO / "results" / "rankmix-ranks" / "table.md").stat().st_mtime_ns
    r = _tool(tmp_path, "rankmix.tables", "build", "rankmix-ranks")
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / "results" / "rankmix-ranks" / "table.md").is_file()
    assert str(tmp_path) in r.stdout
    assert (REPO / "results" / "rankmix-ranks" / "table.md").stat().st_mtime_ns == before


def test_rankmix_root_moves_tables_and_figures_alike(tmp_path):
    root, elsewhere = tmp_path / "root", tmp_path / "cwd"
    elsewhere.mkdir()
    _copy_results(root)
    r = _tool(elsewhere, "rankmix.tables", "list", env={"RANKMIX_ROOT": str(root)})
    assert r.returncode == 0 and "rankmix-ranks" in r.stdout and "never run" not in r.stdout.split(
        "reproduce-table-rankmix-ranks", 1)[1].splitlines()[0]
    r = _tool(elsewhere, "rankmix.figures", "index", env={"RANKMIX_ROOT": str(root)})
    assert r.returncode == 0, r.stderr[-2000:]
    assert (root / "results" / "README.md").is_file() and not (elsewhere / "results").exists()
