"""The papers' analysis figures, drawn from saved run artefacts (never by training): ``results/<id>/`` gets
``figure.png``, ``figure.csv`` (the numbers behind it, long format ``panel, series, x, y``) and ``caption.md``
(scale, runs used, the paper's claim and what our runs show).

Artefacts read: the run JSONs of a table (``results/<table>/runs/*.json``), and from a run's folder
(``runs/<table>/<run>/``) its routing statistics (``routing_stats.json``, ``routing_stats_train.jsonl``) or its
adapter checkpoint (``checkpoints/last.ckpt``). A missing run names the table and the make target that makes it.

CLI: ``python -m rankmix.figures build <id>... | all``, ``list``, ``index`` (writes ``results/README.md``).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rankmix.data.files import atomic_open
from rankmix.errors import RankmixError
from rankmix.results import read_json

REPO = Path(__file__).resolve().parents[2]


class FigureError(RankmixError):
    pass


@dataclass
class Drawn:
    figure: object          # a matplotlib Figure
    rows: list[dict]        # {panel, series, x, y}
    runs: list[str]         # "<table>/<run>" used
    finding: str            # one sentence: what our runs show, with numbers
    scale: str | None = None  # for figures not drawn from table runs (the kernel benchmark)


@dataclass
class Figure:
    id: str
    title: str
    claim: str              # the paper's claim, one sentence
    draw: Callable[[Sources], Drawn]


class Sources:
    """Finished runs of the tables, and their run folders."""

    def __init__(self, results_dir: Path, runs_dir: Path):
        self.results_dir, self.runs_dir = Path(results_dir), Path(runs_dir)

    def runs(self, table: str, need: tuple[str, ...] = ()) -> dict[str, dict]:
        found = {}
        for p in sorted((self.results_dir / table / "runs").glob("*.json")):
            r = read_json(p)
            if r and r.get("status") == "ok":
                found[p.stem] = r
        missing = [k for k in need if k not in found]
        if missing or not found:
            what = f"run {missing[0]!r}" if missing else "runs"
            raise FigureError(f"table {table}: no finished {what} under {self.results_dir / table / 'runs'}; "
                              f"run `make reproduce-table-{table}` first")
        return found

    def run_file(self, table: str, key: str, name: str) -> Path:
        path = self.runs_dir / table / key / name
        if not path.is_file():
            raise FigureError(f"run {table}/{key}: {path} not found; it is written by the run itself "
                              f"(`make reproduce-table-{table} ARGS=rerun=true` to make it here)")
        return path


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _scale(runs: dict[str, dict]) -> str:
    return "+".join(sorted({r["run"]["scale"] for r in runs.values()}))


# -- SMoRA -------------------------------------------------------------------------------------------
def _sorted_relative_load(stats: dict) -> list[float]:
    """Each routed layer's per-rank load divided by its mean and sorted, heaviest first; averaged over layers."""
    import numpy as np

    loads = [np.asarray(s["load"], dtype=float) for s in stats.values()]
    return [float(v) for v in np.mean([np.sort(v / v.mean())[::-1] for v in loads if v.mean() > 0], axis=0)]


def smora_fig5(src: Sources) -> Drawn:
    table, arms = "smora-fig5", ("balanced", "unbalanced")
    runs = src.runs(table, arms)
    plt = _plt()
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


def smora_fig7(src: Sources) -> Drawn:
    table = "smora-fig7"
    runs = src.runs(table)
    series: dict[str, list[tuple[int, float]]] = {}
    for r in runs.values():
        m = r["config"]["method"]
        name, k = ("SMoRA-64-k", m["k"]) if m["name"] == "smora" else ("LoRA (r = k)", m["r"])
        series.setdefault(name, []).append((int(k), r["metrics"]["test/average"]))
    plt = _plt()
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


