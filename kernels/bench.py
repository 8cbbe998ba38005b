"""Benchmark of SMoRA's sparse rank path: ``make bench-kernels`` (``python -m rankmix.kernels.bench``).

Forward and backward timed separately for each variant of the adapter path (the frozen base GEMM excluded):
Triton kernels, eager PyTorch masked dense, ``torch.compile`` of it, the naive gather (A[idx], B[:, idx]
materialised, index_add backward, as the official code), a for-loop over rank-experts, and plain LoRA-64 /
LoRA-8 as speed references. On a GPU: Llama-2-7B layer shapes (d = 4096, and 11008 for the MLP),
T ∈ {512, 4096, 16384}, r = 64, k = 8, bf16, CUDA-event medians after warm-up, transient peak memory and
achieved bandwidth (ideal traffic / time) against the GPU's HBM bandwidth. Without a GPU it says so and times the
CPU variants at small shapes. Writes ``results/bench/kernels-<device>.csv`` and ``.md`` after each shape (a run
stopped early keeps the shapes it finished); ratios are from this one run.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from rankmix.kernels import reference, smora_triton
from rankmix.locations import SOURCE

TARGETS = [  # (other variant, minimum speed-up of triton over it in fwd+bwd); lora_r = plain LoRA of rank r
    ("eager_dense", 3.0), ("compiled_dense", 1.3), ("naive_gather", 8.0), ("for_loop", 20.0), ("lora_r", 1 / 1.15)]
HBM_SHARE = 0.75  # target: the triton variant's achieved fwd and bwd bandwidth as a share of the GPU's HBM bandwidth


def hbm_gbps() -> float:
    """This GPU's peak memory bandwidth in GB/s: double data rate × memory clock × bus width."""
    props = torch.cuda.get_device_properties(0)
    return 2 * props.memory_clock_rate * 1e3 * props.memory_bus_width / 8 / 1e9


def for_loop(x, A, B, W, bias, k, p, gate, scale):
    """Mixtral-style loop over rank-experts: select tokens, compute, index_add (one host sync per expert)."""
    idx, gates = reference.route(x @ W.T, bias, k, gate)
    out = torch.zeros(x.shape[0], B.shape[0], device=x.device, dtype=x.dtype)
    for e in range(W.shape[0]):
        tok, slot = torch.where(idx == e)
        if tok.numel():
            ranks = slice(e * p, (e + 1) * p)
            h = (x[tok] @ A[ranks].T) * (gates[tok, slot] * scale).unsqueeze(-1)
            out = out.index_add(0, tok, h @ B[:, ranks].T)
    return out


def variants(k: int, p: int, gate: str, scale: float, gpu: bool) -> dict[str, Callable]:
    """The adapter path's variants; ``lora_r``/``lora_k`` are plain LoRA with all r or only k ranks."""
    dense = lambda x, A, B, W, b: reference.smora_dense(x, A, B, W, b, k, p, gate, scale)[0]  # noqa: E731
    out = {
        "eager_dense": dense,
        "naive_gather": lambda x, A, B, W, b: reference.smora_gather(x, A, B, W, b, k, p, gate, scale)[0],
        "for_loop": lambda x, A, B, W, b: for_loop(x, A, B, W, b, k, p, gate, scale),
        "lora_r": lambda x, A, B, W, b: (x @ A.T) @ B.T * scale,
        "lora_k": lambda x, A, B, W, b: (x @ A[:k].T) @ B[:, :k].T * scale,
    }
    if gpu:
        out = {"triton": lambda x, A, B, W, b: smora_triton.SMoRATriton.apply(x, A, B, W, b, k, p, gate == "sigmoid",
                                                                            scale)[0],
               **out, "compiled_dense": torch.compile(dense)}
    return out


def _timer(gpu: bool):
    if gpu:
        def run(fn):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            return start.elapsed_time(end) * 1e3  # µs
    else:
        def run(fn):
            t0 = time.perf_counter()
            fn()
            return (time.perf_counter() - t0) * 1e6
    return run


def measure(fn: Callable, tensors: list[torch.Tensor], bias, gpu: bool, warmup: int, iters: int) -> dict:
    timer = _timer(gpu)
    leaves = [t.detach().requires_grad_(True) for t in tensors]
    dy = torch.randn(tensors[0].shape[0], tensors[2].shape[0], device=tensors[0].device, dtype=tensors[0].dtype)
    fwd, bwd = [], []
    for i in range(warmup + iters):
        for t in leaves:
            t.grad = None
        holder: dict = {}
        tf = timer(lambda h=holder: h.setdefault("y", fn(*leaves, bias)))
        tb = timer(lambda h=holder: h["y"].backward(dy))
        if i >= warmup:
            fwd.append(tf)
            bwd.append(tb)
    peak = None
    if gpu:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn(*leaves, bias).backward(dy)
        torch.cuda.synchronize()
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    return {"fwd_us": statistics.median(fwd), "bwd_us": statistics.median(bwd), "peak_transient_mb": peak}


