"""``make gpu-check`` (``python -m rankmix.kernels.gpu_check``): what a lent GPU is for, as one command of at most
8 minutes on one H100, every part in its own time box.

Each part is a subprocess stopped at its time box (``PARTS``, seconds; together under ``BUDGET``). A part that
runs out of time keeps what it measured in its report, which then says so. The parts:

1. ``kernel-tests``: ``tests/test_kernels.py`` compiled on the GPU (not interpreted), gradients included,
   against autograd of the float64 reference → ``kernel-tests-<gpu>.{md,csv}`` (and the pytest log);
2. ``bench-kernels``: ``make bench-kernels`` at Llama-2-7B layer shapes with its targets (speed-ups over
   eager and compiled masked dense, the naive gather and the for-loop; LoRA-64; share of HBM bandwidth)
   → ``kernels-<gpu>.{md,csv}``;
3. ``bench-e2e``: ``make bench-e2e``, time to the first token and peak memory per SMoRA backend
   → ``e2e-<gpu>.{md,csv}``;
4. ``train-step``: one training step of each LLM table family's row (``LLM_TABLES``) on the rehearsal's
   stand-ins at the real widths (``make rehearse WIDTH=full``: 2 layers), at the row's precision (bf16-mixed)
   and settings: tokens/s, step time and peak memory beside the row's projected memory
   → ``train-step-<gpu>.{md,csv}``.

``gpu-check-<gpu>.md`` lists the parts with their status, time and reports. ``--dry`` (``make gpu-check DRY=1``,
part of ``make test``) runs the same parts on the CPU: the kernel tests of values and gradients in Triton's interpreter, the
benchmarks at their small CPU shapes, one family's row on stand-ins at reduced width, with the boxes ``DRY``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rankmix.locations import SOURCE

PARTS = {"kernel-tests": 100, "bench-kernels": 150, "bench-e2e": 40, "train-step": 170}  # seconds on one GPU
DRY = {"kernel-tests": 150, "bench-kernels": 120, "bench-e2e": 120, "train-step": 420}   # on 2 busy CPU cores
BUDGET = 8 * 60
# One table per LLM family: its rehearsal row (``--rows family``) is the family's paper method on its backbone.
LLM_TABLES = {"SMoRA FLAN": "smora-1", "SMoRA multi-domain": "smora-2", "SMoRA code": "smora-4",
              "MoSLoRA commonsense": "moslora-1", "LLaVA": "moslora-5"}
# The kernel tests' share on the CPU (both gates, k = 1, k < r, k = r, with gradients): make test runs them all.
DRY_TESTS = "test_values_and_gradients"
DRY_NEW_TOKENS = 4   # --dry's train-step: what the row's validation and test generate (the step is what is timed)
OUTCOME = re.compile(r"(tests/\S+::\S+)\s+(PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)"
                     r"|(PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)\s+(tests/\S+::\S+)")


def timed(cmd: list[str], box: float, log: Path, env: dict | None = None) -> tuple[int | None, float]:
    """Run ``cmd`` in its own process group with its output in ``log``; stop the group at ``box`` seconds.
    Returns (exit status, or None when stopped at the box; seconds)."""
    t0 = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, cwd=SOURCE, stdout=f, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, **(env or {})})
        try:
            return proc.wait(timeout=max(box, 1)), time.perf_counter() - t0
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            return None, time.perf_counter() - t0


def stopped_note(md: Path, box: float) -> None:
    """Say at the end of the report ``md`` that its part ran out of time (what is above was measured)."""
    text = md.read_text() if md.is_file() else f"# {md.stem}\n\nNothing was measured.\n"
    md.write_text(text + f"\n**Stopped at the time box ({box:.0f} s)**: the rows above are what was measured "
                  "before it; the rest was not run.\n")


def device_tag() -> str:
    """The file-name tag of this machine's device (as ``make bench-kernels`` names its reports): the GPU's
    name in lower case with dashes, or ``cpu``."""
    import torch

    return torch.cuda.get_device_name(0).lower().replace(" ", "-") if torch.cuda.is_available() else "cpu"


def kernel_tests(out: Path, tag: str, box: float, dry: bool, work: Path, jobs: int) -> dict:
    log = out / f"kernel-tests-{tag}.log"
    cmd = [sys.executable, "-m", "pytest", "tests/test_kernels.py", "-m", "triton_interpreter", "-v",
           "-p", "no:cacheprovider", "-n", str(jobs), *(["-k", DRY_TESTS] if dry else [])]
    rc, seconds = timed(cmd, box, log)
    found = {}
    for m in OUTCOME.finditer(log.read_text(errors="replace")):
        test, outcome = (m.group(1), m.group(2)) if m.group(1) else (m.group(4), m.group(3))
        found[test] = outcome
    with open(out / f"kernel-tests-{tag}.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["test", "outcome"])
        w.writerows(sorted(found.items()))
    counts = {o: list(found.values()).count(o) for o in sorted(set(found.values()))}
    how = "in Triton's CPU interpreter" if tag == "cpu" else "compiled for this GPU"
    lines = [f"# SMoRA kernel tests on {tag}", "", f"`{' '.join(cmd[2:])}`: the Triton kernels {how}, outputs "
             "and the gradients of x, A, B and the router against autograd of the float64 reference; "
             f"{', '.join(f'{n} {o.lower()}' for o, n in counts.items()) or 'no test reported'} in {seconds:.0f} s "
             f"(exit status {rc}). The pytest output: `{log.name}`.", ""]
    failed = [t for t, o in found.items() if o in ("FAILED", "ERROR")]
    lines += ["## Failed", ""] + [f"- `{t}`" for t in failed] if failed else []
    md = out / f"kernel-tests-{tag}.md"
    md.write_text("\n".join(lines) + "\n")
    return {"rc": 1 if failed and rc == 0 else rc, "seconds": seconds, "reports": [md, md.with_suffix(".csv")]}


def bench_kernels(out: Path, tag: str, box: float, dry: bool, work: Path, jobs: int) -> dict:
    cmd = [sys.executable, "-m", "rankmix.kernels.bench", "--out", str(out), *(["--quick"] if dry else [])]
    rc, seconds = timed(cmd, box, work / "bench-kernels.log")
    return {"rc": rc, "seconds": seconds, "reports": [out / f"kernels-{tag}.md", out / f"kernels-{tag}.csv"],
            "log": work / "bench-kernels.log"}


def bench_e2e(out: Path, tag: str, box: float, dry: bool, work: Path, jobs: int) -> dict:
    cmd = [sys.executable, "-m", "rankmix.kernels.bench_e2e", "--out", str(out),
           *(["--n", "2", "--warmup", "1"] if dry else ["--n", "30"]), f"paths.cache_dir={work / 'cache'}"]
    rc, seconds = timed(cmd, box, work / "bench-e2e.log")
    return {"rc": rc, "seconds": seconds, "reports": [out / f"e2e-{tag}.md", out / f"e2e-{tag}.csv"],
            "log": work / "bench-e2e.log"}


def train_step(out: Path, tag: str, box: float, dry: bool, work: Path, jobs: int) -> dict:
    """The families' rows one after another (each rehearsal call adds its row to the report), until the box."""
    deadline, t0 = time.perf_counter() + box, time.perf_counter()
    families = list(LLM_TABLES)[:1] if dry else list(LLM_TABLES)
    done, rc = {}, 0
    for family in families:
        left = deadline - time.perf_counter()
        if left < 5:
            rc = None
            break
        steps = work / "steps" / f"{LLM_TABLES[family]}.json"
        cmd = [sys.executable, "-m", "rankmix.rehearsal", "--rows", "family", "--tables", LLM_TABLES[family],
               "--width", "reduced" if dry else "full", "--steps", "1", "--examples", "2", "--timeout", str(int(left)),
               "--out", str(work / "rehearse.md"),
               "--override", "++callbacks.step_cost._target_=rankmix.callbacks.StepCost",
               "--override", f"++callbacks.step_cost.path={steps}",
               # on the CPU the row's validation and test would generate up to its 150 new tokens with a 32k
               # vocabulary, minutes the training step it measures does not need (make test rehearses that length)
               *(["--override", f"++task.datamodule.max_new_tokens={DRY_NEW_TOKENS}"] if dry else [])]
        status, _ = timed(cmd, left, work / f"train-step-{LLM_TABLES[family]}.log")
        rc = status if status is None or rc == 0 else rc
        done[family] = steps
        if status is None:
            break
    rows = json.loads((work / "rehearse.json").read_text()) if (work / "rehearse.json").is_file() else []
    md = write_train_steps(rows, done, families, out, tag, dry)
    return {"rc": rc, "seconds": time.perf_counter() - t0, "reports": [md, md.with_suffix(".csv")]}