def smora_fig9(src: Sources) -> Drawn:
    table = "smora-1"
    runs = {k: r for k, r in src.runs(table).items() if r["config"]["table"].get("match", {}).get("method")}
    names = sorted(runs, key=lambda k: runs[k]["params"]["trainable"])
    labels = [runs[k]["config"]["table"]["match"]["method"] for k in names]
    kinds = {"trainable": "trainable (total adapter)", "activated_per_token": "activated per token",
             "router": "router"}
    plt = _plt()
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


def _restore(src: Sources, table: str, key: str, run: dict):
    """The trained model of a run, rebuilt from its config, tokenizer and adapter checkpoint, and its data."""
    import torch
    from hydra.utils import instantiate
    from omegaconf import OmegaConf
    from transformers import AutoTokenizer

    from rankmix.adapters import inject
    from rankmix.backbones import build_backbone

    cfg = OmegaConf.create(run["config"])
    tokenizer = AutoTokenizer.from_pretrained(src.run_file(table, key, "tokenizer/tokenizer_config.json").parent)
    model = build_backbone(cfg.backbone, tokenizer)
    inject(model, OmegaConf.to_container(cfg.method, resolve=True))
    state = torch.load(src.run_file(table, key, "checkpoints/last.ckpt"), map_location="cpu", weights_only=True)
    model.load_state_dict({k.removeprefix("model."): v for k, v in state["state_dict"].items()}, strict=False)
    dm = instantiate(cfg.task.datamodule, cache_dir=str(src.runs_dir / ".figure-cache"))
    dm.prepare_data()
    dm.set_tokenizer(tokenizer)
    dm.setup()
    return model.eval(), dm


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
    model, dm = _restore(src, table, key, run)
    routed = adapter_layers(model)[layer]
    by_task: dict[tuple[str, str], list[dict]] = {}
    for ex in dm.examples["test"]:
        by_task.setdefault((ex["domain"], ex["task"]), []).append(ex)
    tasks = sorted(by_task)
    dist = []
    with torch.no_grad():
        for t in tasks:
            routed.reset_routing_stats()
            batch = dm._collate_train(by_task[t])
            with adapter_context(model, attention_mask=batch["attention_mask"]):
                model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            load = np.asarray(routed.routing_stats()["load"], dtype=float)
            dist.append(load / load.sum())
    dist = np.stack(dist)
    unit = dist / np.linalg.norm(dist, axis=1, keepdims=True)
    sim = unit @ unit.T
    plt = _plt()
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


def _bench_file(src: Sources, prefix: str, make: str) -> Path:
    files = sorted((src.results_dir / "bench").glob(f"{prefix}-*.csv"))
    if not files:
        raise FigureError(f"no {prefix} benchmark under {src.results_dir / 'bench'}; run `make {make}` first")
    return next((f for f in files if not f.stem.endswith("-cpu")), files[0])  # a GPU's when there is one


def smora_fig6(src: Sources) -> Drawn:
    """Kernel benchmark (``make bench-kernels``): time and transient memory of each variant of the sparse path;
    end-to-end benchmark (``make bench-e2e``): time to the first generated token and its peak memory per variant."""
    path, e2e_path = _bench_file(src, "kernels", "bench-kernels"), _bench_file(src, "e2e", "bench-e2e")
    bench, e2e = list(csv.DictReader(open(path))), list(csv.DictReader(open(e2e_path)))
    shapes = list(dict.fromkeys((r["T"], r["d_in"], r["d_out"]) for r in bench))
    variants = list(dict.fromkeys(r["variant"] for r in bench))
    plt = _plt()
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


def smora_fig2b(src: Sources) -> Drawn:
    import torch

    table, layer = "smora-fig2a", "model.model.layers.0.self_attn.q_proj"
    runs = src.runs(table)
    order = sorted(runs, key=lambda k: -runs[k]["config"]["method"]["rank_partition"])
    plt = _plt()
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


