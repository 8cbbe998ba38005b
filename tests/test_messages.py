"""What the entry tells the user at its edges: a stopped run, a reused computation."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize(("rerun", "expected"), [
    (False, "the same command resumes it"),
    (True, "the same command without rerun=true resumes it (with rerun=true it trains from scratch)"),
])
def test_the_sigterm_line_says_how_to_resume(rerun, expected):
    code = ("import os, signal\nfrom rankmix.guards import stop_on_sigterm\n"
            f"stop_on_sigterm('k', {rerun})\n"
            "try:\n    os.kill(os.getpid(), signal.SIGTERM)\nexcept KeyboardInterrupt:\n    pass\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"rankmix: error: SIGTERM: stopping run k; its last checkpoint is kept and {expected}" in r.stderr
