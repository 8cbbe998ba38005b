"""Results tables: paper cells, failed runs, status listing."""

import csv
import json

import pytest

from conftest import REPO
from rankmix.errors import RankmixError
from rankmix.results import write_json_atomic
from rankmix.table_rows import all_tables
from rankmix.tables import build_table, table_status


def _run(key, metrics, table, status="ok", scale="tiny"):
    return {"status": status, "run": {"key": key, "scale": scale}, "metrics": metrics, "config": {"table": table},
            **({"error": "boom"} if status != "ok" else {})}


@pytest.fixture
def paper_dir(tmp_path):
    d = tmp_path / "paper"
    d.mkdir()
    with open(d / "made_up_table.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["backbone", "method", "metric", "value"])
        w.writerows([["B-7b", "LoRA-8", "EM", "40.1"], ["B-7b", "LoRA-64", "EM", "52.60"],
                     ["B-13b", "LoRA-8", "EM", "45.0"]])
    return d


def test_cells_put_ours_beside_the_paper(tmp_path, paper_dir):
    table = {"id": "x-1", "title": "Made-up", "paper_csv": "made_up_table.csv",
             "cells": [{"match": {"backbone": "B-7b", "method": "LoRA-64"}, "metric": "test/em", "label": "LoRA-64 EM"}]}
    runs = tmp_path / "results" / "x-1" / "runs"
    write_json_atomic(runs / "lora64.json", _run("lora64", {"test/em": 50.0}, table))
    write_json_atomic(runs.parent / "failed" / "broken.json", _run("broken", {}, table, status="failed"))
    md = build_table("x-1", tmp_path / "results", paper_dir)
    rows = list(csv.DictReader(open(md.parent / "table.csv")))
    assert rows == [{"run": "lora64", "scale": "tiny", "cell": "LoRA-64 EM", "metric": "test/em",
                     "paper": "52.60", "ours": "50.00", "diff": "-2.60"}]
    text = md.read_text()
    assert "| lora64 | tiny | LoRA-64 EM | test/em | 52.60 | 50.00 | -2.60 |" in text
    assert "| LoRA-64 EM | 50.00 / 52.60 |" in text  # the pivot: cells by runs
    assert "- `broken`: boom" in text


def test_a_table_without_paper_numbers_shows_ours_alone(tmp_path, paper_dir):
    table = {"id": "x-6", "paper_csv": None, "cells": [{"metric": "test/em", "label": "EM", "match": {}}]}
    write_json_atomic(tmp_path / "results" / "x-6" / "runs" / "a.json", _run("a", {"test/em": 50.0}, table))
    text = build_table("x-6", tmp_path / "results", paper_dir).read_text()
    assert "Each entry is ours: the paper prints no numbers" in text and "| EM | 50.00 |" in text


def test_a_cell_must_match_one_paper_row(tmp_path, paper_dir):
    table = {"id": "x-2", "paper_csv": "made_up_table.csv", "cells": [{"match": {"method": "LoRA-8"}, "metric": "m"}]}
    write_json_atomic(tmp_path / "r" / "x-2" / "runs" / "a.json", _run("a", {"m": 1.0}, table))
    with pytest.raises(RankmixError, match="2 rows match"):
        build_table("x-2", tmp_path / "r", paper_dir)


def test_status_reflects_scales(tmp_path):
    runs = tmp_path / "x-3" / "runs"
    assert table_status("x-3", tmp_path) == "never run"
    write_json_atomic(runs / "a.json", _run("a", {"m": 1.0}, {}))
    assert table_status("x-3", tmp_path) == "tiny (1 runs)"
    write_json_atomic(runs / "b.json", _run("b", {"m": 1.0}, {}, scale="paper"))
    write_json_atomic(runs.parent / "failed" / "c.json", _run("c", {}, {}, status="failed"))
    assert table_status("x-3", tmp_path) == "paper+tiny (2 runs, 1 failed)"


def test_experiment_tables_come_from_the_config_tree():
    tables = all_tables()
    assert tables["rankmix-ranks"] == [f"rankmix-ranks/r{r}" for r in (16, 2, 4, 8)]


def test_paper_tables_are_shipped_in_their_format():
    files = sorted((REPO / "results" / "paper").glob("*.csv"))
    assert len(files) >= 30
    with open(REPO / "results" / "paper" / "smora_table1.csv") as f:
        header = next(csv.reader(f))
    assert header[:2] == ["backbone", "task_cluster"] and "value" in header


def test_committed_results_are_valid_json():
    for p in (REPO / "results").glob("*/runs/*.json"):
        r = json.loads(p.read_text())
        assert r["status"] in ("ok", "failed") and "config_hash" in r["run"]


def test_list_command_shows_every_table(capsys, tmp_path):
    from rankmix.tables import main

    assert main(["--results-dir", str(tmp_path), "list"]) == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines() if "reproduce-table-rankmix-ranks" in ln)
    assert line.endswith("never run")


