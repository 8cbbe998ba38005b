"""Model-written code runs here, never in the training process, and only a finished check counts as a pass.

**Isolation** comes from bubblewrap (``bwrap``, Debian package ``bubblewrap``; ``rankmix.benchmarks.isolation``
lists what the program sees): new mount, PID, network, IPC and UTS namespaces, uid 65534 with no capabilities (as
root too), a fresh ``/proc``, read-only Python install and environment, private ``tmpfs``
working folder, ``/tmp`` and ``/dev/shm``, no ``$HOME``, ``/root``, ``/run``, host ``/tmp``, network or host
socket, killed with its parent, and a seccomp filter (``rankmix.benchmarks.syscalls``) where libseccomp is
installed. The runner (``sandbox_child.py``) sets resource limits that bind the non-root uid: address space, CPU
seconds, file size, processes. The parent adds a wall-clock timeout and a minimal environment (one compute thread,
no GPU).

**A pass** is the run's secret (a random nonce, new for every program) written by the runner after the program's
code, the benchmark's check last, has returned. Exit status, printed text and an early exit never count. The
program shares its interpreter with the runner, so this holds as far as one process allows (``sandbox_child``);
``rankmix.benchmarks.suspicious`` flags completions that reach for the means to forge it.

A program that raises, hangs, exhausts a limit or touches what it may not is a failed sample (``Outcome.status``);
the sandbox never raises for a program's behaviour. Without bubblewrap it refuses, before any program runs, with
one line naming the package (``SandboxUnavailable``), unless ``allow_unisolated`` is set: then programs run in a
plain subprocess with only the limits, the secret and the runner's audit hook, and the run's JSON records
``isolated: false``, which the results table marks.
"""

from __future__ import annotations

import functools
import json
import os
import secrets
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

from rankmix.benchmarks import isolation, syscalls
from rankmix.errors import ConfigError, RankmixError

CHILD = Path(__file__).with_name("sandbox_child.py")
SETUP_FAILED = 3  # the runner's exit status when it could not set up (limits, program file)


class SandboxUnavailable(RankmixError):
    """The isolation a sandboxed program needs cannot be set up on this machine."""


@dataclass(frozen=True)
class SandboxSettings:
    """``task.sandbox``: limits of one program run."""

    timeout_s: float = 10.0
    memory_mb: int = 4096
    file_mb: int = 64             # one file's size; also the size of each private tmpfs
    processes: int = 64
    workers: int = 2              # programs run side by side
    allow_unisolated: bool = False  # run without bubblewrap where it is missing (limits, secret, audit hook only)

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
    status: str    # passed | failed | timeout | error (the sandbox could not start the program)
    seconds: float
    detail: str    # the end of the program's stderr

    @property
    def passed(self) -> bool:
        return self.status == "passed"


