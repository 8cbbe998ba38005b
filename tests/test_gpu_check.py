"""``make gpu-check DRY=1``: every part of the GPU run's script, on the CPU (interpreter, small shapes, stand-ins
at reduced width), so a broken gpu-check fails here and not on the day a GPU is lent."""

import csv
import subprocess
import sys
import time

import pytest

from conftest import REPO
from rankmix.kernels import gpu_check


@pytest.mark.slow
def test_dry_run_runs_every_part_and_writes_its_reports(tmp_path):
    r = subprocess.run([sys.executable, "-m", "rankmix.kernels.gpu_check", "--dry", "--out", str(tmp_path)],
                       cwd=REPO, capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    summary = (tmp_path / "gpu-check-cpu.md").read_text()
    for part in gpu_check.PARTS:
        assert f"| {part} | pass |" in summary
    tests = list(csv.DictReader(open(tmp_path / "kernel-tests-cpu.csv")))
    assert len(tests) == 6 and {t["outcome"] for t in tests} == {"PASSED"}
    assert (tmp_path / "kernels-cpu.md").is_file() and (tmp_path / "e2e-cpu.md").is_file()
    steps = list(csv.DictReader(open(tmp_path / "train-step-cpu.csv")))
    assert [s["family"] for s in steps] == list(gpu_check.LLM_TABLES)
    assert steps[0]["status"] == "pass" and float(steps[0]["step_s"]) > 0 and int(steps[0]["tokens_per_step"]) > 0
    assert float(steps[0]["projected_gib"]) > 0
    assert all(s["status"] == "not run: --dry runs one family" for s in steps[1:])


def test_make_target_runs_this_script(tmp_path):
    out = subprocess.run(["make", "-n", "gpu-check", "DRY=1"], cwd=REPO, capture_output=True, text=True).stdout
    assert "-m rankmix.kernels.gpu_check --dry" in out
    assert "--dry" not in subprocess.run(["make", "-n", "gpu-check"], cwd=REPO, capture_output=True, text=True).stdout


def test_a_part_past_its_time_box_is_stopped_and_its_report_says_so(tmp_path):
    t0 = time.perf_counter()
    rc, seconds = gpu_check.timed([sys.executable, "-c", "print('measured', flush=True); import time; time.sleep(60)"],
                                  1, tmp_path / "log")
    assert rc is None and seconds < 15 and time.perf_counter() - t0 < 15
    assert "measured" in (tmp_path / "log").read_text()
    md = tmp_path / "part.md"
    md.write_text("| row |\n|---|\n| 1 |\n")
    gpu_check.stopped_note(md, 1)
    assert md.read_text().startswith("| row |") and "Stopped at the time box (1 s)" in md.read_text()


def test_the_time_boxes_fit_eight_minutes():
    assert sum(gpu_check.PARTS.values()) <= gpu_check.BUDGET <= 8 * 60
