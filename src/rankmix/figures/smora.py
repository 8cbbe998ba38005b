"""SMoRA's figures."""

from __future__ import annotations

import csv
import json

from rankmix.figures.artefacts import bench_file, restore
from rankmix.figures.core import Drawn, FigureError, Sources, figure, plt_module


def _sorted_relative_load(stats: dict) -> list[float]:
    """Each routed layer's per-rank load divided by its mean and sorted, heaviest first; averaged over layers."""
    import numpy as np

    loads = [np.asarray(s["load"], dtype=float) for s in stats.values()]
    return [float(v) for v in np.mean([np.sort(v / v.mean())[::-1] for v in loads if v.mean() > 0], axis=0)]


@figure("smora-fig5",
        "SMoRA Fig. 5: per-rank load and MaxVio, balancing on and off",
        "With the balancing bias MaxVio falls to 1.23 from 5.71 without it, and the score rises by 0.34% (§3).")
def smora_fig5(src: Sources) -> Drawn:
    table, arms = "smora-fig5", ("balanced", "unbalanced")
    runs = src.runs(table, arms)
    plt = plt_module()
    fig, (ax_load, ax_vio) = plt.subplots(1, 2, figsize=(12, 4.2), layout="constrained")
    rows, final = [], {}
    for arm, colour in zip(arms, ("tab:blue", "tab:red"), strict=True):
        load = _sorted_relative_load(json.loads(src.run_file(table, arm, "routing_stats.json").read_text()))
        ax_load.bar([i + (0.4 if arm == "unbalanced" else 0) for i in range(len(load))], load, width=0.4,
                    color=colour, label=arm)
        rows += [{"panel": "load", "series": arm, "x": i, "y": v} for i, v in enumerate(load)]
        epochs, vio = [], []
        for line in src.run_file(table, arm, "routing_stats_train.jsonl").read_text().splitlines():
            rec = json.loads(line)
            epochs.append(rec["epoch"])
            vio.append(sum(s["maxvio"] for s in rec["layers"].values()) / len(rec["layers"]))
        ax_vio.plot(epochs, vio, marker="o", color=colour, label=arm)
        rows += [{"panel": "maxvio", "series": arm, "x": e, "y": v} for e, v in zip(epochs, vio, strict=True)]
        final[arm] = (runs[arm]["metrics"].get("test/routing/maxvio"), runs[arm]["metrics"].get("test/average"))
    ax_load.axhline(1.0, color="grey", lw=0.8, ls="--")
    ax_load.set(title="(a) test-token load per rank, relative to the mean", xlabel="rank, heaviest first (per layer)",
                ylabel="load / mean load")
    ax_vio.set(title="(b) MaxVio during training (mean over routed layers)", xlabel="epoch", ylabel="MaxVio")
    for ax in (ax_load, ax_vio):
        ax.legend()
    (vb, sb), (vu, su) = final["balanced"], final["unbalanced"]
    finding = (f"test MaxVio {vb:.2f} with balancing vs {vu:.2f} without; average score {sb:.1f} vs {su:.1f} "
               f"({'lower' if vb < vu else 'not lower'} imbalance with balancing on).")
    return Drawn(fig, rows, [f"{table}/{a}" for a in arms], finding)


@figure("smora-fig7",
        "SMoRA Fig. 7: score vs activated ranks, SMoRA-64-k vs LoRA-k",
        "For SMoRA the best performance is reached with 8 activated ranks (App. A).")
def smora_fig7(src: Sources) -> Drawn:
    table = "smora-fig7"
    runs = src.runs(table)
    series: dict[str, list[tuple[int, float]]] = {}
    for r in runs.values():
        m = r["config"]["method"]
        name, k = ("SMoRA-64-k", m["k"]) if m["name"] == "smora" else ("LoRA (r = k)", m["r"])
        series.setdefault(name, []).append((int(k), r["metrics"]["test/average"]))
    plt = plt_module()
    fig, ax = plt.subplots(figsize=(6.5, 4.2), layout="constrained")
    rows = []
    for name, pts in sorted(series.items()):
        pts.sort()
        ax.plot([k for k, _ in pts], [v for _, v in pts], marker="o", label=name)
        rows += [{"panel": "", "series": name, "x": k, "y": v} for k, v in pts]
    ax.set_xscale("log", base=2)
    ks = sorted({k for pts in series.values() for k, _ in pts})
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.set(xlabel="activated ranks k", ylabel="average score (test)")
    ax.legend()
    best = {name: max(pts, key=lambda p: p[1]) for name, pts in series.items()}
    finding = "; ".join(f"{name}: best at k = {k} ({v:.1f})" for name, (k, v) in sorted(best.items())) + "."
    return Drawn(fig, rows, [f"{table}/{k}" for k in runs], finding)


