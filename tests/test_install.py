"""The environment: nothing at the repo root hides an installed distribution, the lock covers pyproject.toml's
ranges, and a run's JSON names the environment and the code it ran."""

from __future__ import annotations

import hashlib
import importlib.machinery
import subprocess
import sys
from importlib import metadata

from packaging.requirements import Requirement

from conftest import REPO
from rankmix.results import environment, git_state, lock_pins

ENV_311 = {"python_version": "3.11", "python_full_version": "3.11.7", "sys_platform": "linux",
           "platform_system": "Linux", "platform_machine": "x86_64", "extra": ""}


def _regular_import(entry) -> str | None:
    """The name under which Python would import ``entry`` as a module or regular package (one that wins over an
    installed distribution when the repo root is first on sys.path), or None."""
    if entry.is_dir():
        return entry.name if (entry / "__init__.py").exists() else None
    for suffix in importlib.machinery.all_suffixes():
        if entry.name.endswith(suffix):
            return entry.name[: -len(suffix)]
    return None


def test_no_top_level_entry_of_the_repo_is_a_module_or_regular_package():
    """`python -m …` puts the repo root first on sys.path: a module or a folder with ``__init__.py`` there would
    hide an installed distribution of that name (as ``kernels/`` once hid Hugging Face's ``kernels``). A folder
    without one is at most a namespace portion, which never does."""
    found = [e.name for e in REPO.iterdir() if not e.name.startswith(".") and _regular_import(e)]
    assert not found, f"importable at the repo root, so it can shadow a distribution: {found}"


def test_no_top_level_name_hides_an_installed_distribution():
    installed = metadata.packages_distributions()
    names = {e.name.split(".")[0]: e for e in REPO.iterdir() if not e.name.startswith(".")}
    hiding = {name: installed[name] for name, e in names.items() if name in installed and _regular_import(e)}
    assert not hiding, hiding
    # where a name is also an installed distribution's, import resolution from the root still finds the installed one
    for name in sorted(set(names) & set(installed)):
        origin = subprocess.run(
            [sys.executable, "-c", f"import importlib.util as u; s = u.find_spec({name!r}); print(s.origin or '')"],
            cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
        assert not origin.startswith(str(REPO / name)), (name, origin)


def test_the_installed_distribution_wins_over_a_repo_folder_of_its_name(tmp_path):
    """`python -m rankmix.train` from the repo root, with a distribution named ``kernels`` (the repo's kernels/
    folder's name) installed in a site folder: a library that imports it gets the installed one."""
    site = tmp_path / "site"
    (site / "kernels").mkdir(parents=True)
    marker = tmp_path / "imported_from"
    (site / "kernels" / "__init__.py").write_text(f"open({str(marker)!r}, 'w').write(__file__)\n")
    info = site / "kernels-0.18.2.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: kernels\nVersion: 0.18.2\n")
    (info / "top_level.txt").write_text("kernels\n")
    (info / "RECORD").write_text("")
    # a library that imports the distribution during the run: a Hydra plugin module, which Hydra imports at start-up
    (site / "hydra_plugins" / "kernels_user").mkdir(parents=True)
    (site / "hydra_plugins" / "kernels_user" / "__init__.py").write_text("import kernels  # noqa: F401\n")
    r = subprocess.run([sys.executable, "-m", "rankmix.train", "--cfg", "job"], cwd=REPO, capture_output=True,
                       text=True, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(site)}, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert marker.read_text() == str(site / "kernels" / "__init__.py")


def _pyproject_requirements():
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return [Requirement(r) for r in [*project["dependencies"], *project["optional-dependencies"]["dev"]]]


def test_the_lock_pins_every_requirement_within_its_range():
    pins = lock_pins(REPO / "requirements.lock")
    wrong = []
    for req in _pyproject_requirements():
        if req.marker and not req.marker.evaluate(ENV_311):
            continue
        name = req.name.lower().replace("_", "-")
        if name not in pins or not req.specifier.contains(pins[name][0], prereleases=True):
            wrong.append(f"{req} -> {pins.get(name, ('missing',))[0]}")
    assert not wrong, f"requirements.lock does not satisfy pyproject.toml (run `make lock`): {wrong}"
    assert pins["torch"][0] == "2.14.1" and pins["lmms-eval"][0] == "0.7.3"


