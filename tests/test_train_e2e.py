"""End-to-end runs of ``python -m rankmix.train`` as a user runs them (subprocesses, offline)."""

import csv
import hashlib
import json
import os
import signal
import subprocess
import time

import pytest
import torch
from omegaconf import OmegaConf

from conftest import FAST, OFFLINE_ENV, REPO, VL_SMALL, fast, run_train, train_cmd

pytestmark = pytest.mark.slow


def _train_losses(run_dir):
    with open(run_dir / "csv" / "metrics.csv") as f:
        return [float(r["train/loss_step"]) for r in csv.DictReader(f) if r.get("train/loss_step")]


def test_default_run_learns(tmp_path):
    """The embedded default: the loss falls and the metric beats the untrained model."""
    trained = run_train(tmp_path / "trained")
    assert trained.returncode == 0, trained.stderr[-3000:]
    untrained = run_train(tmp_path / "untrained", "trainer.max_epochs=0")
    assert untrained.returncode == 0, untrained.stderr[-3000:]
    t, u = trained.result(), untrained.result()
    assert t["status"] == "ok" and t["run"]["scale"] == "tiny"
    # the output ends with the final metrics, the result and the table; each Lightning line once, no tip, no warning
    assert f"rankmix: metrics: test/em={t['metrics']['test/em']:.4g}," in trained.stdout
    assert trained.stdout.count("GPU available:") == 1 and "GPU available" not in trained.stderr
    assert "Tip:" not in trained.stdout + trained.stderr and "Warning" not in trained.stderr
    assert t["metrics"]["test/em"] >= u["metrics"]["test/em"] + 25.0
    assert t["metrics"]["test/rougeL"] > u["metrics"]["test/rougeL"] + 25.0
    assert t["metrics"]["test/loss"] < u["metrics"]["test/loss"] - 0.5
    losses = _train_losses(tmp_path / "trained" / "runs" / "default" / "default")
    assert len(losses) >= 20
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.5

    md = tmp_path / "trained" / "results" / "default" / "table.md"
    assert f"rankmix: table: {md}" in trained.stdout
    assert "| default | tiny |" in md.read_text()
    # the result JSON documents the run
    assert t["params"]["trainable"] < t["params"]["total"] and t["params"]["wrapped_layers"] == 14  # the Llama default: 7 linear layers x 2 blocks
    assert t["meta"]["versions"]["torch"] and "commit" in t["meta"]["git"]
    assert t["meta"]["machine"]["torch_threads"] >= 1   # a CPU run's numbers depend on it
    lock = (REPO / "requirements.lock").read_bytes()
    assert t["meta"]["environment"]["lock_sha256"] == hashlib.sha256(lock).hexdigest()
    assert t["train"]["wall_time_s"] > 0 and t["train"]["peak_memory"]["cpu_rss_mb"] > 0
    assert t["config"]["method"]["name"] == "lora"


def test_checkpoint_holds_adapter_weights_only(tmp_path):
    r = run_train(tmp_path, *FAST)
    assert r.returncode == 0, r.stderr[-3000:]
    key = r.result()["run"]["key"]
    ckpt = torch.load(tmp_path / "runs" / "default" / key / "checkpoints" / "last.ckpt", weights_only=True)
    keys = list(ckpt["state_dict"])
    assert keys and all(k.endswith(("lora_A.weight", "lora_B.weight")) for k in keys)
    assert len(keys) == 2 * 14


def test_rerun_skips_up_to_date_and_reruns_on_request(tmp_path):
    first = run_train(tmp_path, *FAST)
    assert first.returncode == 0
    a = first.result()
    again = run_train(tmp_path, *FAST)
    assert again.returncode == 0 and "up to date" in again.stdout
    forced = run_train(tmp_path, *FAST, "rerun=true")
    assert forced.returncode == 0 and "up to date" not in forced.stdout, forced.stderr[-2000:]
    b = forced.result()   # rerun=true trains again from scratch, to the same numbers
    assert b["train"]["resumed_from"] is None and b["train"]["final_train_loss"] is not None
    assert b["train"]["global_step"] == a["train"]["global_step"] and b["run"]["started_at"] >= a["run"]["finished_at"]
    assert b["metrics"] == a["metrics"]  # the same seeded computation


