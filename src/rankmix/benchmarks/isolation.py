"""The ``bwrap`` (bubblewrap) command that isolates one sandboxed program from the machine.

Inside it the program sees only:

- read-only: ``/usr`` (with the top-level ``/bin``, ``/lib``, ``/lib64``, ``/sbin`` links or folders), the Python
  install (``sys.base_prefix``), the environment (``sys.prefix``), ``/etc/ld.so.cache``, the runner
  (``sandbox_child.py``, at ``/runner.py``) and the program (``/sandbox/program.py``);
- writable and private: ``/sandbox`` (its working folder), ``/tmp`` and ``/dev/shm``, each a fresh ``tmpfs`` of
  ``size_mb`` that is gone when the program ends;
- a fresh ``/proc`` of its own PID namespace and a minimal ``/dev`` (null, zero, random, urandom, tty, pts);

so no ``$HOME``, ``/root``, ``/run``, ``/var``, ``/etc/passwd``, host ``/tmp`` and no host socket. Every namespace
is new: no network (a loopback of its own only, so no abstract socket of the host either), no other process
visible, killed with its PID namespace and with its parent (``--die-with-parent``), in a new session (no terminal
injection). It runs with no capability as uid/gid 65534:

- as an ordinary user, bubblewrap maps 65534 in a new user namespace onto that user, and nested user namespaces are
  disabled (``--disable-userns``);
- as root, bubblewrap builds the sandbox without a user namespace and ``setpriv`` (util-linux) then switches to
  uid/gid 65534 with no groups and an empty capability bounding set, so that the process is not root on the host
  and the resource limits bind it (``RLIMIT_NPROC`` never binds root).

``seccomp`` (``rankmix.benchmarks.syscalls``) is a second layer where libseccomp is installed.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

UID = GID = 65534
WORK = "/sandbox"
RUNNER = "/runner.py"
TOP_LEVEL = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
NAMESPACES_AS_ROOT = ["--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts", "--unshare-cgroup-try"]
NAMESPACES_AS_USER = ["--unshare-all", "--unshare-user", "--disable-userns", "--uid", str(UID), "--gid", str(GID)]
DROP_ROOT = ["setpriv", f"--reuid={UID}", f"--regid={GID}", "--clear-groups", "--inh-caps=-all",
             "--bounding-set=-all", "--"]


def as_root() -> bool:
    return os.geteuid() == 0


def python_paths() -> list[str]:
    """The folders an interpreter of this environment needs: the install and the environment, each under its own
    name and under its real path (a symlinked ``.venv`` resolves either way)."""
    paths: list[str] = []
    for prefix in dict.fromkeys([sys.base_prefix, sys.prefix, str(Path(sys.executable).resolve().parent.parent)]):
        for path in (os.path.abspath(prefix), os.path.realpath(prefix)):
            if not path.startswith("/usr/") and path != "/usr" and path not in paths:
                paths.append(path)
    return paths


def _parents(paths: list[str]) -> list[str]:
    """Every folder above ``paths`` (not ``/``), shallowest first: created world-readable before the binds."""
    above = {str(p) for path in paths for p in Path(path).parents if str(p) != "/"}
    return sorted(above, key=lambda p: (p.count("/"), p))


def command(program: Path, size_mb: int, seccomp_fd: int | None) -> list[str]:
    """``bwrap`` with its options, then the command prefix (``setpriv`` as root); the interpreter and its
    arguments follow."""
    args = ["bwrap", *(NAMESPACES_AS_ROOT if as_root() else NAMESPACES_AS_USER), "--die-with-parent",
            "--new-session", "--cap-drop", "ALL", "--hostname", "sandbox"]
    if as_root():  # setpriv needs these to switch users; it drops them and the bounding set before Python starts
        args += ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID", "--cap-add", "CAP_SETPCAP"]
    args += ["--ro-bind", "/usr", "/usr"]
    for top in TOP_LEVEL:
        if os.path.islink(top):
            args += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            args += ["--ro-bind", top, top]
    args += ["--proc", "/proc", "--dev", "/dev"]
    size = str(size_mb << 20)
    for folder in ("/tmp", "/dev/shm", WORK):
        args += ["--perms", "1777", "--size", size, "--tmpfs", folder]
    # the Python folders after the private /tmp: an environment that lives under /tmp (a checkout there) is bound
    # on top of it, not hidden by it
    pythons = python_paths()
    for folder in _parents(pythons):
        args += ["--perms", "0755", "--dir", folder]
    for path in pythons:
        args += ["--ro-bind", os.path.realpath(path), path]
    args += ["--ro-bind-try", "/etc/ld.so.cache", "/etc/ld.so.cache"]
    args += ["--ro-bind", str(program), f"{WORK}/program.py",
             "--ro-bind", str(Path(__file__).with_name("sandbox_child.py")), RUNNER, "--chdir", WORK]
    if seccomp_fd is not None:
        args += ["--seccomp", str(seccomp_fd)]
    return [*args, "--", *(DROP_ROOT if as_root() else [])]


def missing_tool() -> str | None:
    """The one line saying what to install, or None when the tools are there."""
    if shutil.which("bwrap") is None:
        return "bubblewrap is not installed (`apt-get install bubblewrap`)"
    if as_root() and shutil.which("setpriv") is None:
        return "setpriv is not installed (`apt-get install util-linux`)"
    return None