# -- MoSLoRA ------------------------------------------------------------------------------------------
def moslora_fig4(src: Sources) -> Drawn:
    table = "moslora-fig4"
    runs = src.runs(table)
    series: dict[str, list[tuple[float, float]]] = {}
    for r in runs.values():
        frac = r["config"]["task"]["datamodule"]["source"].get("train_fraction", 1.0)
        series.setdefault(r["config"]["method"]["name"], []).append((100 * frac, r["metrics"]["test/average"]))
    plt = _plt()
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


# -- Routing functions ---------------------------------------------------------------------------------
PAIR_LABEL = {"none": "LoRA (no routing)", "proj": "LoRA + x_t(x_v)^T x_v"}


def _routing_pair(src: Sources, table: str = "routing-4") -> tuple[dict[str, dict], dict[str, str]]:
    """Tab. 4's COCO runs with LoRA r 64 without and with x_t(x_v)^T x_v, found by their method: (runs, fn → key)."""
    runs = src.runs(table)
    return runs, {fn: _method_run(src, table, runs, "routing", base="lora", r=64, fn=fn) for fn in PAIR_LABEL}


def _method_run(src: Sources, table: str, runs: dict[str, dict], name: str, **want) -> str:
    """The key of the first of ``table``'s finished ``runs`` whose method has ``name`` and the options ``want``."""
    for key, run in sorted(runs.items()):
        m = run["config"]["method"]
        if m.get("name") == name and all(m.get(k) == v for k, v in want.items()):
            return key
    what = ", ".join(f"{k}={v}" for k, v in want.items())
    raise FigureError(f"table {table}: no finished {name} run with {what} under {src.results_dir / table / 'runs'}; "
                      f"run `make reproduce-table-{table}` first")


FUNCTION_WORDS = {"a", "an", "the", "at", "is", "are", "and", "of", "on", "in", "with", "to", "its", "it", "by"}


def _trained_adapters(src: Sources, table: str, key: str) -> dict:
    """The adapter tensors of a run's last checkpoint, keyed by their names in the adapted language model."""
    import torch

    state = torch.load(src.run_file(table, key, "checkpoints/last.ckpt"), map_location="cpu", weights_only=True)
    return {k.split(".", 2)[2]: v for k, v in state["state_dict"].items() if k.startswith("model.lm.")}


def routing_figb8(src: Sources) -> Drawn:
    import torch

    table = "routing-4"
    _, keys = _routing_pair(src, table)
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), layout="constrained", sharey=True)
    rows, means = [], {}
    for fn, key in keys.items():
        init = torch.load(src.run_file(table, key, "adapter_init.pt"), map_location="cpu")
        final = _trained_adapters(src, table, key)
        layers = sorted({k.rsplit(".lora_", 1)[0] for k in final if ".lora_A." in k},
                        key=lambda n: int(n.split(".h.")[1].split(".")[0]))
        for part, ax in zip(("Q", "V"), axes, strict=True):
            ratios = []
            for layer in layers:
                da = (final[f"{layer}.lora_A.weight"] - init[f"{layer}.lora_A.weight"]).float().chunk(2)
                db = (final[f"{layer}.lora_B.weight"] - init[f"{layer}.lora_B.weight"]).float().chunk(2)
                i = 0 if part == "Q" else 1
                ratios.append(float(da[i].norm() / db[i].norm().clamp_min(1e-12)))
            ax.plot(range(len(ratios)), ratios, marker="o", label=PAIR_LABEL[fn])
            ax.set(title=f"LoRA on the {'query' if part == 'Q' else 'value'} mapping", xlabel="GPT-2 layer",
                   xticks=range(len(ratios)))
            rows += [{"panel": part, "series": fn, "x": i, "y": y} for i, y in enumerate(ratios)]
            means[(fn, part)] = sum(ratios) / len(ratios)
    axes[0].set_ylabel("‖ΔW_down‖_F / ‖ΔW_up‖_F")
    axes[1].legend()
    finding = "; ".join(f"{part}: mean ratio {means[('proj', part)]:.2f} with routing vs "
                        f"{means[('none', part)]:.2f} without" for part in ("Q", "V"))
    return Drawn(fig, rows, [f"{table}/{k}" for k in keys.values()], finding + ".")