@figure("smora-fig9",
        "SMoRA Fig. 9: parameters per method (total, activated, router)",
        "SMoRA has LoRA-64's ranks and activates 8 of them per token, with an additional router (§3).")
def smora_fig9(src: Sources) -> Drawn:
    table = "smora-1"
    runs = {k: r for k, r in src.runs(table).items() if r["config"]["table"].get("match", {}).get("method")}
    names = sorted(runs, key=lambda k: runs[k]["params"]["trainable"])
    labels = [runs[k]["config"]["table"]["match"]["method"] for k in names]
    kinds = {"trainable": "trainable (total adapter)", "activated_per_token": "activated per token",
             "router": "router"}
    plt = plt_module()
    fig, ax = plt.subplots(figsize=(10, 4.5), layout="constrained")
    rows, width = [], 0.27
    for j, (key, label) in enumerate(kinds.items()):
        values = [runs[k]["params"][key] for k in names]
        ax.bar([i + (j - 1) * width for i in range(len(names))], values, width=width, label=label)
        rows += [{"panel": "", "series": key, "x": lab, "y": v} for lab, v in zip(labels, values, strict=True)]
    ax.set_xticks(range(len(names)), labels, rotation=30, ha="right")
    ax.set_yscale("log")
    ax.set(ylabel="parameters (log scale)")
    ax.legend()
    p = {lab: runs[k]["params"] for lab, k in zip(labels, names, strict=True)}
    s = next((v for lab, v in p.items() if lab.startswith("SMoRA")), None)
    finding = (f"SMoRA-64-8 activates {s['activated_per_token'] / s['trainable']:.3f} of its {s['trainable']:,} adapter "
               f"parameters per token, router {s['router']:,}" if s else "no SMoRA row") + "."
    return Drawn(fig, rows, [f"{table}/{k}" for k in names], finding)


@figure("smora-fig4",
        "SMoRA Fig. 4: routing distribution per task and task-task similarity",
        "Tasks of one cluster route to similar ranks, tasks of different clusters to different ones (§3, Fig. 4).")
def smora_fig4(src: Sources) -> Drawn:
    import numpy as np
    import torch

    from rankmix.adapters import adapter_context, adapter_layers

    table, layer = "smora-1", "model.layers.1.mlp.down_proj"
    smora = {k: r for k, r in src.runs(table).items() if r["config"]["method"]["name"] == "smora"}
    if not smora:
        raise FigureError(f"table {table}: no finished SMoRA run; run `make reproduce-table-{table}` first")
    key = "smora_64_8" if "smora_64_8" in smora else sorted(smora)[0]
    run = smora[key]
    model, dm = restore(src, table, key, run)
    routed = adapter_layers(model)[layer]
    by_task: dict[tuple[str, str], list[dict]] = {}
    for ex in dm.examples["test"]:
        by_task.setdefault((ex["domain"], ex["task"]), []).append(ex)
    tasks = sorted(by_task)
    dist = []
    with torch.no_grad():
        for t in tasks:
            routed.reset_routing_stats()
            batch = dm.collate_train(by_task[t])
            with adapter_context(model, attention_mask=batch["attention_mask"]):
                model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            load = np.asarray(routed.routing_stats()["load"], dtype=float)
            dist.append(load / load.sum())
    dist = np.stack(dist)
    unit = dist / np.linalg.norm(dist, axis=1, keepdims=True)
    sim = unit @ unit.T
    plt = plt_module()
    fig, (ax_a, ax_b) = plt.subplots(1, 2, figsize=(14, 5.2), layout="constrained", width_ratios=(1.6, 1))
    labels = [f"{task} ({domain})" for domain, task in tasks]
    im = ax_a.imshow(dist, aspect="auto", cmap="magma")
    ax_a.set_yticks(range(len(tasks)), labels, fontsize=8)
    ax_a.set(xlabel="rank", title=f"(a) share of test tokens routed to each rank, {layer}")
    fig.colorbar(im, ax=ax_a, label="share of activations")
    im = ax_b.imshow(sim, cmap="viridis", vmin=float(sim.min()), vmax=1)
    ax_b.set_xticks(range(len(tasks)), [t for _, t in tasks], rotation=90, fontsize=8)
    ax_b.set_yticks(range(len(tasks)), [t for _, t in tasks], fontsize=8)
    ax_b.set(title="(b) cosine similarity of the tasks' routing")
    fig.colorbar(im, ax=ax_b, label="cosine similarity")
    for i in range(1, len(tasks)):  # cluster boundaries
        if tasks[i][0] != tasks[i - 1][0]:
            for ax in (ax_a,):
                ax.axhline(i - 0.5, color="white", lw=0.8)
            ax_b.axhline(i - 0.5, color="white", lw=0.8)
            ax_b.axvline(i - 0.5, color="white", lw=0.8)
    rows = [{"panel": "routing", "series": t, "x": r, "y": float(v)} for (_, t), d in zip(tasks, dist, strict=True)
            for r, v in enumerate(d)]
    rows += [{"panel": "similarity", "series": tasks[i][1], "x": tasks[j][1], "y": float(sim[i, j])}
             for i in range(len(tasks)) for j in range(len(tasks))]
    same = [sim[i, j] for i in range(len(tasks)) for j in range(len(tasks)) if i != j and tasks[i][0] == tasks[j][0]]
    other = [sim[i, j] for i in range(len(tasks)) for j in range(len(tasks)) if tasks[i][0] != tasks[j][0]]
    finding = (f"mean routing similarity {np.mean(same):.3f} within a cluster vs {np.mean(other):.3f} across clusters"
               if same else f"mean routing similarity across tasks {np.mean(other):.3f}")
    return Drawn(fig, rows, [f"{table}/{key}"], finding + f" ({layer}, {len(tasks)} tasks).")


