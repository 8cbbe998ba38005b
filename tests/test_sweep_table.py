"""One's own sweep: its table (swept keys as columns, numeric order, cost columns), SEEDS=n, and make compare."""

import csv
import json

import numpy as np
import pytest

from conftest import FAST, run_train
from rankmix import uncertainty as u
from rankmix.errors import RankmixError
from rankmix.results import write_json_atomic
from rankmix.tables import build_table, compare


def _run(key, method, r, em, seed=0, n=20):
    with u.collecting() as c:
        u.record("em", range(n), [100.0 * (i < em * n / 100) for i in range(n)])
    return {"status": "ok", "run": {"key": key, "scale": "tiny"}, "metrics": {"test/em": em, "test/loss": 1.0},
            "params": {"trainable": 1000 * r, "total": 10**6, "activated_per_token": 500 * r},
            "train": {"wall_time_s": 12.5, "peak_memory": {"peak_mb": 900.0}},
            "evaluation": {"items": c.entries("test/")},
            "config": {"table": {"id": "mine", "title": None, "cells": []}, "seed": seed,
                       "method": {"name": method, "r": r}}}


@pytest.fixture
def sweep(tmp_path):
    runs = tmp_path / "results" / "mine" / "runs"
    for method, ems in (("lora", (40.0, 50.0, 60.0)), ("smora", (45.0, 55.0, 70.0))):
        for r, em in zip((16, 2, 4), ems, strict=True):
            key = f"method={method},method.r={r}"
            write_json_atomic(runs / f"{key}.json", _run(key, method, r, em))
    return tmp_path / "results"


def test_a_sweep_table_has_the_swept_keys_as_columns_in_numeric_order(sweep):
    md = build_table("mine", sweep, sweep / "paper")
    text = md.read_text()
    header = next(line for line in text.splitlines() if line.startswith("| run |"))
    assert header.startswith("| run | scale | method | method.r | trainable | activated | wall time (s) "
                             "| peak memory (MiB) | test/em | test/loss |")
    order = [line.split(" | ")[3] for line in text.splitlines() if line.startswith("| method=")]
    assert order == ["2", "4", "16", "2", "4", "16"]  # numbers as numbers, per method
    assert text.startswith("# mine: lora, smora over method, method.r")  # a title from the runs, not a fixed one
    rows = list(csv.DictReader(open(md.parent / "table.csv")))
    se = [float(r["test/em se"]) for r in rows if r["run"] == "method=lora,method.r=2"][0]
    want = np.std([100.0 * (i < 10) for i in range(20)], ddof=1) / np.sqrt(20)
    assert se == pytest.approx(want, abs=0.006)
    assert "50.00 ± " in text and "| 2000 | 1000 | 12.50 | 900.00 |" in text


def test_compare_draws_a_metric_against_a_swept_key_per_method(sweep):
    png = compare("mine", "test/em", "method.r", sweep)
    assert png.is_file() and png.stat().st_size > 1000 and png.read_bytes()[:4] == b"\x89PNG"
    rows = list(csv.DictReader(open(png.with_suffix(".csv"))))
    assert [(r["line"], r["method.r"], r["test/em"]) for r in rows][:3] == [
        ("lora", "2.0", "50.0"), ("lora", "4.0", "60.0"), ("lora", "16.0", "40.0")]
    assert {r["line"] for r in rows} == {"lora", "smora"} and rows[0]["error_kind"] == "standard error"
    with pytest.raises(RankmixError, match="no metric 'test/nope'"):
        compare("mine", "test/nope", "method.r", sweep)
    with pytest.raises(RankmixError, match="numeric swept key"):
        compare("mine", "test/em", "method", sweep)


@pytest.mark.slow
def test_seeds_2_show_mean_and_std_per_cell_and_the_run_keeps_its_item_scores(tmp_path):
    r = run_train(tmp_path, *FAST, "experiment=rankmix-ranks/r2", "seed=0,1", multirun=True)
    assert r.returncode == 0, r.stderr[-3000:]
    results = [json.loads(p.read_text()) for p in sorted((tmp_path / "results" / "rankmix-ranks" / "runs").glob("*"))]
    assert [x["run"]["key"][:9] for x in results] == ["r2,seed=0", "r2,seed=1"]  # long keys end in a hash
    for x in results:  # the run JSON keeps each test metric's per-item scores; the SE is theirs
        e = x["evaluation"]["items"]["test/em"]
        scores = u.item_scores(e)
        assert scores.mean() == pytest.approx(x["metrics"]["test/em"], abs=1e-3)
        assert e["se"] == pytest.approx(u.stratified_se(scores, u.strata_of(e)), rel=1e-4)
    md = build_table("rankmix-ranks", tmp_path / "results", tmp_path / "results" / "paper")
    text = md.read_text()
    losses = [x["metrics"]["test/loss"] for x in results]
    (row,) = [line for line in text.splitlines() if line.startswith("| r2,")]  # one row for the two seeds
    assert "| 0,1 |" in row and "mean ± std over the seeds" in text
    assert f"{np.mean(losses):.2f} ± {np.std(losses, ddof=1):.2f}" in row


def test_check_results_fails_naming_a_run_that_predates_its_config_or_failed(tmp_path, capsys):
    from rankmix.tables import main

    runs = tmp_path / "rankmix-ranks" / "runs"
    write_json_atomic(runs / "r8.json", {"status": "ok", "run": {"key": "r8", "scale": "tiny", "config_hash": "old"}})
    assert main(["--results-dir", str(tmp_path), "list"]) == 0  # list-tables names it, and succeeds
    assert "1 predate the current config: r8" in capsys.readouterr().out
    assert main(["--results-dir", str(tmp_path), "list", "--check"]) == 1
    assert "rankmix-ranks/runs/r8.json predates its row's config" in capsys.readouterr().err
    (runs / "r8.json").unlink()
    write_json_atomic(runs.parent / "failed" / "r4.json", {"status": "failed", "run": {"key": "r4", "scale": "tiny"}})
    assert main(["--results-dir", str(tmp_path), "list", "--check"]) == 1
    assert "rankmix-ranks/failed/r4.json: a failed run" in capsys.readouterr().err