def _restore_captioner(src: Sources, table: str, key: str, run: dict):
    """A captioning run's trained model (frozen ViT, warm-started LM from the cache, its adapters) and its data."""
    import tempfile

    from omegaconf import OmegaConf

    from rankmix.modules.captioning import build_captioning

    with tempfile.TemporaryDirectory() as tmp:  # the word-level tokenizer is rebuilt from the same texts
        try:
            module, dm, _, lm = build_captioning(OmegaConf.create(run["config"]), Path(tmp), cached_only=True)
        except RankmixError as e:
            raise FigureError(f"run {table}/{key}: {e}; `make reproduce-table-{table} ARGS=rerun=true` makes it") from None
    lm.load_state_dict(_trained_adapters(src, table, key), strict=False)
    dm.setup()
    return module.model.eval(), module.tokenizer, dm


def routing_fig4(src: Sources) -> Drawn:
    import torch

    from rankmix.adapters import adapter_context
    from rankmix.modules.vision_prefix import visual_features

    table = "routing-4"
    runs, keys = _routing_pair(src, table)
    plt = _plt()
    fig, axes = plt.subplots(2, 1, figsize=(10, 5.2), layout="constrained", sharex=True, sharey=True)
    rows, words, focus = [], None, {}
    for ax, (fn, key) in zip(axes, keys.items(), strict=True):
        model, tokenizer, dm = _restore_captioner(src, table, key, runs[key])
        example = dm.examples["test"][0]
        caption = example["references"][0]
        ids = torch.tensor([dm.encode(caption)])
        pixels = dm.pixels[example["image"]][None]
        model.lm.set_attn_implementation("eager")
        with torch.no_grad():
            cls, x_r = visual_features(model.vision, pixels, model.x_r)
            embeds = torch.cat([cls[:, None], model.lm.get_input_embeddings()(ids)], dim=1)
            with adapter_context(model.lm, x_r=x_r):
                att = model.lm(inputs_embeds=embeds, output_attentions=True).attentions[-1][0]  # (heads, L, L)
        n = att.shape[-1]
        # attention each token receives, averaged over heads and over the later positions that can see it
        received = [float(att[:, j:, j].mean()) for j in range(n)]
        words = ["IMAGE", *tokenizer.convert_ids_to_tokens(ids[0].tolist())]
        ax.bar(range(n), received, color="tab:orange" if key.endswith("proj") else "tab:blue")
        ax.set(title=PAIR_LABEL[fn], ylabel="mean attention")
        rows += [{"panel": fn, "series": w, "x": j, "y": y} for j, (w, y) in enumerate(zip(words, received, strict=True))]
        content = [y for w, y in zip(words[1:], received[1:], strict=True) if w.isalpha() and w not in FUNCTION_WORDS]
        focus[fn] = (received[0], sum(content) / sum(received[1:]))
    axes[-1].set_xticks(range(len(words)), words, rotation=60, ha="right")
    (img_r, content_r), (img_n, content_n) = focus["proj"], focus["none"]
    finding = (f"on the first test image's first reference caption, the content words (all but articles, "
               f"prepositions, 'is', 'and' and end-of-text) get {100 * content_r:.0f}% of the attention on the caption "
               f"with routing vs {100 * content_n:.0f}% without; the image prefix gets {img_r:.3f} vs {img_n:.3f}")
    return Drawn(fig, rows, [f"{table}/{k}" for k in keys.values()], finding + ".")


# -- Omni-SMoLA ----------------------------------------------------------------------------------------
SV_THRESHOLDS = (0.01, 0.1, 1.0, 5.0, 10.0)  # % of the largest singular value (App. A.2)