def test_a_run_listed_in_two_tables_is_trained_once(tmp_path):
    first = run_train(tmp_path, *FAST)
    assert first.returncode == 0
    listed = run_train(tmp_path, *FAST, "table.id=other", "table.title=Other")  # same computation, another table
    assert listed.returncode == 0 and "same computation as" in listed.stdout
    assert "no wandb run" not in listed.stdout  # said only when a wandb logger is configured
    logged = run_train(tmp_path, *FAST, "table.id=fourth", "logger=wandb")
    assert logged.returncode == 0 and "same computation as" in logged.stdout and "no wandb run" in logged.stdout
    a, b = first.result(), listed.result("other")
    assert b["metrics"] == a["metrics"] and b["run"]["table"] == "other" and b["run"]["reused_from"].endswith(".json")
    changed = run_train(tmp_path, *FAST, "table.id=third", "method.r=4")  # another computation: trained
    assert changed.returncode == 0 and "same computation" not in changed.stdout
    assert "reused_from" not in changed.result("third")["run"]
    c = changed.result("third")
    # a label edited (as in the table's yaml): the run keeps its name and file, and is not trained again
    excluded = OmegaConf.load(REPO / "conf" / "train.yaml").hydra.job.config.override_dirname.exclude_keys
    relabelled = run_train(tmp_path, *FAST, "table.id=third", "method.r=4", "table.title=Renamed",
                           f"hydra.job.config.override_dirname.exclude_keys=[{','.join([*excluded, 'table.title'])}]")
    assert relabelled.returncode == 0 and "only its labels changed" in relabelled.stdout, relabelled.stdout
    d = relabelled.result("third")
    assert d["metrics"] == c["metrics"] and d["run"]["started_at"] == c["run"]["started_at"]
    assert d["config"]["table"]["title"] == "Renamed" and d["run"]["config_hash"] != c["run"]["config_hash"]
    assert "reused_from" not in d["run"]


def test_multirun_over_ranks(tmp_path):
    r = run_train(tmp_path, *FAST, "method.r=4,8", multirun=True, by_env=True)
    assert r.returncode == 0, r.stderr[-3000:]
    runs = sorted((tmp_path / "results" / "default" / "runs").glob("*.json"))
    results = [json.loads(p.read_text()) for p in runs]
    assert sorted(x["config"]["method"]["r"] for x in results) == [4, 8]
    assert [x["train"]["live_models_at_fit"] for x in results] == [1, 1]  # the first run's model was released
    assert results[0]["params"]["trainable"] != results[1]["params"]["trainable"]
    table = (tmp_path / "results" / "default" / "table.md").read_text()
    assert "method.r=4" in table and "method.r=8" in table


def test_failed_run_does_not_stop_the_sweep_and_the_sweep_exits_non_zero(tmp_path):
    r = run_train(tmp_path, *FAST, "method.r=0,4", multirun=True)
    table_dir = tmp_path / "results" / "default"
    (ok,) = [json.loads(p.read_text()) for p in (table_dir / "runs").glob("*.json")]
    assert ok["status"] == "ok" and "method.r=4" in ok["run"]["key"]
    # a refused config is not a run: no failure record, no "Failed runs" entry; the sweep still names it and
    # exits non-zero after its other runs
    assert not (table_dir / "failed").exists()
    assert r.returncode == 1 and "1 run(s) of this sweep failed" in r.stderr and "method.r=0" in r.stderr
    assert "must be a positive integer" in r.stderr
    table = (tmp_path / "results" / "default" / "table.md").read_text()
    assert "Failed runs" not in table and "method.r=4" in table
    assert "Traceback" not in r.stderr