@functools.cache
def isolation_problem() -> str | None:
    """Why bubblewrap cannot isolate programs here (one line), or None when it can."""
    missing = isolation.missing_tool()
    if missing:
        return missing
    with tempfile.TemporaryDirectory(prefix="rankmix-sandbox-") as root:
        program = Path(root) / "program.py"
        program.write_text("pass\n")
        os.chmod(root, 0o755)
        probe = subprocess.run([*isolation.command(program, 1, None), sys.executable, "-I", "-c", "pass"],
                               capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    if probe.returncode != 0:
        reason = (probe.stderr.strip().splitlines() or [f"exit status {probe.returncode}"])[-1]
        return f"bubblewrap cannot start a sandbox here ({reason})"
    return None


def check_isolation(settings: SandboxSettings) -> bool:
    """True when programs run in bubblewrap; raises ``SandboxUnavailable`` (one line naming what to install) when
    they cannot and ``allow_unisolated`` is not set."""
    problem = isolation_problem()
    if problem is None:
        return True
    if settings.allow_unisolated:
        return False
    raise SandboxUnavailable(f"model-written code runs only in a sandbox, and {problem}; or run it unisolated at "
                             "your own risk with ++task.sandbox.allow_unisolated=true")


def _environment(home: str, tmp: str) -> dict[str, str]:
    return {"PATH": "/usr/bin:/bin", "HOME": home, "TMPDIR": tmp, "USER": "sandbox", "LOGNAME": "sandbox",
            "LANG": "C.UTF-8", "MPLCONFIGDIR": f"{tmp}/matplotlib", "MPLBACKEND": "Agg", "PYTHONHASHSEED": "0",
            "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "",
            "TF_CPP_MIN_LOG_LEVEL": "3", "TF_NUM_INTEROP_THREADS": "1", "TF_NUM_INTRAOP_THREADS": "1"}


def _tail(path: Path, n: int = 2000) -> str:
    with open(path, "rb") as f:
        f.seek(max(0, path.stat().st_size - n))
        return f.read().decode("utf-8", "replace").strip()


def _secret_pipe(secret: bytes) -> int:
    """The read end of a pipe that holds ``secret`` (the write end is closed)."""
    read, write = os.pipe()
    os.write(write, secret)
    os.close(write)
    return read


def _seccomp_fd() -> int | None:
    program = syscalls.bpf()
    if program is None:
        return None
    fd = os.memfd_create("rankmix-seccomp", 0)
    os.write(fd, program)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def _judge(code: int | None, result: bytes, secret: bytes, settings: SandboxSettings, seconds: float,
           detail: str) -> Outcome:
    if code is None:
        return Outcome("timeout", seconds, f"no result within {settings.timeout_s} s; {detail}".strip("; "))
    if not result.startswith(b"started\n") or code == SETUP_FAILED:
        return Outcome("error", seconds, detail)  # the sandbox or the runner failed before the program ran
    if code == 0 and result == b"started\n" + secret + b"\n":
        return Outcome("passed", seconds, detail)
    if code < 0:  # killed by a signal: CPU limit (SIGXCPU/SIGKILL), file size (SIGXFSZ), a crash in native code
        detail = f"killed by {signal.Signals(-code).name}; {detail}".strip("; ")
    return Outcome("failed", seconds, detail)


def run_program(program: str, settings: SandboxSettings = SandboxSettings()) -> Outcome:
    """Runs ``program`` (Python source) as ``__main__`` in the sandbox; passed only when its code ran to the end."""
    isolated = check_isolation(settings)
    root = Path(tempfile.mkdtemp(prefix="rankmix-sandbox-"))
    secret = secrets.token_hex(16).encode()
    fds: list[int] = []
    try:
        os.chmod(root, 0o755)  # bubblewrap reads the program from here (as uid 65534 where it runs as root)
        (root / "program.py").write_text(program)
        (root / "program.py").chmod(0o644)
        limits = {"memory_bytes": settings.memory_mb << 20, "cpu_s": max(1, int(settings.timeout_s) + 1),
                  "file_bytes": settings.file_mb << 20, "processes": settings.processes}
        fds.append(_secret_pipe(secret))
        result_file = open(root / "result", "w+b")  # noqa: SIM115 -- closed in finally
        fds.append(result_file.fileno())
        if isolated:
            seccomp = _seccomp_fd()
            if seccomp is not None:
                fds.append(seccomp)
            prefix = isolation.command(root / "program.py", settings.file_mb, seccomp)
            runner, workdir, env = isolation.RUNNER, isolation.WORK, _environment(isolation.WORK, "/tmp")
        else:
            (root / "work" / "tmp").mkdir(parents=True)
            prefix, runner, workdir = [], str(CHILD), str(root / "work")
            env = _environment(workdir, f"{workdir}/tmp")
        command = [*prefix, sys.executable, "-I", "-B", runner, workdir,
                   f"{isolation.WORK}/program.py" if isolated else str(root / "program.py"), json.dumps(limits),
                   str(fds[0]), str(fds[1])]
        started = time.monotonic()
        with open(root / "stdout", "wb") as out, open(root / "stderr", "wb") as err:
            proc = subprocess.Popen(command, cwd=root, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                    pass_fds=fds, start_new_session=True)
            try:
                code = proc.wait(timeout=settings.timeout_s)
            except subprocess.TimeoutExpired:
                code = None
            finally:  # whatever the program left running dies with its process group and PID namespace
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait()
        seconds = round(time.monotonic() - started, 3)
        result_file.seek(0)
        result = result_file.read(4096)
        result_file.close()
        return _judge(code, result, secret, settings, seconds, _tail(root / "stderr"))
    finally:
        for fd in fds[:1] + fds[2:]:
            os.close(fd)
        shutil.rmtree(root, ignore_errors=True)


def run_programs(programs: Iterable[str], settings: SandboxSettings = SandboxSettings()) -> list[Outcome]:
    """``run_program`` over ``programs``, ``settings.workers`` at a time, in order."""
    programs = list(programs)
    check_isolation(settings)
    with ThreadPoolExecutor(max_workers=max(1, settings.workers)) as pool:
        return list(pool.map(lambda p: run_program(p, settings), programs))


def settings_record(settings: SandboxSettings) -> dict:
    """The settings and the isolation actually used, for a run's JSON."""
    isolated = isolation_problem() is None
    return {**asdict(settings), "isolated": isolated, "seccomp": isolated and syscalls.bpf() is not None}