def smola_fig3(src: Sources) -> Drawn:
    import torch

    table, ranks = "smola-a1", (384, 1536)
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), layout="constrained", sharey=True)
    rows, used, found, runs = [], [], {}, src.runs(table)
    for ax, r in zip(axes, ranks, strict=True):
        key = _method_run(src, table, runs, "lora", r=r)
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


def smola_fig4(src: Sources) -> Drawn:
    import numpy as np

    table, experts = "smola-a1", 48
    key = _method_run(src, table, src.runs(table), "smola", variant="o", num_experts=experts)
    stats = json.loads(src.run_file(table, key, "routing_stats.json").read_text())
    layers = sorted(stats)
    blocks = ("text", "vision", "mm")
    plt = _plt()
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


FIGURES = {f.id: f for f in (
    Figure("smora-fig2b", "SMoRA Fig. 2b: rank-wise similarity of [A, B^T] by expert granularity",
           "Coarse experts give a block-diagonal similarity, rank-1 experts a sharp main diagonal (§1.3).", smora_fig2b),
    Figure("smora-fig4", "SMoRA Fig. 4: routing distribution per task and task-task similarity",
           "Tasks of one cluster route to similar ranks, tasks of different clusters to different ones (§3, Fig. 4).",
           smora_fig4),
    Figure("smora-fig5", "SMoRA Fig. 5: per-rank load and MaxVio, balancing on and off",
           "With the balancing bias MaxVio falls to 1.23 from 5.71 without it, and the score rises by 0.34% (§3).", smora_fig5),
    Figure("smora-fig6", "SMoRA Fig. 6: time and memory of the sparse rank path per implementation",
           "indexed_matmul balances time and memory better than a for-loop over experts (slow) and an einsum "
           "over per-token matrices (memory-hungry) (§3, Fig. 6).",
           smora_fig6),
    Figure("smora-fig7", "SMoRA Fig. 7: score vs activated ranks, SMoRA-64-k vs LoRA-k",
           "For SMoRA the best performance is reached with 8 activated ranks (App. A).", smora_fig7),
    Figure("smora-fig9", "SMoRA Fig. 9: parameters per method (total, activated, router)",
           "SMoRA has LoRA-64's ranks and activates 8 of them per token, with an additional router (§3).", smora_fig9),
    Figure("moslora-fig4", "MoSLoRA Fig. 4: score vs fraction of training samples",
           "MoSLoRA trained on 50% of the samples scores 83.6, 1.8 above LoRA on 100% (§4.1).", moslora_fig4),
    Figure("smola-fig3", "Omni-SMoLA Fig. 3 (App. A.2): singular values of LoRA's W_out·W_in above thresholds",
           "For LoRA of rank 1536 only about 78 (5%) and 185 (12%) singular values exceed 5% and 1% of the largest: "
           "higher ranks add little (App. A.2).", smola_fig3),
    Figure("smola-fig4", "Omni-SMoLA Fig. 4 (App. B): ΦΦᵀ of SMoLA_O^48's routing matrices per modality",
           "Text experts' ΦΦᵀ is further from the identity (less specialisation); early vision and multimodal "
           "layers are closest to it (App. B).", smola_fig4),
    Figure("routing-figb8", "Routing Fig. B8: ‖ΔW_down‖ / ‖ΔW_up‖ per GPT-2 layer, with and without routing",
           "With the routing function the down-projection changes more than the up-projection during training "
           "(App. B, COCO, LoRA r 64).", routing_figb8),
    Figure("routing-fig4", "Routing Fig. 4: last-layer attention over a caption, with and without routing",
           "With x_t(x_v)^T x_v the model attends more to the content words and less to uninformative ones (§4.4).",
           routing_fig4),
)}


