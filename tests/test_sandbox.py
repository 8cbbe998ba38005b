"""The sandbox for model-written code: hostile completions score as failed within their timeout, write nothing
outside their working directory, make no network connection, and never stop the evaluation."""

import socket
import time
import uuid

import pytest

from rankmix.benchmarks import humaneval, sandbox
from rankmix.benchmarks.sandbox import SandboxSettings, SandboxUnavailable, run_program, run_programs

SETTINGS = SandboxSettings(timeout_s=4.0, memory_mb=1024)
PROBLEM = {"task_id": "T/0", "prompt": "def add_one(x):\n    \"\"\"x plus one.\"\"\"\n", "entry_point": "add_one",
           "test": "def check(candidate):\n    assert candidate(1) == 2\n    assert candidate(-1) == 0\n"}


@pytest.fixture
def listener():
    """A TCP server on the host's loopback that records whether anything connected."""
    server = socket.create_server(("127.0.0.1", 0))
    server.setblocking(False)
    yield server
    server.close()


def connected(server) -> bool:
    try:
        server.accept()[0].close()
        return True
    except BlockingIOError:
        return False


def hostile(tmp_path, port):
    """(name, completion body, path it must not create) for each held-out attack."""
    outside = [tmp_path / f"escape-{uuid.uuid4().hex}" for _ in range(5)]
    return [
        ("infinite loop", "    while True:\n        pass\n", None),
        ("huge allocation", "    x = bytearray(1 << 40)\n    return len(x)\n", None),
        ("os.system", f"    import os\n    os.system('touch {outside[0]}')\n    return x + 1\n", outside[0]),
        ("write outside", f"    open('{outside[1]}', 'w').write('x')\n    return x + 1\n", outside[1]),
        ("write via ctypes", "    import ctypes\n    libc = ctypes.CDLL(None)\n"
         f"    assert libc.creat(b'{outside[2]}', 0o644) >= 0\n    return x + 1\n", outside[2]),
        ("subprocess", f"    import subprocess\n    subprocess.run(['touch', '{outside[3]}'])\n    return x + 1\n",
         outside[3]),
        ("fork bomb", "    import os\n    while True:\n        os.fork()\n", None),
        ("network", f"    import socket\n    socket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
         "    return x + 1\n", None),
        ("raw socket", f"    import socket\n    s = socket.socket()\n    s.connect(('127.0.0.1', {port}))\n"
         "    return x + 1\n", None),
        ("exit zero early", "    import os\n    os._exit(0)\n", None),  # would skip check() with status 0
        ("sys.exit zero", "    import sys\n    sys.exit(0)\n", None),
        ("kill parent", "    import os, signal\n    os.kill(os.getppid(), signal.SIGKILL)\n    return x + 1\n", None),
        ("outside via rename", f"    import os\n    open('f', 'w').write('x')\n    os.rename('f', '{outside[4]}')\n"
         "    return x + 1\n", outside[4]),
    ]


def test_hostile_completions_fail_in_time_and_leave_nothing(tmp_path, listener):
    port = listener.getsockname()[1]
    for name, body, path in hostile(tmp_path, port):
        started = time.monotonic()
        outcome = run_program(humaneval.program(PROBLEM, body), SETTINGS)
        took = time.monotonic() - started
        assert took < SETTINGS.timeout_s + 3, (name, took)
        assert outcome.status in ("failed", "timeout"), (name, outcome)
        if path is not None:
            assert not path.exists(), name
    assert not connected(listener)


def test_an_attack_does_not_stop_the_evaluation(tmp_path, listener):
    """A batch mixing attacks with correct completions: the correct ones still pass, every one gets an outcome."""
    bodies = [b for _, b, _ in hostile(tmp_path, listener.getsockname()[1])]
    good = "    return x + 1\n"
    outcomes = run_programs([humaneval.program(PROBLEM, b) for b in [good, *bodies, good]], SETTINGS)
    assert len(outcomes) == len(bodies) + 2
    assert outcomes[0].passed and outcomes[-1].passed


def test_the_working_directory_is_writable_and_fresh():
    first = run_program("open('mine.txt', 'w').write('x')\nimport os\nassert os.listdir('.') == ['tmp', 'program.py', "
                        "'mine.txt'] or sorted(os.listdir('.')) == ['mine.txt', 'program.py', 'tmp']", SETTINGS)
    again = run_program("import os\nassert not os.path.exists('mine.txt')", SETTINGS)
    assert first.passed, first
    assert again.passed, again


def test_the_environment_is_minimal(monkeypatch):
    monkeypatch.setenv("RANKMIX_SECRET", "token")
    outcome = run_program("import os\nassert 'RANKMIX_SECRET' not in os.environ\n"
                          "assert os.environ['HOME'] == os.getcwd()", SETTINGS)
    assert outcome.passed, outcome


def test_without_namespaces_it_refuses_unless_allowed(monkeypatch):
    monkeypatch.setattr(sandbox, "isolation_problem", lambda: "the `unshare` command (util-linux) is not installed")
    with pytest.raises(SandboxUnavailable, match="allow_unisolated=true"):
        run_program("pass", SETTINGS)
    allowed = SandboxSettings(timeout_s=4.0, allow_unisolated=True)
    assert run_program("pass", allowed).passed
    refused = run_program("import os\nos.system('true')", allowed)  # the audit hook still holds
    assert refused.status == "failed" and "os.system" in refused.detail


def test_unknown_settings_are_refused():
    with pytest.raises(Exception, match="task.sandbox.timeout"):
        SandboxSettings.from_config({"timeout": 3})