@figure("smora-fig6",
        "SMoRA Fig. 6: time and memory of the sparse rank path per implementation",
        "indexed_matmul balances time and memory better than a for-loop over experts (slow) and an einsum over per-token matrices (memory-hungry) (§3, Fig. 6).")
def smora_fig6(src: Sources) -> Drawn:
    """Kernel benchmark (``make bench-kernels``): time and transient memory of each variant of the sparse path;
    end-to-end benchmark (``make bench-e2e``): time to the first generated token and its peak memory per variant."""
    path, e2e_path = bench_file(src, "kernels", "bench-kernels"), bench_file(src, "e2e", "bench-e2e")
    bench, e2e = list(csv.DictReader(open(path))), list(csv.DictReader(open(e2e_path)))
    shapes = list(dict.fromkeys((r["T"], r["d_in"], r["d_out"]) for r in bench))
    variants = list(dict.fromkeys(r["variant"] for r in bench))
    plt = plt_module()
    fig, ((ax_t, ax_m), (ax_e, ax_p)) = plt.subplots(2, 2, figsize=(13, 8.5), layout="constrained")
    width = 0.8 / len(variants)
    rows = []
    for j, v in enumerate(variants):
        got = {(r["T"], r["d_in"], r["d_out"]): r for r in bench if r["variant"] == v}
        times = [float(got[s]["fwd_us"]) + float(got[s]["bwd_us"]) if s in got else 0.0 for s in shapes]
        mems = [float(got[s]["peak_transient_mb"] or 0) if s in got else 0.0 for s in shapes]
        xs = [i + (j - (len(variants) - 1) / 2) * width for i in range(len(shapes))]
        ax_t.bar(xs, times, width=width, label=v)
        ax_m.bar(xs, mems, width=width, label=v)
        rows += [{"panel": "fwd+bwd_us", "series": v, "x": "x".join(s), "y": t} for s, t in zip(shapes, times, strict=True)]
        rows += [{"panel": "peak_transient_mb", "series": v, "x": "x".join(s), "y": m} for s, m in zip(shapes, mems, strict=True)]
    names = [f"T={t}\n{a}->{b}" for t, a, b in shapes]
    for ax, label in ((ax_t, "forward + backward time (µs, log)"), (ax_m, "transient peak memory (MB)")):
        ax.set_xticks(range(len(shapes)), names)
        ax.set(ylabel=label)
    ax_t.set_yscale("log")
    ax_t.legend(fontsize=8, ncol=2)
    ax_t.set_title(f"adapter path alone: {bench[0]['device']}, {bench[0]['dtype']}, r={bench[0]['r']}, k={bench[0]['k']}")
    ax_m.set_title("adapter path alone: transient memory")

    e_names = [r["variant"] for r in e2e]
    ttft = [float(r["ttft_ms_mean"]) for r in e2e]
    peaks = [float(r["peak_mb_mean"] or 0) for r in e2e]
    colours = [f"C{i}" for i in range(len(e2e))]
    ax_e.bar(range(len(e2e)), ttft, color=colours)
    ax_p.bar(range(len(e2e)), peaks, color=colours)
    ax_e.set(ylabel="time to the first token (ms, mean)",
             title=f"end to end: {e2e[0]['backbone']} ({e2e[0]['scale']}), {e2e[0]['n']} prompts, {e2e[0]['device']}")
    ax_p.set(ylabel="peak memory of that step (MB, mean)", title="end to end: peak memory")
    for ax in (ax_e, ax_p):
        ax.set_xticks(range(len(e2e)), e_names, rotation=15)
    rows += [{"panel": "e2e_ttft_ms", "series": n, "x": "", "y": t} for n, t in zip(e_names, ttft, strict=True)]
    rows += [{"panel": "e2e_peak_mb", "series": n, "x": "", "y": m} for n, m in zip(e_names, peaks, strict=True)]
    for ax, empty in ((ax_m, not any(float(r["peak_transient_mb"] or 0) for r in bench)), (ax_p, not any(peaks))):
        if empty:
            ax.text(0.5, 0.5, "memory is measured on a CUDA device only\n(this benchmark ran without one)",
                    ha="center", va="center", transform=ax.transAxes)
    last = shapes[-1]
    t = {r["variant"]: float(r["fwd_us"]) + float(r["bwd_us"]) for r in bench if (r["T"], r["d_in"], r["d_out"]) == last}
    best = min(t, key=t.get)
    e_best = e_names[ttft.index(min(ttft))]
    finding = (f"on {bench[0]['device']} at T={last[0]}, {last[1]}->{last[2]} the fastest variant of the adapter path "
               f"is {best} ({t[best]:.0f} µs fwd+bwd); " + ", ".join(f"{v} {t[v] / t[best]:.1f}x" for v in t if v != best)
               + f". End to end ({e2e[0]['device']}), the first token comes fastest with {e_best} "
               f"({min(ttft):.1f} ms); " + ", ".join(f"{n} {x / min(ttft):.1f}x" for n, x in zip(e_names, ttft, strict=True)
                                                   if n != e_best))
    return Drawn(fig, rows, [f"bench/{path.name}", f"bench/{e2e_path.name}"], finding + ".",
                 scale=f"kernel benchmark on {bench[0]['device']} ({len(shapes)} shapes); end-to-end benchmark "
                       f"on {e2e[0]['device']} ({e2e[0]['backbone']}, {e2e[0]['scale']})")


