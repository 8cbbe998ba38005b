"""Model-written code runs here, never in the training process.

Each program runs in its own subprocess (``sandbox_child.py``) started by ``unshare`` with

- a new **network** namespace: only a loopback that is down, so no connection can leave it;
- a new **mount** namespace in which every mount is read-only except a fresh temporary working directory (removed
  afterwards), so nothing outside it can be written, even through ctypes;
- a new **PID** namespace: killing it on timeout kills every process it started;
- resource limits (address space, CPU seconds, file size, process count), a wall-clock timeout, a minimal
  environment (``HOME``/``TMPDIR`` inside the working directory, one compute thread, no GPU), and an audit hook
  that refuses process creation, sockets and file changes outside the working directory.

A program that raises, hangs, exhausts memory or is refused counts as failed (``Outcome.status``); the sandbox itself
never raises for a program's behaviour. Where namespaces cannot be made (no ``unshare``, user namespaces disabled)
it refuses to run (``SandboxUnavailable``) unless ``allow_unisolated`` is set, and then only the limits and the
audit hook hold.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from rankmix.errors import ConfigError, RankmixError

CHILD = Path(__file__).with_name("sandbox_child.py")
ISOLATED_EXIT = {0: "passed", 1: "failed", 3: "error"}


class SandboxUnavailable(RankmixError):
    """The isolation a sandboxed program needs cannot be set up on this machine."""


@dataclass(frozen=True)
class SandboxSettings:
    """``task.sandbox``: limits of one program run."""

    timeout_s: float = 10.0
    memory_mb: int = 4096
    file_mb: int = 64
    processes: int = 64
    workers: int = 2              # programs run side by side
    allow_unisolated: bool = False  # run without namespaces where they are unavailable (limits + audit hook only)

    @classmethod
    def from_config(cls, options: Mapping | None) -> SandboxSettings:
        known = list(cls.__dataclass_fields__)
        for key in options or {}:
            if key not in known:
                raise ConfigError(f"task.sandbox.{key}", options[key],
                                  f"not a sandbox setting; settings: {', '.join(known)}")
        return cls(**dict(options or {}))


@dataclass(frozen=True)
class Outcome:
    status: str    # passed | failed | timeout | error (the isolation failed to start)
    seconds: float
    detail: str    # the end of the program's stderr

    @property
    def passed(self) -> bool:
        return self.status == "passed"


def namespace_command() -> list[str]:
    """``unshare`` with a new mount, network and PID namespace (and a user namespace when not root)."""
    command = ["unshare", "--mount", "--net", "--pid", "--fork", "--kill-child"]
    return command if os.geteuid() == 0 else [*command, "--user", "--map-root-user"]


@functools.cache
def isolation_problem() -> str | None:
    """Why namespaces cannot be made here, or None when they can."""
    if shutil.which("unshare") is None:
        return "the `unshare` command (util-linux) is not installed"
    probe = subprocess.run([*namespace_command(), "true"], capture_output=True, text=True, timeout=30)
    if probe.returncode != 0:
        return f"`{' '.join(namespace_command())} true` failed: {probe.stderr.strip() or probe.returncode}"
    return None


def check_isolation(settings: SandboxSettings) -> bool:
    """True when programs run in namespaces; raises ``SandboxUnavailable`` when they cannot and that is not allowed."""
    problem = isolation_problem()
    if problem is None:
        return True
    if settings.allow_unisolated:
        return False
    raise SandboxUnavailable(
        f"model-written code runs only in an isolated sandbox, and {problem}. Install util-linux and allow user "
        "namespaces (sysctl kernel.unprivileged_userns_clone=1 / user.max_user_namespaces>0), or run without network "
        "and filesystem isolation at your own risk with ++task.sandbox.allow_unisolated=true")


def _environment(workdir: Path) -> dict[str, str]:
    return {"PATH": "/usr/bin:/bin", "HOME": str(workdir), "TMPDIR": str(workdir / "tmp"), "LANG": "C.UTF-8",
            "MPLCONFIGDIR": str(workdir / ".matplotlib"), "MPLBACKEND": "Agg", "PYTHONHASHSEED": "0",
            "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "",
            "TF_CPP_MIN_LOG_LEVEL": "3", "TF_NUM_INTEROP_THREADS": "1", "TF_NUM_INTRAOP_THREADS": "1"}


def _tail(path: Path, n: int = 2000) -> str:
    with open(path, "rb") as f:
        f.seek(max(0, path.stat().st_size - n))
        return f.read().decode("utf-8", "replace").strip()


def run_program(program: str, settings: SandboxSettings = SandboxSettings(),
                files: Mapping[str, bytes] | None = None) -> Outcome:
    """Runs ``program`` (Python source) as ``__main__`` in the sandbox; ``files`` are written into its working
    directory first (a benchmark's test inputs)."""
    isolated = check_isolation(settings)
    root = Path(tempfile.mkdtemp(prefix="rankmix-sandbox-"))
    try:
        work = root / "work"
        (work / "tmp").mkdir(parents=True)
        (work / "program.py").write_text(program)
        for name, data in (files or {}).items():
            (work / name).parent.mkdir(parents=True, exist_ok=True)
            (work / name).write_bytes(data)
        limits = {"memory_bytes": settings.memory_mb << 20, "cpu_s": max(1, int(settings.timeout_s) + 1),
                  "file_bytes": settings.file_mb << 20, "processes": settings.processes,
                  "read_only_filesystem": isolated}
        command = [*(namespace_command() if isolated else []), sys.executable, "-I", "-B", str(CHILD), str(work),
                   str(work / "program.py"), json.dumps(limits)]
        started = time.monotonic()
        with open(root / "stdout", "wb") as out, open(root / "stderr", "wb") as err:
            proc = subprocess.Popen(command, cwd=work, env=_environment(work), stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=err, start_new_session=True)
            try:
                code = proc.wait(timeout=settings.timeout_s)
            except subprocess.TimeoutExpired:
                code = None
            finally:  # whatever the program left running dies with its process group (and PID namespace)
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait()
        seconds = round(time.monotonic() - started, 3)
        detail = _tail(root / "stderr")
        if code is None:
            return Outcome("timeout", seconds, f"no result within {settings.timeout_s} s; {detail}".strip("; "))
        if code < 0:  # killed by a signal: CPU limit (SIGXCPU/SIGKILL), or a crash in native code
            return Outcome("failed", seconds, f"killed by {signal.Signals(-code).name}; {detail}".strip("; "))
        return Outcome(ISOLATED_EXIT.get(code, "failed"), seconds, detail)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def run_programs(programs: Iterable[str], settings: SandboxSettings = SandboxSettings(),
                 files: Mapping[str, bytes] | None = None) -> list[Outcome]:
    """``run_program`` over ``programs``, ``settings.workers`` at a time, in order."""
    programs = list(programs)
    check_isolation(settings)
    with ThreadPoolExecutor(max_workers=max(1, settings.workers)) as pool:
        return list(pool.map(lambda p: run_program(p, settings, files), programs))


def settings_record(settings: SandboxSettings) -> dict:
    """The settings and the isolation actually used, for a run's JSON."""
    return {**asdict(settings), "isolated": isolation_problem() is None}
