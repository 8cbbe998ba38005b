"""``make kernels-compile`` (``python -m rankmix.kernels.compile_report``): SMoRA's Triton kernels compiled for
sm_80 (A100) and sm_90 (H100) on this machine, no GPU needed, and what every compiled configuration needs.

Both kernels (forward, gate backward) for both targets, in two parts:

- configurations: every block configuration the autotuner may choose (``smora_triton.CONFIGS``) for
  r ∈ ``RANKS`` and fp32 and bf16 inputs (fp16's tiles have bf16's bytes), at rank_partition 1 (the widest
  router: E = r), sigmoid gate, k = min(8, r): the axes that set the shared memory;
- constexprs: both gates × the (r, rank_partition, k) the tables use (``TABLE_SETTINGS``) and every r at
  rank_partition 1 and 2, fp16 inputs, in the smallest configuration.

Writes the shared memory, registers and stack (spills) of each compile to ``<out>/kernels-compile.{csv,md}``. A
configuration over its target's shared memory (``compiled.SHARED_LIMIT``) is marked pruned: the autotuner drops
it (``compiled.shared_memory_pruner``). Exits 1 when a compile fails or when every configuration of a shape is
pruned. ``--matrix representative`` compiles a covering subset (every value of every axis at least once: the
``make test`` share); ``full`` (the default) everything.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from rankmix.locations import SOURCE

RANKS = (8, 16, 32, 64, 128)
DTYPES = ("fp32", "bf16", "fp16")
CONFIG_DTYPES = ("fp32", "bf16")
GATES = ("sigmoid", "softmax")
KERNELS = ("forward", "backward")
# (r, rank_partition, k experts) of the tables' SMoRA rows: Tab. 1 and Fig. 7 (r = 64, k = 2..32 single ranks),
# Fig. 2a (16 active of 64 ranks in blocks of 2, 4, 8, 16); test_kernel_compile checks it against the configs.
TABLE_SETTINGS = ((64, 1, 2), (64, 1, 4), (64, 1, 8), (64, 1, 16), (64, 1, 32),
                  (64, 2, 8), (64, 4, 4), (64, 8, 2), (64, 16, 1))
SHAPE = {"T": 4096, "d_in": 4096, "d_out": 4096}  # Llama-2-7B's widths: divisible by 16, as the JIT specialises


def matrix(which: str = "full") -> list[dict]:
    """The compiles: one dict per (kernel, target, r, rank_partition, k, gate, dtype, configuration)."""
    from rankmix.kernels import compiled, smora_triton

    rows = []
    for kernel in KERNELS:
        for target in compiled.TARGETS:
            for r in RANKS:
                for dtype in CONFIG_DTYPES:
                    for i, _ in enumerate(smora_triton.CONFIGS):
                        rows.append({"part": "configurations", "kernel": kernel, "target": target, "r": r, "p": 1,
                                     "k": min(8, r), "gate": "sigmoid", "dtype": dtype, "config": i})
            settings = sorted(set(TABLE_SETTINGS) | {(r, p, min(8 // p, r // p)) for r in RANKS for p in (1, 2)})
            for gate in GATES:
                for r, p, k in settings:
                    rows.append({"part": "constexprs", "kernel": kernel, "target": target, "r": r, "p": p, "k": k,
                                 "gate": gate, "dtype": "fp16", "config": 0})
    return rows if which == "full" else covering(rows)


def covering(rows: list[dict]) -> list[dict]:
    """A small subset of ``rows`` in which every value of every axis (kernel × target, configuration, r,
    rank_partition 1 or > 1, k, gate, dtype) occurs at least once: greedily, the row adding most new values."""
    def values(row):
        return {("kernel", row["kernel"], row["target"]), ("config", row["config"]), ("r", row["r"]),
                ("blocks", row["p"] > 1), ("k", row["k"]), ("gate", row["gate"]), ("dtype", row["dtype"])}

    need, out = set().union(*map(values, rows)), []
    while need:
        best = max(rows, key=lambda row: len(values(row) & need))
        out.append(best)
        need -= values(best)
    return out


def launch(row: dict) -> tuple:
    """(kernel, positional arguments, constexprs) of the launch ``row`` describes, as ``smora_triton`` makes it;
    the tensors are one-element CPU stand-ins (only their dtype and alignment reach the compiler)."""
    import torch

    from rankmix.kernels import smora_triton

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[row["dtype"]]
    r, p, n_experts = row["r"], row["p"], row["r"] // row["p"]
    t = lambda dt=dtype: torch.empty(1, dtype=dt)  # noqa: E731
    f32, i32 = torch.float32, torch.int32
    meta = smora_triton._meta(r, n_experts, row["k"], p, row["gate"] == "sigmoid", dtype)
    T, d_in, d_out = SHAPE["T"], SHAPE["d_in"], SHAPE["d_out"]
    if row["kernel"] == "forward":  # x, A, B, W, bias, out, C, S, gates, act, idx, T, d_in, d_out, r, E, scale
        args = (t(), t(), t(), t(), t(f32), t(), t(f32), t(f32), t(f32), t(f32), t(i32),
                T, d_in, d_out, r, n_experts, 2.0)
        return smora_triton._fwd_kernel, args, meta
    args = (t(), t(), t(f32), t(f32), t(f32), t(i32), t(f32), t(f32), t(f32), T, d_out, r, n_experts, 2.0)
    return smora_triton._gate_bwd_kernel, args, meta  # dy, B, S, gates, act, idx, bias, dS, dL, T, d_out, r, E, scale


def compile_row(row: dict) -> dict:
    """``row`` with its compile's shared memory, registers, stack, seconds and whether it fits (or its error)."""
    from rankmix.kernels import compiled, smora_triton

    target = compiled.TARGETS[row["target"]]
    config = smora_triton.configs()[row["config"]]
    kernel, args, meta = launch(row)
    t0 = time.perf_counter()
    try:
        res = compiled.resources(compiled.compile_for(kernel, args, meta, config, target))
    except Exception as e:  # noqa: BLE001 -- a refused kernel is a reported row, and the run fails
        return {**row, "error": f"{type(e).__name__}: {e}".strip().splitlines()[-1][:300]}
    fits = res["shared"] <= compiled.SHARED_LIMIT[target.arch]
    return {**row, **res, "fits": fits, "seconds": round(time.perf_counter() - t0, 2), "error": ""}


