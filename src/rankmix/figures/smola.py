"""Omni-SMoLA's figures."""

from __future__ import annotations

import json

from rankmix.figures.artefacts import method_run
from rankmix.figures.core import Drawn, Sources, figure, plt_module

SV_THRESHOLDS = (0.01, 0.1, 1.0, 5.0, 10.0)  # % of the largest singular value (App. A.2)


@figure("smola-fig3",
        "Omni-SMoLA Fig. 3 (App. A.2): singular values of LoRA's W_out·W_in above thresholds",
        'For LoRA of rank 1536 only about 78 (5%) and 185 (12%) singular values exceed 5% and 1% of the largest: higher ranks add little (App. A.2).')
def smola_fig3(src: Sources) -> Drawn:
    import torch

    table, ranks = "smola-a1", (384, 1536)
    plt = plt_module()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), layout="constrained", sharey=True)
    rows, used, found, runs = [], [], {}, src.runs(table)
    for ax, r in zip(axes, ranks, strict=True):
        key = method_run(src, table, runs, "lora", r=r)
        used.append(f"{table}/{key}")
        state = torch.load(src.run_file(table, key, "checkpoints/last.ckpt"), map_location="cpu", weights_only=True)
        weights = state["state_dict"]
        layers = sorted(k[: -len(".lora_A.weight")] for k in weights if k.endswith(".lora_A.weight"))
        counts = []
        for layer in layers:
            sv = torch.linalg.svdvals(weights[f"{layer}.lora_B.weight"].double() @ weights[f"{layer}.lora_A.weight"].double())
            counts.append([int((sv > sv[0] * t / 100).sum()) for t in SV_THRESHOLDS])
            name = layer.split("encoder.", 1)[-1]
            ax.plot(range(len(SV_THRESHOLDS)), counts[-1], color="tab:blue", alpha=0.3, lw=1)
            rows += [{"panel": f"r{r}", "series": name, "x": t, "y": c} for t, c in zip(SV_THRESHOLDS, counts[-1], strict=True)]
        mean = [sum(c[i] for c in counts) / len(counts) for i in range(len(SV_THRESHOLDS))]
        ax.plot(range(len(SV_THRESHOLDS)), mean, color="tab:blue", lw=2.5, marker="o", label=f"mean of {len(layers)} layers")
        rows += [{"panel": f"r{r}", "series": "mean", "x": t, "y": y} for t, y in zip(SV_THRESHOLDS, mean, strict=True)]
        d = weights[f"{layers[0]}.lora_A.weight"].shape[1]
        ax.set(title=f"LoRA r = {r} (ΔW is {d}×{d}: rank ≤ {min(r, d)})", xlabel="threshold (% of the largest singular value)",
               xticks=range(len(SV_THRESHOLDS)), xticklabels=[f"{t:g}%" for t in SV_THRESHOLDS])
        ax.legend()
        found[r] = (mean, min(r, d))
    axes[0].set_ylabel("singular values above the threshold")
    finding = "; ".join(f"LoRA r {r}: on average {m[3]:.0f} and {m[2]:.0f} singular values of W_out·W_in exceed 5% and "
                        f"1% of the largest (of at most {cap})" for r, (m, cap) in found.items())
    return Drawn(fig, rows, used, finding + ".")


@figure("smola-fig4",
        "Omni-SMoLA Fig. 4 (App. B): ΦΦᵀ of SMoLA_O^48's routing matrices per modality",
        "Text experts' ΦΦᵀ is further from the identity (less specialisation); early vision and multimodal layers are closest to it (App. B).")
def smola_fig4(src: Sources) -> Drawn:
    import numpy as np

    table, experts = "smola-a1", 48
    key = method_run(src, table, src.runs(table), "smola", variant="o", num_experts=experts)
    stats = json.loads(src.run_file(table, key, "routing_stats.json").read_text())
    layers = sorted(stats)
    blocks = ("text", "vision", "mm")
    plt = plt_module()
    fig, axes = plt.subplots(len(blocks), len(layers), figsize=(2.6 * len(layers) + 1, 7.6), layout="constrained",
                             squeeze=False)
    rows, off, label = [], {b: [] for b in blocks}, {"mm": "multimodal"}
    for j, layer in enumerate(layers):
        short = layer.split("encoder.", 1)[-1].replace("layers.", "L").replace(".self_attn.", " ")
        for i, block in enumerate(blocks):
            gram = np.asarray(stats[layer][block]["phi_gram"])
            im = axes[i][j].imshow(gram, vmin=-1, vmax=1, cmap="RdBu_r")
            axes[i][j].set(xticks=[], yticks=[], title=short if i == 0 else "")
            if j == 0:
                axes[i][j].set_ylabel(label.get(block, block) + " experts")
            mask = ~np.eye(len(gram), dtype=bool)
            off[block].append(float(np.abs(gram[mask]).mean()))
            rows.append({"panel": block, "series": short, "x": "mean |off-diagonal|", "y": off[block][-1]})
    fig.colorbar(im, ax=axes, shrink=0.6, label="ΦΦᵀ (cosine of routing columns)")
    finding = ("mean |off-diagonal| of ΦΦᵀ (0 = identity, experts routed apart): "
               + ", ".join(f"{label.get(b, b)} {sum(v) / len(v):.3f}" for b, v in off.items())
               + f" (averaged over {len(layers)} layers); in the first layer "
               + ", ".join(f"{label.get(b, b)} {v[0]:.3f}" for b, v in off.items()))
    return Drawn(fig, rows, [f"{table}/{key}"], finding + ".")
