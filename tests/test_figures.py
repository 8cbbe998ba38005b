"""Figures from saved run artefacts: made-up run JSONs, routing statistics and checkpoints in a temporary tree."""

import csv
import json
import re

import pytest
import torch

from rankmix.figures import FIGURES, FigureError, build_figure, main, write_index
from rankmix.results import write_json_atomic

LAYER = "model.model.layers.0.self_attn.q_proj"


def _run(tmp_path, table, key, metrics, method, params=None, task=None, match=None):
    config = {"method": method, "table": {"id": table, "match": match or {}},
              "task": task or {"datamodule": {"source": {}}}}
    write_json_atomic(tmp_path / "results" / table / "runs" / f"{key}.json",
                      {"status": "ok", "run": {"key": key, "table": table, "scale": "tiny"}, "metrics": metrics,
                       "params": params or {}, "config": config})
    d = tmp_path / "runs" / table / key
    d.mkdir(parents=True, exist_ok=True)
    return d


def _build(tmp_path, fid):
    return build_figure(fid, tmp_path / "results", tmp_path / "runs")


def _rows(png):
    return list(csv.DictReader(open(png.parent / "figure.csv")))


def test_load_balancing_figure_shows_flatter_load_with_balancing(tmp_path):
    for arm, load in (("balanced", [10, 11, 9, 10]), ("unbalanced", [30, 5, 3, 2])):
        d = _run(tmp_path, "smora-fig5", arm, {"test/routing/maxvio": 0.1 if arm == "balanced" else 2.0,
                                                  "test/average": 50.0}, {"name": "smora"})
        (d / "routing_stats.json").write_text(json.dumps({LAYER: {"load": load}}))
        lines = [{"epoch": e, "layers": {LAYER: {"maxvio": (2.0 if arm == "unbalanced" else 1.0 / (e + 1))}}}
                 for e in range(3)]
        (d / "routing_stats_train.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
    png = _build(tmp_path, "smora-fig5")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    peak = {r["series"]: float(r["y"]) for r in _rows(png) if r["panel"] == "load" and r["x"] == "0"}
    assert peak["balanced"] < peak["unbalanced"]  # the heaviest rank carries less with balancing
    caption = (png.parent / "caption.md").read_text()
    assert "Scale: tiny" in caption and "`smora-fig5/balanced`" in caption and "1.23" in caption
    assert "MaxVio 0.10 with balancing vs 2.00 without" in caption


def test_score_curves_read_the_sweep(tmp_path):
    for k, (s, lo) in {2: (60.0, 40.0), 8: (70.0, 55.0)}.items():
        _run(tmp_path, "smora-fig7", f"smora_64_{k}", {"test/average": s}, {"name": "smora", "k": k, "r": 64})
        _run(tmp_path, "smora-fig7", f"lora_{k}", {"test/average": lo}, {"name": "lora", "r": k})
    png = _build(tmp_path, "smora-fig7")
    assert {(r["series"], r["x"], r["y"]) for r in _rows(png)} >= {("SMoRA-64-k", "8", "70.0"), ("LoRA (r = k)", "2", "40.0")}
    assert "SMoRA-64-k: best at k = 8 (70.0)" in (png.parent / "caption.md").read_text()

    for frac, (lo, mo) in {0.5: (50.0, 60.0), 1.0: (55.0, 58.0)}.items():
        for name, v in (("lora", lo), ("moslora", mo)):
            _run(tmp_path, "moslora-fig4", f"{name}_{frac}", {"test/average": v}, {"name": name},
                 task={"datamodule": {"source": {"train_fraction": frac}}})
    cap = (_build(tmp_path, "moslora-fig4").parent / "caption.md").read_text()
    assert "ahead of LoRA at 2 of 2 fractions; MoSLoRA on 50% 60.0 vs LoRA on 100% 55.0" in cap


def test_parameter_figure_and_similarity_heatmaps(tmp_path):
    for key, label, p in (("lora_64", "LoRA-64", (100, 100, 0)), ("smora_64_8", "SMoRA-64-8", (140, 52, 40))):
        _run(tmp_path, "smora-1", key, {"test/average": 1.0}, {"name": key},
             params=dict(zip(("trainable", "activated_per_token", "router"), p, strict=True)), match={"method": label})
    png = _build(tmp_path, "smora-fig9")
    assert {(r["series"], r["x"], r["y"]) for r in _rows(png)} >= {("router", "SMoRA-64-8", "40")}
    assert "activates 0.371 of its 140 adapter parameters per token, router 40" in (png.parent / "caption.md").read_text()

    torch.manual_seed(0)
    for size in (4, 1):
        d = _run(tmp_path, "smora-fig2a", f"rank{size}", {"test/average": 1.0}, {"name": "smora", "rank_partition": size})
        basis = torch.randn(8 // size, 12)  # ranks of one expert share a direction: block-diagonal similarity
        a = torch.stack([basis[i // size] + 0.05 * torch.randn(12) for i in range(8)])
        (d / "checkpoints").mkdir()
        torch.save({"state_dict": {f"{LAYER}.lora_A.weight": a, f"{LAYER}.lora_B.weight": a[:, :6].T.clone()}},
                   d / "checkpoints" / "last.ckpt")
    png = _build(tmp_path, "smora-fig2b")
    found = re.search(r"rank-4 experts: mean \|sim\| within an expert ([\d.]+), across experts ([\d.]+)",
                      (png.parent / "caption.md").read_text())
    assert float(found[1]) > 0.9 and float(found[2]) < 0.5


def test_missing_runs_are_named_and_the_index_lists_status(tmp_path, capsys):
    with pytest.raises(FigureError, match=r"table smora-fig5: no finished run .balanced. .*make reproduce-table-smora-fig5"):
        _build(tmp_path, "smora-fig5")
    d = _run(tmp_path, "smora-fig5", "balanced", {}, {"name": "smora"})
    _run(tmp_path, "smora-fig5", "unbalanced", {}, {"name": "smora"})
    with pytest.raises(FigureError, match=r"run smora-fig5/balanced: .*routing_stats.json not found"):
        _build(tmp_path, "smora-fig5")
    assert d.is_dir()
    assert main(["--results-dir", str(tmp_path / "results"), "--runs-dir", str(tmp_path / "runs"),
                 "build", "smora-fig7"]) == 1
    assert "rankmix: error: table smora-fig7" in capsys.readouterr().err
    index = write_index(tmp_path / "results").read_text()
    assert "| smora-fig5 | tiny (2 runs); 2 predate the current config |" in index  # made-up runs: no such hash
    assert all(f"| {fid} — " in index for fid in FIGURES) and "not built" in index


@pytest.mark.slow
def test_routing_figure_from_a_real_run(tmp_path):
    """Fig. 4 rebuilds a trained SMoRA run from its config, tokenizer and checkpoint and routes each task's test set."""
    from conftest import run_train

    r = run_train(tmp_path, "experiment=smora-1/smora_64_8", "trainer.max_epochs=1",
                  "task.datamodule.source.n_train=6", "task.datamodule.source.n_validation=1")
    assert r.returncode == 0, r.stderr[-2000:]
    png = _build(tmp_path, "smora-fig4")
    rows = _rows(png)
    tasks = {row["series"] for row in rows if row["panel"] == "routing"}
    assert len(tasks) == 11
    for task in tasks:  # each task's routing distribution is a distribution over the 64 ranks
        shares = [float(row["y"]) for row in rows if row["panel"] == "routing" and row["series"] == task]
        assert len(shares) == 64 and abs(sum(shares) - 1) < 1e-6
    assert "within a cluster vs" in (png.parent / "caption.md").read_text()


def test_kernel_figure_reads_the_benchmark_csv(tmp_path):
    with pytest.raises(FigureError, match="make bench-kernels"):
        _build(tmp_path, "smora-fig6")
    bench = tmp_path / "results" / "bench"
    bench.mkdir(parents=True)
    head = "device,dtype,T,d_in,d_out,r,k,gate,variant,fwd_us,bwd_us,peak_transient_mb,fwd_GBps,bwd_GBps\n"
    body = "".join(f"cpu,float32,64,128,128,16,4,sigmoid,{v},{f},{b},{m},1,1\n"
                   for v, f, b, m in (("eager_dense", 10, 20, 1.5), ("for_loop", 100, 200, ""), ("lora_r", 5, 10, 0.5)))
    (bench / "kernels-cpu.csv").write_text(head + body)
    with pytest.raises(FigureError, match="make bench-e2e"):
        _build(tmp_path, "smora-fig6")
    (bench / "e2e-cpu.csv").write_text("device,backbone,scale,variant,n,ttft_ms_mean,ttft_ms_median,peak_mb_mean\n"
                                       "cpu,llama2_7b,tiny,lora_64,5,30.0,29.0,\ncpu,llama2_7b,tiny,smora_gather,5,90.0,80.0,\n")
    png = _build(tmp_path, "smora-fig6")
    rows = {(r["panel"], r["series"]): float(r["y"]) for r in _rows(png)}
    assert rows["fwd+bwd_us", "for_loop"] == 300 and rows["peak_transient_mb", "for_loop"] == 0
    assert rows["e2e_ttft_ms", "smora_gather"] == 90.0
    caption = (png.parent / "caption.md").read_text()
    assert "fastest variant of the adapter path is lora_r (15 µs fwd+bwd); eager_dense 2.0x, for_loop 20.0x" in caption
    assert "the first token comes fastest with lora_64 (30.0 ms); smora_gather 3.0x" in caption
    assert "`bench/e2e-cpu.csv`" in caption


def test_smola_figures_count_singular_values_and_draw_phi_gram(tmp_path):
    torch.manual_seed(0)
    enc = "model.bart.model.encoder.layers.{}.self_attn.q_proj"
    for r in (384, 1536):
        d = _run(tmp_path, "smola-a1", f"lora_{r}", {"test/average": 1.0}, {"name": "lora", "r": r})
        (d / "checkpoints").mkdir()
        scales = torch.tensor([10.0, 0.8, 0.2, 0.005] + [0.0] * 12)  # the singular values of B·A
        state = {}
        for i in range(2):
            q, _ = torch.linalg.qr(torch.randn(16, 16))
            state[f"{enc.format(i)}.lora_A.weight"] = (q * scales).T.contiguous()  # r x d (here 16 x 16)
            state[f"{enc.format(i)}.lora_B.weight"] = torch.eye(16)
        torch.save({"state_dict": state}, d / "checkpoints" / "last.ckpt")
    png = _build(tmp_path, "smola-fig3")
    means = {(r["panel"], r["x"]): float(r["y"]) for r in _rows(png) if r["series"] == "mean"}
    # thresholds 0.01% (0.001), 0.1% (0.01), 1% (0.1), 5% (0.5), 10% (1.0) of the largest (10)
    assert [means[("r384", x)] for x in ("0.01", "0.1", "1.0", "5.0", "10.0")] == [4, 3, 3, 2, 1]
    assert "on average 2 and 3 singular values" in (png.parent / "caption.md").read_text()

    d = _run(tmp_path, "smola-a1", "smola_o_48", {"test/average": 1.0}, {"name": "smola", "variant": "o", "num_experts": 48})
    stats = {enc.format(i): {b: {"phi_gram": (torch.eye(3) if b == "vision" else torch.full((3, 3), 0.5)).tolist()}
                             for b in ("text", "vision", "mm")} for i in range(2)}
    (d / "routing_stats.json").write_text(json.dumps(stats))
    png = _build(tmp_path, "smola-fig4")
    off = {(r["panel"], r["series"]): float(r["y"]) for r in _rows(png)}
    assert off[("vision", "L0 q_proj")] == 0.0 and off[("text", "L1 q_proj")] == 0.5
    assert "text 0.500, vision 0.000, multimodal 0.500" in (png.parent / "caption.md").read_text()


def test_a_run_reused_from_another_tables_run_reads_the_files_of_the_run_that_trained(tmp_path):
    from rankmix.figures.core import Sources

    results, runs = tmp_path / "results", tmp_path / "runs"
    chain = {("routing-4", "lora_64_none"): "results/routing-b11/runs/coco_lora_64_none.json",
             ("routing-b11", "coco_lora_64_none"): "results/routing-6/runs/coco_lora_64.json",
             ("routing-6", "coco_lora_64"): None}
    for (table, key), source in chain.items():
        write_json_atomic(results / table / "runs" / f"{key}.json",
                          {"status": "ok", "run": {"key": key, **({"reused_from": source} if source else {})}})
    (runs / "routing-6" / "coco_lora_64").mkdir(parents=True)
    (runs / "routing-6" / "coco_lora_64" / "adapter_init.pt").write_bytes(b"x")
    src = Sources(results, runs)
    assert src.run_file("routing-4", "lora_64_none", "adapter_init.pt") == runs / "routing-6" / "coco_lora_64" / "adapter_init.pt"
    with pytest.raises(FigureError, match="routing-6/coco_lora_64/checkpoints/last.ckpt not found"):
        src.run_file("routing-4", "lora_64_none", "checkpoints/last.ckpt")
