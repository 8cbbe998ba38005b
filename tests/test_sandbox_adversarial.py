"""Attacks through the public entry point (``humaneval.score``): each completion answers wrong and tries to escape
or to be scored a pass. Every one must leave no trace outside (no secret in its output, no file written, no
connection, no surviving process) and score anything but ``passed``. Run as root and, in CI, as an ordinary user."""

import os
import socket
import time
import uuid

import pytest

from rankmix.benchmarks import humaneval
from rankmix.benchmarks.sandbox import SandboxSettings

SETTINGS = SandboxSettings(timeout_s=4.0, memory_mb=1024, file_mb=16, workers=4)
PROBLEM = {"task_id": "T/0", "prompt": "def add_one(x):\n    \"\"\"x plus one.\"\"\"\n", "entry_point": "add_one",
           "test": "def check(candidate):\n    assert candidate(1) == 2\n    assert candidate(-1) == 0\n"}
CANARY = f"rankmix-canary-{uuid.uuid4().hex}"  # names of things the attacks aim at
SECRET = uuid.uuid4().hex  # in the host's environment and files only, never in a program's text


def body(code: str) -> str:
    """``code`` as a completion of add_one that then answers wrong (``return x``)."""
    return "".join(f"    {line}\n" for line in [*code.strip("\n").splitlines(), "return x"])


@pytest.fixture
def host(tmp_path, monkeypatch):
    """A host to attack: secrets in the environment and a fake $HOME, a TCP listener, a Unix socket, an abstract
    socket; ``outside`` is a folder the sandbox must not write."""
    home = tmp_path / "home"
    home.mkdir()
    (home / ".netrc").write_text(f"machine api.wandb.ai login user password {SECRET}\n")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("WANDB_API_KEY", SECRET)
    monkeypatch.setenv("HF_TOKEN", SECRET)
    outside = tmp_path / "outside"
    outside.mkdir(mode=0o777)
    outside.chmod(0o777)
    tcp = socket.create_server(("127.0.0.1", 0))
    unix = socket.socket(socket.AF_UNIX)
    unix.bind(str(tmp_path / "agent.sock"))
    abstract = socket.socket(socket.AF_UNIX)
    abstract.bind(f"\0{CANARY}")
    for s in (tcp, unix, abstract):
        s.listen()
        s.setblocking(False)
    yield {"home": home, "outside": outside, "tcp": tcp.getsockname()[1], "unix": tmp_path / "agent.sock",
           "sockets": (tcp, unix, abstract)}
    for s in (tcp, unix, abstract):
        s.close()