def test_every_pin_of_the_lock_is_hashed():
    text = (REPO / "requirements.lock").read_text()
    blocks = [b for b in text.split("\n") if b[:1].isalnum()]
    assert blocks and all(b.rstrip().endswith("\\") for b in blocks), "a pin without --hash lines"
    assert text.count("--hash=sha256:") >= len(blocks)


def test_environment_names_the_lock_and_what_differs(tmp_path):
    torch_version = metadata.version("torch")
    (tmp_path / "requirements.lock").write_text(
        f"torch=={torch_version} \\\n    --hash=sha256:{'0' * 64}\n"
        "pytest==0.0.1 \\\n    --hash=sha256:" + "1" * 64 + "\n"
        "pywin32==306 ; sys_platform == 'win32' \\\n    --hash=sha256:" + "2" * 64 + "\n")
    env = environment(tmp_path)
    assert env["lock_sha256"] == hashlib.sha256((tmp_path / "requirements.lock").read_bytes()).hexdigest()
    assert env["matches_lock"] is False
    assert env["differs"] == {"pytest": {"lock": "0.0.1", "installed": metadata.version("pytest")}}
    assert environment(tmp_path / "nowhere") == {"lock": None}


def _git(repo, *args):
    subprocess.run(["git", "-c", "user.email=t@t", "-c", "user.name=t", *args], cwd=repo, check=True,
                   capture_output=True)


def test_git_state_counts_code_only(tmp_path):
    for p in ("src/a.py", "results/t/runs/x.json", "runs/t/x/log.txt"):
        (tmp_path / p).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / p).write_text("0")
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "add", "-A")
    _git(tmp_path, "commit", "-qm", "c")
    assert git_state(tmp_path)["dirty"] is False
    (tmp_path / "results/t/runs/x.json").write_text("1")
    (tmp_path / "runs/t/x/log.txt").write_text("1")
    assert git_state(tmp_path) == {"commit": git_state(tmp_path)["commit"], "dirty": False}
    (tmp_path / "src/a.py").write_text("1")
    _git(tmp_path, "mv", "results/t", "results/u")
    state = git_state(tmp_path)
    assert state["dirty"] is True and state["changed"] == ["src/a.py"]


def test_setup_installs_from_the_lock_with_hashes(tmp_path):
    out = subprocess.run(["make", "-n", "setup", f"VENV={tmp_path / 'v'}"], cwd=REPO, capture_output=True,
                         text=True).stdout
    assert "pip install --no-deps --require-hashes -r requirements.lock" in out


def test_a_runs_peak_memory_is_its_own_not_its_launchers(tmp_path):
    """Linux keeps ``ru_maxrss`` across fork and exec: a run started by a process holding 1.5 GiB (the rehearsal, a
    launcher) must not report that process's peak as its own (the child itself, torch imported, holds about 0.5)."""
    import subprocess
    import sys

    held = bytearray(1536 * 2**20)
    held[:: 4096] = b"\x01" * len(held[:: 4096])   # touched, so resident
    code = "from rankmix.results import peak_memory_mb; print(peak_memory_mb()['cpu_rss_mb'])"
    child = float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert child < 1024 < len(held) / 2**20


def test_a_sweeps_next_run_starts_its_peak_afresh():
    """Runs of one sweep process (Hydra's basic launcher) each report their own peak: a run that follows one that
    held 1 GiB does not report that GiB."""
    import gc

    from rankmix.results import peak_memory_mb, reset_peak_memory

    earlier = bytearray(1024 * 2**20)
    earlier[:: 4096] = b"\x01" * len(earlier[:: 4096])
    held = peak_memory_mb()["cpu_rss_mb"]
    del earlier
    gc.collect()
    reset_peak_memory()
    assert peak_memory_mb()["cpu_rss_mb"] < held - 512