def write_train_steps(rows: list[dict], steps: dict[str, Path], families: list[str], out: Path, tag: str,
                      dry: bool) -> Path:
    """``train-step-<tag>.{md,csv}``: per family, its row's step cost beside its projection."""
    table = []
    for family in LLM_TABLES:
        row = next((r for r in rows if r["table"] == LLM_TABLES[family]), None)
        res = (row or {}).get("result") or {}
        cost = json.loads(steps[family].read_text()) if family in steps and steps[family].is_file() else []
        seconds = statistics.median(s["seconds"] for s in cost) if cost else None
        tokens = round(statistics.median(s["tokens"] for s in cost)) if cost else None
        peaks = [s["peak_mb"] for s in cost if s["peak_mb"] is not None]
        fallback = (((res.get("run") or {}).get("train") or {}).get("cpu_fallback") or {}).get("trainer.precision")
        precision = f"{fallback[0]} (CPU: {fallback[1]})" if fallback else (res.get("settings") or {}).get("precision")
        status = res.get("status") or ("not run: time box" if family in families else "not run: --dry runs one family")
        table.append({"family": family, "table": LLM_TABLES[family], "row": (row or {}).get("experiment", ""),
                      "status": status, "error": res.get("error", ""),
                      "precision": precision or "",
                      "checkpointing": (res.get("settings") or {}).get("checkpointing", ""),
                      "step_s": round(seconds, 3) if seconds else "", "tokens_per_step": tokens or "",
                      "tokens_per_s": round(tokens / seconds) if seconds and tokens else "",
                      "peak_mb": max(peaks) if peaks else "",
                      "projected_gib": round(res["projection"]["memory_gib"], 1)
                      if (res.get("projection") or {}).get("memory_gib") is not None else ""})
    out.mkdir(parents=True, exist_ok=True)
    with open(out / f"train-step-{tag}.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(table[0]))
        w.writeheader()
        w.writerows(table)
    width = "reduced widths" if dry else "the real widths"
    lines = [f"# One training step per LLM table family on {tag}", "",
             f"Each family's rehearsal row (`make rehearse ROWS=family`, stand-ins with 2 layers at {width}, "
             "random weights, real-layout data) for one optimizer step at the row's own settings. Step time, "
             "tokens (attention-mask ones) and peak memory of the training batch are from "
             "`rankmix.callbacks.StepCost` (the first step: warm-up included); the projection is the row's "
             "estimate for the real model, all layers, at its full cutoff (`rankmix.rehearsal.projection`), so "
             "it bounds the stand-in's peak from above; scale it by the layers to compare."
             + (" Peak memory: CUDA only." if tag == "cpu" else ""), "",
             "| family | row | status | precision | checkpointing | step s | tokens/step | tokens/s | peak MB "
             "| projected GiB/GPU |", "|---|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['family']} | {r['row'].rsplit('/', 1)[-1]} | {r['status']} | {r['precision']} "
              f"| {r['checkpointing']} | {r['step_s']} "
              f"| {r['tokens_per_step']} | {r['tokens_per_s']} | {r['peak_mb']} | {r['projected_gib']} |"
              for r in table]
    failed = [r for r in table if r["error"]]
    if failed:
        lines += ["", "## Failed rows", ""] + [f"- {r['family']} `{r['row']}`: {r['error']}" for r in failed]
    md = out / f"train-step-{tag}.md"
    md.write_text("\n".join(lines) + "\n")
    return md


RUNNERS = {"kernel-tests": kernel_tests, "bench-kernels": bench_kernels, "bench-e2e": bench_e2e,
           "train-step": train_step}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dry", action="store_true", help="every part on the CPU: interpreter, small shapes, reduced width")
    ap.add_argument("--out", type=Path, help="the reports' folder (default results/bench; --dry: .cache/gpu-check)")
    ap.add_argument("--parts", nargs="*", choices=list(RUNNERS), default=list(RUNNERS))
    ap.add_argument("--scale-boxes", type=float, default=1.0, help="multiply every time box (a slower machine)")
    a = ap.parse_args(argv)
    import torch

    if not a.dry and not torch.cuda.is_available():
        raise SystemExit("rankmix gpu-check: no CUDA GPU here; `make gpu-check DRY=1` runs its parts on the CPU")
    a.out = a.out or SOURCE / (".cache/gpu-check" if a.dry else "results/bench")
    boxes = {k: v * a.scale_boxes for k, v in (DRY if a.dry else PARTS).items()}
    tag, jobs = device_tag(), 0 if a.dry else min(8, os.cpu_count() or 1)
    a.out.mkdir(parents=True, exist_ok=True)
    summary = []
    with tempfile.TemporaryDirectory(prefix="rankmix-gpu-check-") as tmp:
        for name in a.parts:
            print(f"rankmix gpu-check: {name} (time box {boxes[name]:.0f} s)", flush=True)
            res = RUNNERS[name](a.out, tag, boxes[name], a.dry, Path(tmp), jobs)
            if res["rc"] is None:
                stopped_note(res["reports"][0], boxes[name])
            status = "stopped at the time box" if res["rc"] is None else ("pass" if res["rc"] == 0 else "fail")
            if status == "fail" and res.get("log"):   # the benchmarks' own output, for the summary
                tail = res["log"].read_text(errors="replace").strip().splitlines()[-3:]
                status += ": " + " / ".join(tail)[:300].replace("|", "\\|")
            summary.append((name, status, res["seconds"], boxes[name], res["reports"]))
            print(f"rankmix gpu-check: {name}: {status} ({res['seconds']:.0f} s)", flush=True)
    lines = [f"# gpu-check on {tag}" + (" (--dry: CPU, interpreter, small shapes)" if a.dry else ""), "",
             f"`make gpu-check{' DRY=1' if a.dry else ''}` at {time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC; "
             f"{sum(s[2] for s in summary):.0f} s in all.", "",
             "| part | status | s | time box s | reports |", "|---|---|---|---|---|"]
    lines += [f"| {n} | {st} | {s:.0f} | {b:.0f} | {', '.join(f'`{p.name}`' for p in reps if p.is_file())} |"
              for n, st, s, b, reps in summary]
    md = a.out / f"gpu-check-{tag}.md"
    md.write_text("\n".join(lines) + "\n")
    print(md.read_text())
    return 0 if all(st == "pass" for _, st, *_ in summary) else 1


if __name__ == "__main__":
    raise SystemExit(main())