def attacks(h) -> dict[str, str]:
    out, home, port = h["outside"], h["home"], h["tcp"]
    return {
        # reading the parent's environment and the user's files
        "environment": "import os, sys\nprint(dict(os.environ), file=sys.stderr)",
        "parent environ": "import os, sys\nfor p in os.listdir('/proc'):\n    try:\n"
                          "        sys.stderr.write(open(f'/proc/{p}/environ').read())\n    except Exception:\n"
                          "        pass\ntry:\n    sys.stderr.write(open(f'/proc/{os.getppid()}/environ').read())\n"
                          "except Exception:\n    pass",
        "home files": f"import sys\nfor p in ['{home}/.netrc', '/etc/passwd', '/root/.netrc', '/etc/shadow']:\n"
                      "    try:\n        sys.stderr.write(open(p).read())\n    except Exception:\n        pass",
        "other sandboxes": "import glob, sys\nprint(glob.glob('/tmp/rankmix-sandbox-*/**', recursive=True), "
                           "file=sys.stderr)",
        # writing outside the working folder
        "write outside": f"open('{out}/open', 'w').write('x')",
        "rename outside": f"import os\nopen('f', 'w').write('x')\nos.rename('f', '{out}/rename')",
        "write via parent root": f"import os\nopen(f'/proc/{{os.getppid()}}/root{out}/proc-root', 'w').write('x')",
        "write via pid 1 root": f"open('/proc/1/root{out}/pid1-root', 'w').write('x')",
        "subprocess": f"import subprocess\nsubprocess.run(['touch', '{out}/subprocess'])",
        "ctypes creat": f"import ctypes\nctypes.CDLL(None).creat(b'{out}/ctypes', 0o644)",
        "remount writable": "import ctypes\nlibc = ctypes.CDLL(None)\n"
                            "libc.mount(b'none', b'/', None, 32 | 4096, None)\n"
                            "libc.mount(b'none', b'/usr', None, 32 | 4096, None)\n"
                            f"libc.mount(b'{out}', b'/sandbox/o', None, 4096, None)\n"
                            f"open('/usr/rankmix-{CANARY}', 'w').write('x')",
        "new namespaces": "import ctypes\nlibc = ctypes.CDLL(None)\nassert libc.unshare(0x10000000 | 0x20000) != 0\n"
                          "assert libc.setns(0, 0) != 0",
        "unshare command": f"import os\nos.system('unshare -Urm sh -c \"touch {out}/unshare\"')",
        # network and host sockets
        "tcp": f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1)",
        "unix socket": f"import socket\ns = socket.socket(socket.AF_UNIX)\ns.connect('{h['unix']}')",
        "abstract socket": f"import socket\ns = socket.socket(socket.AF_UNIX)\ns.connect('\\0{CANARY}')",
        "dns": "import socket\nsocket.getaddrinfo('example.com', 80)",
        # processes that outlive the run, and signals to the parent
        "daemon": f"import os, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
                  f"        time.sleep(2)\n        open('{out}/daemon', 'w').write('x')\n    os._exit(0)",
        "exec lingering": f"import os\nif os.fork() == 0:\n    os.execv('/bin/sh', ['sh', '-c', 'sleep 30; touch "
                          f"{out}/linger # {CANARY}'])",
        "kill parent": "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\nos.kill(-1, signal.SIGKILL)",
        # limits
        "fork bomb": "import os\nwhile True:\n    os.fork()",
        "memory": "x = bytearray(1 << 40)",
        "infinite loop": "while True:\n    pass",
        "big file": "open('big', 'wb').write(b'0' * (64 << 20))",
        "fill tmpfs": "i = 0\nwhile True:\n    open(f'/tmp/f{i}', 'wb').write(b'0' * (8 << 20))\n    i += 1",
        # scored a pass without a finished check
        "os._exit": "import os\nos._exit(0)",
        "posix._exit": "import posix\nposix._exit(0)",
        "sys.exit": "import sys\nsys.exit(0)",
        "signal self": "import os, signal\nos.kill(os.getpid(), signal.SIGTERM)",
        "exec true": "import os\nos.execv('/bin/true', ['true'])",
        "atexit": "import atexit, os\natexit.register(lambda: os._exit(0))\nraise SystemExit(1)",
        "print pass": "print('passed')\nimport sys\nsys.stdout.flush()\nimport os\nos._exit(0)",
        "forge result fds": "import os\nfor fd in range(3, 256):\n    try:\n        os.write(fd, b'started\\n' + b'0' * 32 "
                            "+ b'\\n')\n    except OSError:\n        pass\nos._exit(0)",
        "read secret fd": "import os\nfound = b''\nfor fd in range(3, 256):\n    try:\n"
                          "        found += os.read(fd, 64)\n    except OSError:\n        pass\n"
                          "for fd in range(3, 256):\n    try:\n        os.lseek(fd, 0, 0)\n"
                          "        os.write(fd, b'started\\n' + found + b'\\n')\n"
                          "    except OSError:\n        pass\nos._exit(0)",
        "runner module": "import sys\nm = sys.modules['__main__']\nm.REFUSED = frozenset()\nm.end = lambda c: None",
        "equal to all": "class Always(int):\n    def __eq__(self, other):\n        return True\nreturn Always(0)",
        "equal via type": "return type('A', (), {'__eq__': lambda s, o: True})()",
        "tracer skips asserts": "import sys\ndef t(f, e, a):\n    if f.f_code.co_name == 'check' and e == 'line':\n"
                                "        f.f_lineno = f.f_code.co_firstlineno + 3\n    return t\nsys.settrace(t)",
        "rebind check": "import threading, time\ng = globals()\ndef swap():\n    while 'check' not in g:\n"
                        "        time.sleep(0.001)\n    g['check'] = lambda c: None\n"
                        "threading.Thread(target=swap, daemon=True).start()",
        "patch assert helpers": "import builtins\nbuiltins.AssertionError = type('E', (Exception,), {})",
        "frames": "import sys\nf = sys._getframe(1)\nf.f_globals['__builtins__']",
        "gc": "import gc\ngc.get_objects()",
        "memory of self": "open('/proc/self/mem', 'rb')",
    }


def surviving(marker: str) -> list[str]:
    """Command lines of host processes that carry ``marker``."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                line = f.read().decode(errors="replace")
        except OSError:
            continue
        if marker in line and str(os.getpid()) != pid:
            found.append(line)
    return found


def test_no_attack_escapes_or_passes(host):
    named = attacks(host)
    started = time.monotonic()
    metrics, records = humaneval.score([PROBLEM], [[body(code) for code in named.values()]], [1], SETTINGS)
    took = time.monotonic() - started
    time.sleep(2.5)  # what a surviving daemon would do by now
    by_name = dict(zip(named, records, strict=True))
    passed = {name: r["status"] for name, r in by_name.items() if r["status"] == "passed"}
    assert passed == {}, passed
    assert metrics["humaneval/pass@1"] == 0.0
    leaks = {name: r["detail"] for name, r in by_name.items() if SECRET in r["detail"] or "root:x:0" in r["detail"]}
    assert leaks == {}, leaks
    assert sorted(p.name for p in host["outside"].iterdir()) == []
    assert not os.path.exists(f"/usr/rankmix-{CANARY}")
    for s in host["sockets"]:
        with pytest.raises(BlockingIOError):
            s.accept()
    assert surviving(CANARY) == []
    assert took < len(named) * (SETTINGS.timeout_s + 1) / SETTINGS.workers + 10
    slow = {name: r["seconds"] for name, r in by_name.items() if r["seconds"] > SETTINGS.timeout_s + 2}
    assert slow == {}, slow


def test_flagged_attacks_are_reported(host):
    named = attacks(host)
    _, records = humaneval.score([PROBLEM], [[body(named[n]) for n in ("equal to all", "posix._exit", "gc")]],
                                 [1], SETTINGS)
    assert [bool(r["suspicious"]) for r in records] == [True, True, True]
    assert records[0]["status"] == "suspicious"  # its check finished, but it may not count