RESUMED = {  # a buffered method (SMoRA's balancing bias) on each kind of benchmark tested here
    "causal_lm": [*fast(trainer__max_epochs=3, task__datamodule__source__n_train=200, method__dropout=0.1),
                  "method=smora", "method.r=8", "method.k=2"],
    "vqa": ["task=vqa", "backbone=vit_roberta", "method=smora", "method.r=8", "method.k=2", "trainer.max_epochs=3",
            "task.datamodule.source.n_train=48", "task.datamodule.source.n_val=2", "task.datamodule.source.n_test=4",
            "optimized_metric=test/accuracy"],
    "caption": ["task=coco_caption", "backbone=vit_gpt2", "method=smora", "method.r=8", "method.k=2",
                "trainer.max_epochs=3", "task.datamodule.source.n_train=24", "task.datamodule.source.n_val=2",
                "task.datamodule.source.n_test=4", "backbone.language.warm_start.epochs=1", "optimized_metric=test/CIDEr"],
    "vl_multitask": ["task=vl_multitask", "backbone=clip_bart", "method=smora", "method.r=8", "method.k=2",
                     "trainer.max_epochs=3", *VL_SMALL, "backbone.language.warm_start.epochs=1",
                     "backbone.caption_warm_start.epochs=1", "optimized_metric=test/average"],
}


