"""One result JSON per run, written atomically: ``results/<table>/runs/<run_key>.json``.

Layout (PEFT ``method_comparison`` style): ``status``, ``run``, ``metrics``, ``params``, ``train``,
``meta`` (package versions, the lock the environment was installed from, git commit, machine) and the resolved
``config``.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import resource
import subprocess
from importlib import metadata
from pathlib import Path

from rankmix.atomic import atomic_open

PACKAGES = ("rankmix", "torch", "transformers", "lightning", "hydra-core", "omegaconf", "datasets", "peft",
            "triton", "timm", "wandb")


def write_json_atomic(path: Path, data: dict) -> None:
    """Write ``data`` to ``path`` atomically: readers never see half a file."""
    with atomic_open(path) as f:
        json.dump(data, f, indent=2, sort_keys=False, default=str)
        f.write("\n")


def read_json(path: Path) -> dict | None:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError):
        return None


def result_path(results_dir: Path, table_id: str, key: str) -> Path:
    return Path(results_dir) / table_id / "runs" / f"{key}.json"


# What a result holds. 2: each test metric's per-item scores and standard error (``evaluation.items``). A result of
# an older format predates what a table shows of it: it is out of date, and never reused for another run.
RESULT_FORMAT = 2


def current_format(run: dict) -> bool:
    return int(run.get("run", {}).get("format", 1)) >= RESULT_FORMAT


def is_up_to_date(path: Path, config_hash: str) -> bool:
    """A finished run of the same configuration, in the current result format, already has its result."""
    r = read_json(path)
    return bool(r) and r.get("status") == "ok" and r.get("run", {}).get("config_hash") == config_hash \
        and current_format(r)


def same_computation(results_dir: Path, config: dict, own: Path) -> Path | None:
    """A finished run whose configuration computes the same thing (``computation_hash``): the run's own earlier
    result ``own`` first (only how it is labelled changed: its table's title or cells, a row's paper label), else
    one in any table."""
    from rankmix.config import computation_hash

    want = computation_hash(config)
    for path in [own, *(p for p in sorted(Path(results_dir).glob("*/runs/*.json")) if p != own)]:
        r = read_json(path)
        if r and r.get("status") == "ok" and "config" in r and current_format(r) \
                and computation_hash(r["config"]) == want:
            return path
    return None


def package_versions() -> dict[str, str | None]:
    out = {}
    for p in PACKAGES:
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            out[p] = None
    return out


# what a result does not depend on: other runs' outputs (results/, runs/) and the lock (meta.environment has it)
NOT_CODE = ("results/", "runs/")


def git_state(cwd: Path) -> dict:
    """The commit, and whether the code differs from it: ``dirty`` counts tracked files outside ``results/`` and
    ``runs/`` (results written by other runs change nothing a run computes), and ``changed`` lists them."""

    def git(*args):
        r = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10)
        return r.stdout if r.returncode == 0 else None

    try:
        commit = git("rev-parse", "HEAD")
        status = git("status", "--porcelain=v1", "-z", "--untracked-files=no")
    except (OSError, subprocess.TimeoutExpired):
        return {"commit": None, "dirty": None}
    if commit is None or status is None:
        return {"commit": commit and commit.strip(), "dirty": None}
    changed, entries = [], iter(status.split("\0"))
    for entry in entries:
        if not entry:
            continue
        code, name = entry[:2], entry[3:]
        if "R" in code or "C" in code:  # a rename's source path follows as its own entry
            next(entries, None)
        if not name.startswith(NOT_CODE):
            changed.append(name)
    out = {"commit": commit.strip(), "dirty": bool(changed)}
    if changed:
        out["changed"] = sorted(changed)
    return out


def lock_pins(lock: Path) -> dict[str, tuple[str, str | None]]:
    """``requirements.lock``'s pins: name -> (version, environment marker or None)."""
    pins = {}
    for line in lock.read_text().splitlines():
        if line[:1].isalnum() and "==" in line:
            req, _, marker = line.rstrip(" \\").partition(";")
            name, _, version = req.partition("==")
            pins[name.strip().lower().replace("_", "-")] = (version.strip(), marker.strip() or None)
    return pins


def environment(root: Path) -> dict:
    """The lock the environment should match (its SHA-256), and whether it does: ``differs`` lists each pinned
    package that applies to this platform and is installed at another version, or not at all."""
    lock = root / "requirements.lock"
    if not lock.is_file():
        return {"lock": None}
    from packaging.markers import Marker

    differs = {}
    for name, (want, marker) in lock_pins(lock).items():
        if marker and not Marker(marker).evaluate():
            continue
        try:
            have = metadata.version(name)
        except metadata.PackageNotFoundError:
            have = None
        if have != want:
            differs[name] = {"lock": want, "installed": have}
    out = {"lock": lock.name, "lock_sha256": hashlib.sha256(lock.read_bytes()).hexdigest(),
           "matches_lock": not differs}
    if differs:
        out["differs"] = differs
    return out


def peak_rss_mb() -> float:
    """This process's peak resident memory in MiB: Linux's ``VmHWM`` (the high-water mark of this program's own
    memory), else ``ru_maxrss``. Linux keeps ``ru_maxrss`` across fork and exec, so a run started by a large
    process (the rehearsal, a launcher) would report its parent's peak there."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def reset_peak_memory() -> None:
    """Start this run's peak memory from what the process holds now, so a run in a sweep that trains run after run
    in one process (Hydra's basic launcher) reports its own peak, not the largest of the runs before it: the GPU's
    peak statistics, and Linux's ``VmHWM`` (``/proc/self/clear_refs``; where that cannot be written the peak stays
    the process's)."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_memory_mb() -> dict[str, float]:
    """The peak memory since ``reset_peak_memory``: resident (MiB) and, with a GPU, allocated on it."""
    import torch

    out = {"cpu_rss_mb": peak_rss_mb()}
    if torch.cuda.is_available():
        out["gpu_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
    out["peak_mb"] = out.get("gpu_allocated_mb") or out["cpu_rss_mb"]  # the accelerator's: GPU if one was used
    return out


def machine() -> dict:
    import torch

    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