def label(i: int) -> str:
    from rankmix.kernels import smora_triton

    c = smora_triton.CONFIGS[i]
    return f"{c['BM']}×{c['BK']}×{c['BN']} w{c['num_warps']} s{c['num_stages']}"


def problems(rows: list[dict]) -> list[str]:
    """Failed compiles, and the shapes (kernel, target, r, dtype) for which every configuration is pruned."""
    out = [f"{r['kernel']} {r['target']} r={r['r']} p={r['p']} k={r['k']} {r['gate']} {r['dtype']} "
           f"{label(r['config'])}: {r['error']}" for r in rows if r["error"]]
    from rankmix.kernels import smora_triton

    shapes: dict = {}
    for r in rows:
        if r["part"] == "configurations" and not r["error"]:
            shapes.setdefault((r["kernel"], r["target"], r["r"], r["dtype"]), []).append(r["fits"])
    out += [f"{k} {t} r={r} {d}: every configuration needs more shared memory than {t} has"
            for (k, t, r, d), fits in shapes.items() if len(fits) == len(smora_triton.CONFIGS) and not any(fits)]
    return out


def _cell(row: dict | None) -> str:
    if row is None:
        return ""
    if row["error"]:
        return "error"
    return f"{row['shared'] / 1024:.0f} KB / {row['registers']} / {row['stack']}" + ("" if row["fits"] else " ✗")


