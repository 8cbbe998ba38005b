"""MoSLoRA's figures."""

from __future__ import annotations

from rankmix.figures.core import Drawn, Sources, figure, plt_module


@figure("moslora-fig4",
        "MoSLoRA Fig. 4: score vs fraction of training samples",
        "MoSLoRA trained on 50% of the samples scores 83.6, 1.8 above LoRA on 100% (§4.1).")
def moslora_fig4(src: Sources) -> Drawn:
    table = "moslora-fig4"
    runs = src.runs(table)
    series: dict[str, list[tuple[float, float]]] = {}
    for r in runs.values():
        frac = r["config"]["task"]["datamodule"]["source"].get("train_fraction", 1.0)
        series.setdefault(r["config"]["method"]["name"], []).append((100 * frac, r["metrics"]["test/average"]))
    plt = plt_module()
    fig, ax = plt.subplots(figsize=(6.5, 4.2), layout="constrained")
    rows = []
    for name, pts in sorted(series.items()):
        pts.sort()
        ax.plot([x for x, _ in pts], [y for _, y in pts], marker="o", label={"lora": "LoRA", "moslora": "MoSLoRA"}.get(name, name))
        rows += [{"panel": "", "series": name, "x": x, "y": y} for x, y in pts]
    ax.set(xlabel="training samples used (%)", ylabel="average accuracy (test)")
    ax.legend()
    both = sorted(set(dict(series.get("lora", [])).keys()) & set(dict(series.get("moslora", [])).keys()))
    lo, mo = dict(series.get("lora", [])), dict(series.get("moslora", []))
    ahead = sum(mo[x] > lo[x] for x in both)
    half = f"; MoSLoRA on 50% {mo[50.0]:.1f} vs LoRA on 100% {lo[100.0]:.1f}" if 50.0 in mo and 100.0 in lo else ""
    return Drawn(fig, rows, [f"{table}/{k}" for k in runs], f"MoSLoRA ahead of LoRA at {ahead} of {len(both)} fractions{half}.")