@figure("smora-fig2b",
        "SMoRA Fig. 2b: rank-wise similarity of [A, B^T] by expert granularity",
        "Coarse experts give a block-diagonal similarity, rank-1 experts a sharp main diagonal (§1.3).")
def smora_fig2b(src: Sources) -> Drawn:
    import torch

    table, layer = "smora-fig2a", "model.model.layers.0.self_attn.q_proj"
    runs = src.runs(table)
    order = sorted(runs, key=lambda k: -runs[k]["config"]["method"]["rank_partition"])
    plt = plt_module()
    fig, axes = plt.subplots(1, len(order), figsize=(3.3 * len(order), 3.6), layout="constrained")
    rows, contrast = [], {}
    for ax, key in zip(axes if len(order) > 1 else [axes], order, strict=True):
        state = torch.load(src.run_file(table, key, "checkpoints/last.ckpt"), map_location="cpu",
                           weights_only=True)["state_dict"]
        a, b = state[f"{layer}.lora_A.weight"].float(), state[f"{layer}.lora_B.weight"].float()
        m = torch.nn.functional.normalize(torch.cat([a, b.T], dim=1), dim=1)
        sim = (m @ m.T).numpy()
        size = runs[key]["config"]["method"]["rank_partition"]
        r = sim.shape[0]
        im = ax.imshow(sim, cmap="viridis", vmin=-1, vmax=1)
        ax.set(title=f"{r // size} experts x rank {size}", xlabel="rank", ylabel="rank")
        same = [[i // size == j // size and i != j for j in range(r)] for i in range(r)]
        within = [abs(sim[i][j]) for i in range(r) for j in range(r) if same[i][j]]
        across = [abs(sim[i][j]) for i in range(r) for j in range(r) if i // size != j // size]
        contrast[size] = (sum(within) / len(within) if within else float("nan"), sum(across) / len(across))
        rows += [{"panel": key, "series": f"row {i}", "x": j, "y": float(sim[i][j])} for i in range(r) for j in range(r)]
    fig.colorbar(im, ax=list(axes) if len(order) > 1 else axes, shrink=0.8, label="cosine similarity")
    finding = "; ".join(f"rank-{s} experts: mean |sim| within an expert {w:.2f}, across experts {x:.2f}"
                        for s, (w, x) in sorted(contrast.items(), reverse=True) if s > 1)
    return Drawn(fig, rows, [f"{table}/{k}" for k in order], (finding or "only rank-1 experts") + f" (layer {layer}).")