def markdown(rows: list[dict], which: str) -> str:
    import triton

    from rankmix.kernels import compiled

    limits = ", ".join(f"{t} {compiled.SHARED_LIMIT[tg.arch] // 1024} KB" for t, tg in compiled.TARGETS.items())
    lines = [
        "# SMoRA's Triton kernels compiled for sm_80 and sm_90",
        "",
        f"`make kernels-compile` (`python -m rankmix.kernels.compile_report --matrix {which}`): {len(rows)} compiles "
        f"with Triton {triton.__version__} and its ptxas {triton.knobs.nvidia.ptxas.version}, no GPU. A cell is "
        "`shared memory / registers per thread / stack "
        "bytes`: Triton's dynamic shared memory per block (compile metadata), then the cubin's registers and stack "
        "frame (spills to local memory; cuobjdump). Shared memory per block: " + limits + "; a configuration "
        "above its target's limit (✗) is pruned from the autotuning list "
        "(`rankmix.kernels.compiled.shared_memory_pruner`). Launch arguments as at Llama-2-7B widths "
        f"({SHAPE['d_in']}, divisible by 16).",
    ]
    problem_lines = problems(rows)
    if problem_lines:
        lines += ["", "## Problems", ""] + [f"- {p}" for p in problem_lines]
    part = [r for r in rows if r["part"] == "configurations"]
    index = {(r["kernel"], r["target"], r["r"], r["dtype"], r["config"]): r for r in part}
    ranks = sorted({r["r"] for r in part})
    targets = list(compiled.TARGETS)
    if part:
        lines += ["", "## Every autotuning configuration (rank_partition 1, sigmoid, k = min(8, r))"]
    for kernel in KERNELS:
        for dtype in DTYPES:
            configs = sorted({r["config"] for r in part if (r["kernel"], r["dtype"]) == (kernel, dtype)})
            if not configs:
                continue
            cols = [(t, r) for t in targets for r in ranks]
            lines += ["", f"### {kernel}, {dtype} inputs", "",
                      "| BM×BK×BN warps stages | " + " | ".join(f"{t} r={r}" for t, r in cols) + " |",
                      "|---|" + "---|" * len(cols)]
            lines += [f"| {label(c)} | " + " | ".join(_cell(index.get((kernel, t, r, dtype, c))) for t, r in cols)
                      + " |" for c in configs]
    rest = [r for r in rows if r["part"] == "constexprs"]
    if rest:
        lines += ["", "## Constexpr combinations", "",
                  "| kernel | target | gate | r | rank_partition | k experts | dtype | configuration | shared KB "
                  "| registers | stack B |", "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in rest:
            res = ("error", "", "") if r["error"] else (f"{r['shared'] / 1024:.0f}", r["registers"], r["stack"])
            lines.append(f"| {r['kernel']} | {r['target']} | {r['gate']} | {r['r']} | {r['p']} | {r['k']} | "
                         f"{r['dtype']} | {label(r['config'])} | {res[0]} | {res[1]} | {res[2]} |")
    return "\n".join(lines) + "\n"


def write(rows: list[dict], out: Path, which: str) -> Path:
    """``out/kernels-compile.csv`` (every row) and ``.md``; returns the ``.md`` path."""
    out.mkdir(parents=True, exist_ok=True)
    fields = ["part", "kernel", "target", "r", "p", "k", "gate", "dtype", "config", "BM", "BK", "BN", "num_warps",
              "num_stages", "shared", "registers", "stack", "fits", "seconds", "error"]
    from rankmix.kernels import smora_triton

    with open(out / "kernels-compile.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        w.writerows({**r, **smora_triton.CONFIGS[r["config"]]} for r in rows)
    md = out / "kernels-compile.md"
    md.write_text(markdown(rows, which))
    return md


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--matrix", choices=["full", "representative"], default="full")
    ap.add_argument("--out", type=Path, default=SOURCE / "results" / "bench")
    ap.add_argument("--jobs", type=int, default=os.cpu_count(), help="compiles side by side")
    a = ap.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise SystemExit("rankmix kernels-compile: TRITON_INTERPRET=1 replaces the kernels by the interpreter; unset it")
    rows = matrix(a.matrix)
    with ProcessPoolExecutor(max(1, a.jobs)) as pool:
        done = list(pool.map(compile_row, rows, chunksize=4))
    md = write(done, a.out, a.matrix)
    found = problems(done)
    print("\n".join(found) or f"rankmix kernels-compile: {len(done)} compiles, none refused", file=sys.stderr)
    print(f"rankmix kernels-compile: {md}")
    return 1 if found else 0


if __name__ == "__main__":
    raise SystemExit(main())