def test_makefile_help_lists_every_target():
    import subprocess

    out = subprocess.run(["make", "-s", "help"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    for target in ("setup", "run", "test", "list-tables", "reproduce-table-%", "reproduce-figure-%", "figures", "sync-wandb",
                   "show-row", "rehearse"):
        assert f"  {target} " in out


def test_make_run_trains_on_a_fresh_clone():
    """No result of the default run is committed (it would make ``make run`` print "up to date"), and what a run
    writes stays out of git."""
    import subprocess

    git = ["git", "-C", str(REPO)]
    if subprocess.run([*git, "rev-parse"], capture_output=True).returncode != 0:
        pytest.skip("not a git checkout")
    assert subprocess.run([*git, "ls-files", "results/default", "runs"], capture_output=True, text=True,
                          check=True).stdout == ""
    ignored = subprocess.run([*git, "check-ignore", "results/default/runs/default.json", "runs/default/default/x"],
                             capture_output=True, text=True).stdout.split()
    assert ignored == ["results/default/runs/default.json", "runs/default/default/x"]


def test_cells_in_paper_units_and_other_columns(tmp_path):
    paper = tmp_path / "paper"
    paper.mkdir()
    (paper / "cost.csv").write_text("method,param,time,mem,benchmark,value,value_as_printed\n"
                                    "LoRA,28.3M,8.0h,29G,Avg.,82.8,82.8\nZero,,,,Avg.,,not converge\n")
    cells = [{"label": "Param", "metric": "params.trainable", "unit": "M", "column": "param", "match": {}},
             {"label": "Time", "metric": "train.wall_time_s", "unit": "h", "column": "time", "match": {}},
             {"label": "Mem", "metric": "train.peak_memory.peak_mb", "unit": "G", "column": "mem", "match": {}},
             {"label": "Avg.", "metric": "test/average", "match": {}}]
    runs = tmp_path / "results" / "c-1" / "runs"
    for key, method in (("lora", "LoRA"), ("zero", "Zero")):
        run = _run(key, {"test/average": 80.0}, {"id": "c-1", "paper_csv": "cost.csv", "match": {"method": method},
                                                 "cells": cells})
        run.update(params={"trainable": 14_150_000}, train={"wall_time_s": 7200.0, "peak_memory": {"peak_mb": 14848.0}})
        write_json_atomic(runs / f"{key}.json", run)
    md = build_table("c-1", tmp_path / "results", paper)
    rows = {(r["run"], r["cell"]): r for r in csv.DictReader(open(md.parent / "table.csv"))}
    assert (rows["lora", "Param"]["ours"], rows["lora", "Param"]["diff"]) == ("14.15", "-14.15")
    assert (rows["lora", "Time"]["ours"], rows["lora", "Time"]["diff"]) == ("2.00", "-6.00")
    assert (rows["lora", "Mem"]["ours"], rows["lora", "Mem"]["paper"], rows["lora", "Mem"]["diff"]) == ("14.50", "29G", "-14.50")
    assert (rows["zero", "Avg."]["paper"], rows["zero", "Avg."]["diff"]) == ("not converge", "")


def _seeded(key, seed, fn, value, table):
    run = _run(f"{key},seed={seed}", {"test/em": value}, {**table, "match": {"fn": fn}})
    run["config"]["seed"] = seed
    return run


def test_seeds_give_mean_std_and_a_paired_t_test_against_the_baseline_row(tmp_path):
    paper = tmp_path / "paper"
    paper.mkdir()
    (paper / "seeded.csv").write_text("fn,task,mean,std\nnone,A,60.0,0.5\nmul,A,61.0,0.1\n")
    table = {"id": "x-4", "paper_csv": "seeded.csv", "seeds": [0, 1, 2], "ttest": {"fn": "none"},
             "cells": [{"label": "A", "match": {"task": "A"}, "metric": "test/em"}]}
    runs = tmp_path / "r" / "x-4" / "runs"
    base, routed = [50.0, 52.0, 54.0], [51.0, 53.5, 55.0]  # differences 1.0, 1.5, 1.0
    for seed in range(3):
        write_json_atomic(runs / f"none{seed}.json", _seeded("none", seed, "none", base[seed], table))
        write_json_atomic(runs / f"mul{seed}.json", _seeded("mul", seed, "mul", routed[seed], table))
    md = build_table("x-4", tmp_path / "r", paper)
    rows = {r["run"]: r for r in csv.DictReader(open(md.parent / "table.csv"))}
    assert rows["none"]["ours"] == "52.00" and rows["none"]["std"] == "2.00" and rows["none"]["n"] == "3"
    assert rows["none"]["p"] == ""  # the baseline is not tested against itself
    # paired t: mean diff 7/6, sd of diffs 0.2887 → t = 7.0, df 2 → p = 0.0198
    assert rows["mul"]["ours"] == "53.17" and abs(float(rows["mul"]["p"]) - 0.0198) < 5e-4
    assert "| A | 53.17 ± 2.02 (p=0.02) / 61.0 ± 0.1 |" in md.read_text()


def test_gain_cells_subtract_the_baseline_run(tmp_path, paper_dir):
    table = {"id": "x-5", "paper_csv": "made_up_table.csv", "baseline": {"method": "frozen"},
             "cells": [{"label": "gain", "match": {"backbone": "B-7b"}, "metric": "test/em", "gain": True}]}
    runs = tmp_path / "r" / "x-5" / "runs"
    write_json_atomic(runs / "frozen.json", _run("frozen", {"test/em": 40.0}, {**table, "match": {"method": "frozen"},
                                                                               "cells": []}))
    write_json_atomic(runs / "lora.json", _run("lora", {"test/em": 52.5}, {**table, "match": {"method": "LoRA-64"}}))
    md = build_table("x-5", tmp_path / "r", paper_dir)
    rows = [r for r in csv.DictReader(open(md.parent / "table.csv")) if r["cell"]]
    assert rows == [{"run": "lora", "scale": "tiny", "cell": "gain", "metric": "test/em", "paper": "52.60",
                     "ours": "12.50", "diff": "-40.10"}]
    assert "baseline run ({'method': 'frozen'}, `frozen` at tiny) of the same scale" in md.read_text()


def test_reproduce_sweeps_the_seeds_and_picks_the_tables_launcher(tmp_path, monkeypatch):
    from rankmix import tables

    calls = []
    monkeypatch.setattr(tables.subprocess, "call", lambda cmd: calls.append(cmd) or 0)
    assert tables.reproduce("routing-c15", ["scale=tiny"], tmp_path) == 0
    assert calls[0][-2:] == ["seed=0,1,2", "hydra/launcher=joblib"]
    assert "experiment=routing-c15/adapter_matmul," in " ".join(calls[0])
    tables.reproduce("routing-c15", ["seed=4", "hydra/launcher=slurm"], tmp_path)  # the caller's choice wins
    assert calls[1][-2:] == ["seed=4", "hydra/launcher=slurm"]
    tables.reproduce("routing-7", [], tmp_path)
    assert not any(a.startswith(("seed=", "hydra/launcher=")) for a in calls[2])


def test_runs_that_predate_their_rows_config_are_found(tmp_path):
    from rankmix.config import compose_run, config_hash
    from rankmix.results import RESULT_FORMAT
    from rankmix.tables import stale_runs

    fresh = {k: config_hash(compose_run([f"experiment=rankmix-ranks/{k}", "scale=tiny"])) for k in ("r2", "r4")}
    runs = tmp_path / "rankmix-ranks" / "runs"
    for key, chash, fmt in (("r2", fresh["r2"], 1), ("r4", fresh["r4"], RESULT_FORMAT), ("r8", "an-old-hash", RESULT_FORMAT)):
        write_json_atomic(runs / f"{key}.json", {"status": "ok", "run": {"key": key, "scale": "tiny", "config_hash": chash,
                                                                        "format": fmt}})
    # r2: its config is current, but its result predates per-item scores (an older result format)
    assert stale_runs("rankmix-ranks", tmp_path) == ["r2", "r8"]


def test_a_finished_run_whose_table_cannot_be_built_yet_is_not_failed(monkeypatch, capsys):
    from omegaconf import OmegaConf

    import rankmix.tables
    from rankmix.errors import RankmixError
    from rankmix.records import finish

    def no_baseline(*_):
        raise RankmixError("table smola-a1: cell 'gain' is a gain over the baseline run, which has not finished")

    monkeypatch.setattr(rankmix.tables, "build_table", no_baseline)
    cfg = OmegaConf.create({"table": {"id": "smola-a1"}, "paths": {"results_dir": "r", "paper_dir": "p"},
                            "optimized_metric": "test/average"})
    assert finish(cfg, {"test/average": 0.5}) == 0.5
    assert "table smola-a1 not built yet: " in capsys.readouterr().out


def test_a_result_of_an_older_format_is_neither_up_to_date_nor_reused(tmp_path):
    from omegaconf import OmegaConf

    from rankmix.config import compose_run, config_hash
    from rankmix.results import RESULT_FORMAT, is_up_to_date, same_computation

    cfg = compose_run(["experiment=rankmix-ranks/r4", "scale=tiny"])
    config, chash = OmegaConf.to_container(cfg, resolve=True), config_hash(cfg)
    for fmt, expected in ((1, False), (RESULT_FORMAT, True)):
        path = tmp_path / f"f{fmt}" / "rankmix-ranks" / "runs" / "r4.json"
        write_json_atomic(path, {"status": "ok", "run": {"key": "r4", "config_hash": chash, "format": fmt},
                                 "config": config})
        assert is_up_to_date(path, chash) is expected
        assert (same_computation(tmp_path / f"f{fmt}", config, own=tmp_path / "other.json") == path) is expected