def build_figure(fid: str, results_dir: Path, runs_dir: Path) -> Path:
    if fid not in FIGURES:
        raise FigureError(f"unknown figure {fid!r}; available: {', '.join(FIGURES)}")
    spec = FIGURES[fid]
    src = Sources(results_dir, runs_dir)
    drawn = spec.draw(src)
    out = Path(results_dir) / fid
    out.mkdir(parents=True, exist_ok=True)
    drawn.figure.suptitle(spec.title, fontsize=11)
    drawn.figure.savefig(out / ".figure.png.tmp", format="png", dpi=110)
    (out / ".figure.png.tmp").replace(out / "figure.png")
    _plt().close(drawn.figure)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["panel", "series", "x", "y"])
    writer.writeheader()
    writer.writerows(drawn.rows)
    with atomic_open(out / "figure.csv") as f:
        f.write(buf.getvalue())
    tables = sorted({r.split("/")[0] for r in drawn.runs} - {"bench"})
    scales = drawn.scale or "+".join(sorted({_scale(src.runs(t)) for t in tables}))
    caption = [f"# {spec.title}", "", f"Scale: {scales}. Runs: {', '.join(f'`{r}`' for r in drawn.runs)}.", "",
               f"Paper's claim: {spec.claim}", "", f"Our runs: {drawn.finding}", ""]
    with atomic_open(out / "caption.md") as f:
        f.write("\n".join(caption))
    return out / "figure.png"


def write_index(results_dir: Path) -> Path:
    """``results/README.md``: every table and figure with its status."""
    from rankmix.tables import experiment_tables, stale_runs, table_status

    results_dir = Path(results_dir)
    lines = ["# Results", "", "Generated by `python -m rankmix.figures index`. Tables: `make reproduce-table-<id>`; "
             "figures: `make reproduce-figure-<id>`. A table's runs that predate their row's current config (an "
             "edited setting since they ran) are counted as such: `make reproduce-table-<id>` runs them again.", "",
             "## Tables", "", "| table | status |", "|---|---|"]
    for tid in sorted(experiment_tables()):
        name = f"[{tid}]({tid}/table.md)" if (results_dir / tid / "table.md").is_file() else tid
        stale = stale_runs(tid, results_dir)
        lines.append(f"| {name} | {table_status(tid, results_dir)}"
                     + (f"; {len(stale)} predate the current config" if stale else "") + " |")
    lines += ["", "## Figures", "", "| figure | status |", "|---|---|"]
    for fid, spec in FIGURES.items():
        cap = results_dir / fid / "caption.md"
        if cap.is_file():
            scale = cap.read_text().split("Scale: ", 1)[1].split(".", 1)[0]
            lines.append(f"| [{fid}]({fid}/figure.png) — {spec.title} | built ({scale}); [caption]({fid}/caption.md) |")
        else:
            lines.append(f"| {fid} — {spec.title} | not built |")
    with atomic_open(results_dir / "README.md") as f:
        f.write("\n".join(lines) + "\n")
    return results_dir / "README.md"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m rankmix.figures", description=__doc__.split("\n\n")[0])
    p.add_argument("--results-dir", default=str(REPO / "results"))
    p.add_argument("--runs-dir", default=str(REPO / "runs"))
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="draw figures: ids, or all")
    b.add_argument("ids", nargs="+")
    sub.add_parser("list", help="the figures and the tables they read")
    sub.add_parser("index", help="write results/README.md")
    args = p.parse_args(argv)
    if args.cmd == "list":
        for fid, spec in FIGURES.items():
            print(f"{fid:14s} {spec.title}")
        return 0
    if args.cmd == "index":
        print(f"rankmix: index: {write_index(Path(args.results_dir))}")
        return 0
    ids = list(FIGURES) if args.ids == ["all"] else args.ids
    failed = 0
    for fid in ids:
        try:
            print(f"rankmix: figure: {build_figure(fid, Path(args.results_dir), Path(args.runs_dir))}")
        except FigureError as e:
            print(f"rankmix: error: {e}", file=sys.stderr)
            failed += 1
    write_index(Path(args.results_dir))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
