"""The sandbox for model-written code: reference solutions pass, empty and wrong ones fail, only a finished check
counts, the environment is minimal, and without bubblewrap nothing runs (tests/test_sandbox_adversarial.py holds
the attacks)."""

import os
import subprocess

import pytest

from rankmix.benchmarks import humaneval, isolation, sandbox, suspicious
from rankmix.benchmarks.sandbox import SandboxSettings, SandboxUnavailable, run_program, run_programs

SETTINGS = SandboxSettings(timeout_s=4.0, memory_mb=1024)
PROBLEM = {"task_id": "T/0", "prompt": "def add_one(x):\n    \"\"\"x plus one.\"\"\"\n", "entry_point": "add_one",
           "test": "def check(candidate):\n    assert candidate(1) == 2\n    assert candidate(-1) == 0\n"}


def test_bubblewrap_isolates_here():
    assert sandbox.isolation_problem() is None
    record = sandbox.settings_record(SETTINGS)
    assert record["isolated"] is True and record["seccomp"] is True


def test_humaneval_canonical_solutions_all_pass_and_pass_completions_none():
    problems = humaneval.load_problems()
    settings = SandboxSettings(timeout_s=10.0, memory_mb=1024, workers=max(2, 2 * (os.cpu_count() or 1)))
    right, right_records = humaneval.score(problems, [[p["canonical_solution"]] for p in problems], [1], settings)
    assert right == {"humaneval/pass@1": 100.0, "humaneval/suspicious": 0.0}, [
        r for r in right_records if r["status"] != "passed"]
    empty, records = humaneval.score(problems, [["    pass\n"] for _ in problems], [1], settings)
    assert empty == {"humaneval/pass@1": 0.0, "humaneval/suspicious": 0.0}
    assert {r["status"] for r in records} == {"failed"}


def test_right_wrong_and_raising_programs():
    bodies = {"    return x + 1\n": "passed", "    return x\n": "failed", "    raise ValueError\n": "failed",
              "    return None\n": "failed", "": "failed"}
    outcomes = run_programs([humaneval.program(PROBLEM, b) for b in bodies], SETTINGS)
    assert [o.status for o in outcomes] == list(bodies.values()), outcomes


def test_exit_status_and_printed_text_never_count():
    for program in ("import os\nos._exit(0)", "import posix\nposix._exit(0)", "raise SystemExit(0)",
                    "print('started')\nprint('passed')\nimport os\nos._exit(0)",
                    "import os\nfor fd in range(3, 64):\n    try:\n        os.write(fd, b'started\\npassed\\n')\n"
                    "    except OSError:\n        pass\nos._exit(0)"):
        outcome = run_program(program, SETTINGS)
        assert outcome.status == "failed", (program, outcome)


def test_the_working_folder_is_writable_private_and_fresh():
    first = run_program("import os\nopen('mine.txt', 'w').write('x')\nopen('/tmp/t', 'w').write('y')\n"
                        "assert sorted(os.listdir('.')) == ['mine.txt', 'program.py'], os.listdir('.')", SETTINGS)
    again = run_program("import os\nassert not os.path.exists('mine.txt') and not os.path.exists('/tmp/t')", SETTINGS)
    assert first.passed, first
    assert again.passed, again


def test_the_environment_is_minimal_and_the_user_is_not_root(monkeypatch):
    monkeypatch.setenv("RANKMIX_SECRET", "token")
    outcome = run_program("import os\nassert 'RANKMIX_SECRET' not in os.environ\n"
                          "assert os.environ['HOME'] == os.getcwd() == '/sandbox'\n"
                          "assert os.getuid() == 65534 and os.getgid() == 65534\n"
                          "status = open('/proc/self/status').read()\n"
                          "assert 'CapEff:\\t0000000000000000' in status and 'CapBnd:\\t0000000000000000' in status\n"
                          "assert 'Seccomp:\\t2' in status\n"
                          "assert all(int(p) < 10 for p in os.listdir('/proc') if p.isdigit())", SETTINGS)
    assert outcome.passed, outcome


def test_the_libraries_of_the_environment_import():
    assert run_program("import numpy, pandas\nassert numpy.arange(3).sum() == 3", SETTINGS).passed


def test_without_bubblewrap_nothing_runs_unless_allowed(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no bwrap on it
    sandbox.isolation_problem.cache_clear()
    started = []
    real_popen = subprocess.Popen
    monkeypatch.setattr(subprocess, "Popen", lambda *a, **k: started.append(a) or real_popen(*a, **k))
    try:
        with pytest.raises(SandboxUnavailable) as refused:
            run_programs(["pass"], SETTINGS)
        message = str(refused.value)
        assert "\n" not in message and "bubblewrap" in message and "allow_unisolated=true" in message
        assert started == []  # refused before any program ran
        allowed = SandboxSettings(timeout_s=4.0, allow_unisolated=True)
        assert run_program("x = 1", allowed).passed
        assert run_program("import os\nos._exit(0)", allowed).status == "failed"  # the secret still decides
        assert sandbox.settings_record(allowed)["isolated"] is False
    finally:
        sandbox.isolation_problem.cache_clear()


def test_a_tab2_evaluation_refuses_before_training(monkeypatch, tmp_path):
    from rankmix.modules import benchmark_lm

    monkeypatch.setattr(isolation, "missing_tool", lambda: "bubblewrap is not installed (`apt-get install bubblewrap`)")
    sandbox.isolation_problem.cache_clear()
    monkeypatch.setattr(benchmark_lm.CausalLMModule, "__init__", lambda self, *a, **k: None)
    try:
        with pytest.raises(SandboxUnavailable, match="bubblewrap is not installed"):
            benchmark_lm.BenchmarkLMModule(None, None, {}, benchmarks={"humaneval": {}}, sandbox={},
                                           prompt_template="{inputs}", out_dir=str(tmp_path))
    finally:
        sandbox.isolation_problem.cache_clear()


def test_flagged_completions_are_suspicious_not_passed():
    cheat = "    class Always:\n        def __eq__(self, other):\n            return True\n    return Always()\n"
    metrics, records = humaneval.score([PROBLEM], [["    return x + 1\n", cheat]], [1], SETTINGS)
    assert [r["status"] for r in records] == ["passed", "suspicious"]
    assert records[1]["suspicious"] == ["comparison override: __eq__"]
    assert metrics == {"humaneval/pass@1": 50.0, "humaneval/suspicious": 1.0}
    assert suspicious.flags("    return sorted(x)\n") == []


def test_unknown_settings_are_refused():
    with pytest.raises(Exception, match="task.sandbox.timeout"):
        SandboxSettings.from_config({"timeout": 3})


def test_the_table_marks_unisolated_and_suspicious_runs():
    from rankmix.tables import sandbox_notes

    runs = [{"run": {"key": "a"}, "metrics": {"test/humaneval/suspicious": 2.0},
             "evaluation": {"sandbox": {"isolated": False}}},
            {"run": {"key": "b"}, "metrics": {"test/humaneval/suspicious": 0.0},
             "evaluation": {"sandbox": {"isolated": True}}}]
    notes = "\n".join(sandbox_notes(runs))
    assert "`a`: model-written code ran WITHOUT isolation" in notes and "`a`: suspicious samples" in notes
    assert "humaneval 2" in notes and "`b`" not in notes
