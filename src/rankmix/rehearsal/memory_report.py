"""The rehearsal report's memory sections: per row the projected GiB per GPU and its parts, the arithmetic where a
row does not fit on an 80 GiB card, the measurements behind the activations, and where a GPU saves differently."""

from __future__ import annotations

from rankmix.rehearsal.projection import (
    CARDS_GIB,
    LOGIT_BYTES,
    NF4_DQ_BITS,
    OPTIMIZER_BYTES,
    fmt_fits,
    fmt_gib,
)

METHOD = (
    "Memory per GPU = weights + optimizer + activations + logits, for one GPU holding the whole model (DDP) at the "
    "row's micro batch × full cutoff. Weights: frozen parameters in the backbone's dtype (a 4-bit base's decoder-layer "
    f"linear weights at {NF4_DQ_BITS:.3f} bits, NF4 with double quantisation). Optimizer: {OPTIMIZER_BYTES} bytes per "
    "trainable parameter (fp32 weight, gradient, AdamW's two moments). Logits: micro batch × cutoff × vocabulary × "
    f"{LOGIT_BYTES} bytes (fp32 for the loss and its gradient). Activations are measured on this machine "
    "(`rankmix.rehearsal.memory`): a one- and a two-layer model of each trained part at its real width, with the "
    "row's method injected, precision (autocast), SDPA attention and checkpointing, runs one training-mode forward "
    "pass at micro batch 1; every tensor autograd saves for backward is caught by "
    "`torch.autograd.graph.saved_tensors_hooks` and counted once per storage (parameters and buffers left out). Two "
    "layers minus one is a layer, one minus that the fixed part; each is fitted as bytes per token plus a constant "
    "through two lengths and checked at a third (column `check`: measured over predicted), then scaled to the row's "
    "micro batch × cutoff (a vision tower: per image) and by depth. Without checkpointing: depth × layer; with it: "
    "depth × what a checkpointed layer keeps (its inputs) + one layer's recompute peak (one layer's saved bytes). "
    "The measurements are in `results/rehearse/activation-bytes/` (one JSON per architecture and settings).")

GPU_DIFFERENCES = [
    "Attention: the CPU's SDPA flash kernel, measured here, keeps the output and an fp32 log-sum-exp per head, as "
    "CUDA's flash and memory-efficient backends do; no s × s matrix is kept (the `check` column: 1.000 means the "
    "bytes grow linearly with the length). CUDA's math backend, taken only where the others cannot run, would keep one.",
    "Widths: the fp32 copies measured (RMSNorm's and LayerNorm's upcasts, the log-sum-exp) come from the model code "
    "and the kernel's contract, and are the same on a GPU; CPU and CUDA autocast cast a few ops differently (their "
    "fp32 lists differ), so single tensors may be saved at another width there.",
    "Not counted: the backward pass's transient buffers (the gradients of one layer in flight), the allocator's "
    "fragmentation and the CUDA context (about 0.5 GiB). The projection is what a step keeps, not a bound on a "
    "GPU's peak, which is higher by those; a checkpointed row already counts one layer's recompute. `make gpu-check` "
    "compares a real GPU's peak with the projection.",
    "The 4-bit base is measured in fp16 (bitsandbytes needs CUDA): its dequantised weights are transient in the "
    "matmul, so the saved activations are the unquantised layer's.",
]


def _row_line(r) -> str:
    p = r.result.get("projection") or {}
    m = p["memory"]
    return (f"| {r.table} | {r.experiment.rsplit('/', 1)[-1]} | {p['micro_batch']} × {p['seq']} "
            f"| {p['checkpointing']} | {p['precision']}{', 4-bit' if p.get('quantized') else ''} "
            f"| {fmt_gib(m['weights'])} | {fmt_gib(m['optimizer'])} | {fmt_gib(m['activations'])} "
            f"| {fmt_gib(m['logits'])} | **{fmt_gib(p['memory_gib'])}** | {fmt_fits(p)} |")


def _too_big(r) -> list[str]:
    """The arithmetic of a row over the largest card, and the micro batch (with accumulation, the global batch
    kept) that fits."""
    p = r.result["projection"]
    m, micro, card = p["memory"], p["micro_batch"], CARDS_GIB[0]
    per = (m["activations"] + m["logits"]) / micro
    fits = int((card - m["weights"] - m["optimizer"]) // per) if per else micro
    change = (f"micro batch {fits} with accumulation × {micro / fits:g} (same global batch): "
              f"{m['weights'] + m['optimizer'] + fits * per:.1f} GiB" if fits >= 1 else
              "FSDP (trainer=fsdp) to shard the weights and optimizer states")
    return [f"- {r.table} `{r.experiment}`: {fmt_gib(m['weights'])} + {fmt_gib(m['optimizer'])} + "
            f"{micro} × {per:.2f} = {p['memory_gib']:.1f} GiB > {card}; smallest change: {change}"]


def _measurement_line(m: dict) -> str:
    def fit(f):
        return "—" if f is None else f"{f[0]:,.0f} + {f[1] / 2**20:,.1f} MiB"

    return (f"| {m['hub']} | {m['method']} | {m['dtype']} | {m['precision']} | {m['checkpointing']} "
            f"| {fit(m['layer'])} | {fit(m['kept'])} | {fit(m['fixed'])} | {m['unit']} "
            f"| {'/'.join(str(u) for u in m['units'])} | {m['check']:.3f} | {m['depth']} |")


def memory_sections(rows) -> list[str]:
    """The ``## Memory projection`` section of the report for ``rows`` (those with a memory projection)."""
    projected = [r for r in rows if (r.result.get("projection") or {}).get("memory")]
    if not projected:
        return []
    lines = ["", "## Memory projection", "", METHOD, "",
             "| table | row | micro batch × length | checkpointing | precision | weights | optimizer | activations "
             "| logits | GiB/GPU | fits (GiB) |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    lines += [_row_line(r) for r in projected]
    over = [r for r in projected if CARDS_GIB[0] not in r.result["projection"]["fits"]]
    lines += ["", f"Rows over {CARDS_GIB[0]} GiB with the paper's settings: "
              + ("none." if not over else f"{len(over)}:"), *[x for r in over for x in _too_big(r)]]
    seen, measured = set(), []
    for r in projected:
        for m in r.result["projection"]["measured"]:
            k = (m["hub"], m["method"], m["dtype"], m["precision"], m["checkpointing"])
            if k not in seen:
                seen.add(k)
                measured.append(m)
    lines += ["", "### Measurements (bytes saved for backward, per unit + constant)", "",
              "| architecture | method | dtype | precision | checkpointing | layer | kept (checkpointed layer) "
              "| fixed | unit | measured at | check | depth |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    lines += [_measurement_line(m) for m in measured]
    lines += ["", "### Where a GPU saves differently", ""] + [f"- {d}" for d in GPU_DIFFERENCES]
    return lines