def shapes(gpu: bool, quick: bool) -> list[dict]:
    if not gpu:
        return [{"T": T, "d_in": 128, "d_out": 128, "r": 16, "k": 4} for T in ((64,) if quick else (64, 512))]
    out = [{"T": T, "d_in": 4096, "d_out": 4096, "r": 64, "k": 8} for T in (512, 4096, 16384)]
    out += [{"T": 4096, "d_in": 4096, "d_out": 11008, "r": 64, "k": 8}, {"T": 4096, "d_in": 11008, "d_out": 4096, "r": 64, "k": 8}]
    return out[:1] if quick else out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gate", choices=["sigmoid", "softmax"], default="sigmoid")
    ap.add_argument("--quick", action="store_true", help="one shape, few iterations (a smoke run)")
    ap.add_argument("--out", type=Path, default=SOURCE / "results" / "bench")
    a = ap.parse_args(argv)
    gpu = torch.cuda.is_available() and smora_triton.triton is not None
    device = torch.cuda.get_device_name(0) if gpu else "cpu"
    if not gpu:
        print("rankmix bench: no GPU present (or no Triton): timing the CPU variants at small shapes only; "
              "the Triton kernels and the targets need a CUDA GPU")
    dtype = torch.bfloat16 if gpu else torch.float32
    warmup, iters = (2, 3) if a.quick else ((10, 50) if gpu else (2, 5))
    rows = []
    for s in shapes(gpu, a.quick):
        g = torch.Generator().manual_seed(0)
        dev = "cuda" if gpu else "cpu"
        x = torch.randn(s["T"], s["d_in"], generator=g).to(dev, dtype)
        A = (torch.randn(s["r"], s["d_in"], generator=g) / s["d_in"] ** 0.5).to(dev, dtype)
        B = (torch.randn(s["d_out"], s["r"], generator=g) / s["r"] ** 0.5).to(dev, dtype)
        W = (torch.randn(s["r"], s["d_in"], generator=g) / s["d_in"] ** 0.5).to(dev, dtype)
        bias = torch.zeros(s["r"], device=dev, dtype=dtype)
        elem = torch.finfo(dtype).bits // 8
        ideal = {"fwd": (s["T"] * (s["d_in"] + s["d_out"])) * elem,  # read x, write y
                 "bwd": (s["T"] * (2 * s["d_in"] + s["d_out"])) * elem}  # read dy and x, write dx
        for name, fn in variants(s["k"], 1, a.gate, 2.0, gpu).items():
            m = measure(fn, [x, A, B, W], bias, gpu, warmup, iters)
            rows.append({"device": device, "dtype": str(dtype).replace("torch.", ""), **s, "gate": a.gate,
                         "variant": name, **{k: round(v, 2) if v is not None else "" for k, v in m.items()},
                         "fwd_GBps": round(ideal["fwd"] / m["fwd_us"] / 1e3, 1),
                         "bwd_GBps": round(ideal["bwd"] / m["bwd_us"] / 1e3, 1)})
            print(f"T={s['T']:>6} d={s['d_in']}->{s['d_out']} {name:<15} fwd {m['fwd_us']:10.1f} µs  "
                  f"bwd {m['bwd_us']:10.1f} µs  peak {m['peak_transient_mb'] or '-'} MB", flush=True)
        write(rows, a.out, device, gpu)
    return 0


def write_csv(rows: list[dict], out: Path, prefix: str, device: str, gpu: bool) -> Path:
    """``rows`` into ``out/<prefix>-<device>.csv`` (``cpu`` without a GPU); returns the ``.md`` path beside it."""
    out.mkdir(parents=True, exist_ok=True)
    tag = device.lower().replace(" ", "-") if gpu else "cpu"
    with open(out / f"{prefix}-{tag}.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return out / f"{prefix}-{tag}.md"


def write(rows: list[dict], out: Path, device: str, gpu: bool) -> None:
    md = write_csv(rows, out, "kernels", device, gpu)
    lines = [f"# SMoRA sparse-path benchmark on {device}", "",
             "Adapter path only (base GEMM excluded); medians; ratios from this one run." if gpu else
             "No GPU was present: CPU variants at small shapes only (the Triton kernels need CUDA).", "",
             "| T | d_in→d_out | variant | fwd µs | bwd µs | peak MB | fwd GB/s | bwd GB/s |", "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['T']} | {r['d_in']}→{r['d_out']} | {r['variant']} | {r['fwd_us']} | {r['bwd_us']} | "
              f"{r['peak_transient_mb']} | {r['fwd_GBps']} | {r['bwd_GBps']} |" for r in rows]
    if gpu:
        lines += ["", "## Targets (fwd+bwd, triton vs each variant)", "", "| shape | vs | speed-up | target | met |",
                  "|---|---|---|---|---|"]
        for key in sorted({(r["T"], r["d_in"], r["d_out"]) for r in rows}):
            same = {r["variant"]: r for r in rows if (r["T"], r["d_in"], r["d_out"]) == key}
            t = same["triton"]["fwd_us"] + same["triton"]["bwd_us"]
            for other, target in TARGETS:
                ratio = (same[other]["fwd_us"] + same[other]["bwd_us"]) / t
                lines.append(f"| {key[0]}×{key[1]}→{key[2]} | {other} | {ratio:.2f}× | ≥{target:.2f}× | "
                             f"{'yes' if ratio >= target else 'no'} |")
            for part in ("fwd", "bwd"):
                share = same["triton"][f"{part}_GBps"] / hbm_gbps()
                lines.append(f"| {key[0]}×{key[1]}→{key[2]} | {part} share of HBM ({hbm_gbps():.0f} GB/s) | "
                             f"{share:.0%} | ≥{HBM_SHARE:.0%} | {'yes' if share >= HBM_SHARE else 'no'} |")
    md.write_text("\n".join(lines) + "\n")
    print(f"rankmix bench: {md.with_suffix('.csv')}")


if __name__ == "__main__":
    raise SystemExit(main())