@pytest.mark.parametrize("kind", list(RESUMED))
def test_kill_and_resume_reaches_the_same_metrics(tmp_path, kind):
    # one data and warm-start cache for the three runs: the killed run would otherwise prepare them again
    overrides = [*RESUMED[kind], f"paths.cache_dir={tmp_path / 'cache'}"]
    reference = run_train(tmp_path / "reference", *overrides)
    assert reference.returncode == 0, reference.stderr[-3000:]

    root = tmp_path / "killed"
    proc = subprocess.Popen(train_cmd(root, *overrides), cwd=REPO, env={**os.environ, **OFFLINE_ENV},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    key = reference.result()["run"]["key"]
    last = root / "runs" / "default" / key / "checkpoints" / "last.ckpt"
    deadline = time.time() + 300
    while not last.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be interrupted"
    time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert torch.load(last, weights_only=True)["epoch"] < 2, "killed too late to test resuming"
    assert not list(root.glob("results/default/runs/*.json"))  # a killed run leaves no result

    resumed = run_train(root, *overrides)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    r, ref = resumed.result(), reference.result()
    assert r["train"]["resumed_from"] and ref["train"]["resumed_from"] is None
    assert r["train"]["global_step"] == ref["train"]["global_step"]
    for name, value in ref["metrics"].items():
        if not name.endswith("ms_per_sample"):  # wall time, not a result
            assert r["metrics"][name] == pytest.approx(value, abs=1e-6), name
    final = [torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
             for run in (tmp_path / "reference" / "runs" / "default" / key, root / "runs" / "default" / key)]
    assert final[0].keys() == final[1].keys() and all(torch.equal(final[0][k], final[1][k]) for k in final[0])
    assert any(k.endswith("router_bias") for k in final[0])  # the balancing bias is saved, and resumed, not reset
    with open(root / "runs" / "default" / key / "csv" / "metrics.csv") as f:  # the log keeps the epochs before the kill
        epochs = {int(row["epoch"]) for row in csv.DictReader(f) if row.get("epoch")}
    assert {0, 1, 2} <= epochs


def test_non_finite_loss_stops_with_a_clear_message(tmp_path):
    r = run_train(tmp_path, *FAST, "optimizer.lr=1e30")
    assert r.returncode == 1
    assert "rankmix: error: training loss became" in r.stderr and "Traceback" not in r.stderr
    (failed,) = (tmp_path / "results" / "default" / "failed").glob("*.json")
    result = json.loads(failed.read_text())
    assert result["status"] == "failed" and "loss became" in result["error"]
    assert not (tmp_path / "results" / "default" / "table.md").exists() or "| default" not in (
        tmp_path / "results" / "default" / "table.md").read_text()


def test_ddp_sim_two_processes(tmp_path):
    r = run_train(tmp_path, *FAST, "trainer=ddp_sim")
    assert r.returncode == 0, r.stderr[-3000:]
    result = r.result()
    assert result["status"] == "ok" and result["train"]["devices"] == 2
    assert 0.0 <= result["metrics"]["test/em"] <= 100.0


def test_wandb_offline_writes_a_local_run(tmp_path):
    env_mode = os.environ.get("WANDB_MODE")
    os.environ["WANDB_MODE"] = "offline"
    try:
        proc = subprocess.run(train_cmd(tmp_path, *FAST, "logger=wandb"), cwd=REPO, capture_output=True, text=True,
                              timeout=600, env={**os.environ, **OFFLINE_ENV, "WANDB_MODE": "offline"})
    finally:
        os.environ["WANDB_MODE"] = env_mode or "disabled"
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dirs = list((tmp_path / "runs" / "default").glob("*/wandb/offline-run-*"))
    assert run_dirs, "no offline wandb run was written"
    assert not list((tmp_path / "runs").rglob("*.ckpt.wandb"))  # no model files logged
    record = next(run_dirs[0].glob("run-*.wandb")).read_bytes()   # the run's config, as the dashboard shows it
    for entry in (b"run_key", b'"trainable":', b'{"lr":0.003,', b'"name":"lora","r":8'):
        assert entry in record, entry


def test_smora_run_records_routing_statistics(tmp_path):
    r = run_train(tmp_path, *FAST, "method=smora", "method.r=8", "method.k=2")
    assert r.returncode == 0, r.stderr[-3000:]
    result = r.result()
    assert result["params"]["activated_per_token"] < result["params"]["trainable"]
    assert result["metrics"]["test/routing/maxvio"] >= 0
    run_dir = tmp_path / "runs" / "default" / result["run"]["key"]
    epochs = [json.loads(line) for line in (run_dir / "routing_stats_train.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in epochs] == [0, 1]
    layer = next(iter(epochs[-1]["layers"].values()))
    assert len(layer["load"]) == 8 and layer["maxvio"] >= 0 and layer["gate_entropy"] > 0
    test_stats = json.loads((run_dir / "routing_stats.json").read_text())
    assert len(test_stats) == 14
    with open(run_dir / "csv" / "metrics.csv") as f:
        assert "routing/maxvio" in next(csv.reader(f))
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    biases = [v for k, v in state.items() if k.endswith("router_bias")]  # the balancing bias resumes with the run
    assert len(biases) == 14 and all(b.abs().sum() > 0 for b in biases)


def test_checkpoints_of_another_configuration_are_not_resumed(tmp_path):
    first = run_train(tmp_path, *FAST)
    assert first.returncode == 0, first.stderr[-3000:]
    run_dir = tmp_path / "runs" / "default" / first.result()["run"]["key"]
    (run_dir / "config_hash.txt").write_text("an-older-configuration\n")  # as if the experiment file was edited
    again = run_train(tmp_path, *FAST, "rerun=true")
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.result()["train"]["resumed_from"] is None
    assert (run_dir / "checkpoints.stale-an-older-configuration" / "last.ckpt").exists()
    assert (run_dir / "config_hash.txt").read_text().strip() == first.result()["run"]["config_hash"]


def test_select_best_tests_the_checkpoint_with_the_lowest_validation_loss(tmp_path):
    """MoSLoRA's load_best_model_at_end: validation loss every n optimizer steps, the best weights are tested."""
    r = run_train(tmp_path, *FAST, "+task.select_best={monitor: val/loss, mode: min, every_n_steps: 2, generate: false}",
                  "trainer.accumulate_grad_batches=1")
    assert r.returncode == 0, r.stderr[-3000:]
    res = r.result()
    chosen = res["train"]["tested_checkpoint"]
    assert chosen["monitor"] == "val/loss" and chosen["path"].endswith("best.ckpt")
    with open(tmp_path / "runs" / "default" / res["run"]["key"] / "csv" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    val = [float(row["val/loss"]) for row in rows if row.get("val/loss")]
    assert len(val) >= 2 and chosen["score"] == pytest.approx(min(val))
    assert not any(row.get("val/em") for row in rows)  # validation computes the loss only
    best = torch.load(chosen["path"], map_location="cpu", weights_only=True)
    assert best["global_step"] in {int(row["step"]) + 1 for row in rows if row.get("val/loss")} | \
           {int(row["step"]) for row in rows if row.get("val/loss")}


def _own_data(data):
    """A user's data folder (train/validation/test JSON lines) with generated records."""
    from rankmix.data.synthetic import generate_records

    data.mkdir()
    for split, n in (("train", 24), ("validation", 6), ("test", 6)):
        recs = generate_records(["copy", "reverse"], n, 2, 4, seed={"train": 1, "validation": 2, "test": 3}[split])
        (data / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    return data


def test_a_failure_of_another_configuration_never_replaces_a_finished_result(tmp_path):
    data = _own_data(tmp_path / "data")
    args = ["trainer.max_epochs=1", f"task.datamodule.data_dir={data}"]
    done = run_train(tmp_path, *args)
    assert done.returncode == 0, done.stderr[-2000:]
    (result,) = (tmp_path / "results" / "default" / "runs").glob("*.json")
    before = result.read_text()
    # the same run key, another configuration (its data file edited: a record without its target), refused before
    # training: the finished result stays, and a refusal is not a run (no failure record)
    with open(data / "train.jsonl", "a") as f:
        f.write(json.dumps({"task": "copy", "inputs": "a b"}) + "\n")
    failed = run_train(tmp_path, *args)
    assert failed.returncode != 0 and "missing field 'targets'" in failed.stderr
    assert result.read_text() == before
    assert not (result.parent.parent / "failed").exists()
    table = (tmp_path / "results" / "default" / "table.md").read_text()
    assert "1 finished runs" in table and "Failed runs" not in table


def test_a_read_only_results_folder_is_refused_before_training(tmp_path):
    (tmp_path / "results" / "default").mkdir(parents=True)
    (tmp_path / "results" / "default" / "runs").write_text("")  # a file where the folder must be: unwritable even as root
    r = run_train(tmp_path, *FAST)
    assert r.returncode == 1 and "cannot write there" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "runs" / "default" / "default" / "checkpoints").exists()


@pytest.mark.parametrize("multirun", [False, True])
def test_an_unwritable_runs_folder_is_refused_in_one_line(tmp_path, multirun):
    """Hydra makes the run's folder before the entry runs: the check comes first, from a Hydra callback."""
    (tmp_path / "runs").write_text("")  # a file where the folder must be: unwritable even as root
    r = run_train(tmp_path, *FAST, multirun=multirun)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
    (line,) = [x for x in r.stderr.splitlines() if x.startswith("rankmix: error")]
    assert "runs: cannot write there" in line and "paths.runs_dir" in line
    assert not (tmp_path / "results" / "default" / "failed").exists()


def test_two_identical_runs_at_once_one_is_refused(tmp_path):
    env = {**os.environ, **OFFLINE_ENV}
    long = fast(trainer__max_epochs=30)  # long enough for the second to start while the first trains
    first = subprocess.Popen(train_cmd(tmp_path, *long), cwd=REPO, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    for _ in range(600):
        locks = list((tmp_path / "runs" / "default").glob("*/.lock"))
        if locks and locks[0].read_text().strip():
            break
        time.sleep(0.1)
    second = run_train(tmp_path, *long)
    out, err = first.communicate(timeout=600)
    assert first.returncode == 0, err[-2000:]
    assert second.returncode == 1 and "the same run is already running" in second.stderr
    assert "Traceback" not in second.stderr
    (result,) = (tmp_path / "results" / "default" / "runs").glob("*.json")
    assert json.loads(result.read_text())["status"] == "ok"


@pytest.mark.parametrize("sweep", [False, True], ids=["single", "sweep"])
def test_sigterm_stops_with_a_message_and_a_non_zero_exit(tmp_path, sweep):
    env = {**os.environ, **OFFLINE_ENV}
    args = fast(trainer__max_epochs=30) + (["method.r=4,8"] if sweep else [])
    proc = subprocess.Popen(train_cmd(tmp_path, *args, multirun=sweep), cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    for _ in range(1200):  # once the first epoch's checkpoint exists
        if list((tmp_path / "runs" / "default").glob("*/checkpoints/*.ckpt")):
            break
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode != 0 and "rankmix: error: SIGTERM: stopping run" in err
    assert not list((tmp_path / "results" / "default" / "runs").glob("*.json"))  # no half result
    if sweep:  # the sweep stopped there: its second run never started
        assert len(list((tmp_path / "runs" / "default").glob("method.r=*"))) == 1


def test_an_edited_data_file_makes_the_run_out_of_date(tmp_path):
    data = _own_data(tmp_path / "data")
    args = ["trainer.max_epochs=1", f"task.datamodule.data_dir={data}"]
    first = run_train(tmp_path, *args)
    assert first.returncode == 0, first.stderr[-2000:]
    before = first.result()["config"]["data_fingerprint"]
    lines = (data / "test.jsonl").read_text().splitlines()
    (data / "test.jsonl").write_text("\n".join(lines[:2]) + "\n")  # cut the test set to 2 records
    second = run_train(tmp_path, *args)
    assert second.returncode == 0 and "up to date" not in second.stdout
    assert second.result()["config"]["data_fingerprint"] != before
    (preds,) = (tmp_path / "runs" / "default").glob("*/predictions.jsonl")
    assert len(preds.read_text().splitlines()) == 2


def test_the_entry_applies_command_line_values_over_the_scaled_config(tmp_path):
    r = run_train(tmp_path, *FAST, "++task.datamodule.batch_size=7", "trainer.max_epochs=1")
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.result()["config"]["task"]["datamodule"]["batch_size"] == 7  # conf/scaled/task/tiny/generated: 32


def test_a_table_sweep_with_failed_rows_exits_non_zero(tmp_path):
    r = run_train(tmp_path, *FAST, "experiment=rankmix-ranks/r4,rankmix-ranks/r8", "method.r=-1", multirun=True)
    assert r.returncode == 1 and "2 run(s) of this sweep failed" in r.stderr, r.stderr[-2000:]
    assert not list((tmp_path / "results").glob("*/failed/*.json"))  # refused configs, not runs


def test_a_new_method_is_one_module_and_one_yaml(tmp_path):
    """In a scratch copy of the package and configs: lora.py copied under a new name and registered as such, and
    conf/method/lora.yaml copied with that name; nothing else is edited, and ``method=<name>`` trains."""
    import shutil

    scratch = tmp_path / "scratch"
    shutil.copytree(REPO / "src", scratch / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    shutil.copytree(REPO / "conf", scratch / "conf")
    adapters = scratch / "src" / "rankmix" / "adapters"
    (adapters / "lora_copy.py").write_text((adapters / "lora.py").read_text()
                                           .replace('@register("lora")', '@register("lora_copy")'))
    (scratch / "conf" / "method" / "lora_copy.yaml").write_text(
        (scratch / "conf" / "method" / "lora.yaml").read_text().replace("name: lora", "name: lora_copy"))
    env = {**os.environ, **OFFLINE_ENV, "PYTHONPATH": str(scratch / "src")}
    proc = subprocess.run(train_cmd(tmp_path, *FAST, "method=lora_copy"), cwd=scratch, capture_output=True,
                          text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(next((tmp_path / "results" / "default" / "runs").glob("*.json")).read_text())
    assert result["config"]["method"]["name"] == "lora_copy" and result["params"]["trainable"] > 0
