"""The cluster path run on one CPU machine with the real engines: a sweep through hydra's submitit launcher
(its local executor: SLURM's code path minus the scheduler), SLURM preemption and requeue (Lightning's SLURM code,
the environment of a batch job, a fake ``scontrol`` first on ``PATH``), and ranks started as srun starts them."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from conftest import OFFLINE_ENV, REPO, Run, compose, train_cmd

pytestmark = [pytest.mark.slow, pytest.mark.cluster]

JOB = "4242"
# A short run whose records all have one length: every batch has as many target tokens as any other, so the
# loss of a batch split over ranks averages to the loss of the whole batch.
TINY = ["trainer.max_epochs=2", "task.datamodule.source.n_train=24", "task.datamodule.source.n_test=8",
        "task.datamodule.max_eval_samples.validation=8", "task.datamodule.batch_size=8",
        "task.datamodule.source.tasks=[copy,reverse]", "task.datamodule.source.min_len=4",
        "task.datamodule.source.max_len=4"]


class SignalAt(pl.Callback):
    """Sends this process SLURM's requeue signal at one point of a run that has no requeue checkpoint yet."""

    def __init__(self, when: str):
        self.when, self.sent = when, False

    def _send(self, trainer) -> None:
        if not self.sent and not list(Path(trainer.default_root_dir).glob("hpc_ckpt_*.ckpt")):
            self.sent = True
            os.kill(os.getpid(), signal.SIGUSR1)

    def on_before_backward(self, trainer, pl_module, loss):
        if (self.when, trainer.global_step) in (("first_step", 0), ("mid_epoch", 8)):  # 6 steps an epoch
            self._send(trainer)

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        if self.when == "validation":
            self._send(trainer)


def fake_scontrol(root: Path, stops_job: bool) -> dict:
    """A ``scontrol`` that records its arguments and, like SLURM's requeue, sends the job SIGTERM (``stops_job``)."""
    bin_dir = root / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    script = bin_dir / "scontrol"
    script.write_text('#!/bin/sh\necho "$*" >> "$SCONTROL_LOG"\n' + ('kill -TERM "$PPID"\n' if stops_job else ""))
    script.chmod(0o755)
    return {"PATH": f"{bin_dir}:{os.environ['PATH']}", "SCONTROL_LOG": str(root / "scontrol.log")}


def slurm_env(ntasks: int = 1, procid: int = 0, port: int | None = None) -> dict:
    """The variables SLURM sets for a batch job's task (srun's, for ``ntasks`` > 1), on one node."""
    env = {"SLURM_JOB_ID": JOB, "SLURM_JOB_NAME": "train", "SLURM_NTASKS": str(ntasks),
           "SLURM_NTASKS_PER_NODE": str(ntasks), "SLURM_PROCID": str(procid), "SLURM_LOCALID": str(procid),
           "SLURM_NODEID": "0", "SLURM_NNODES": "1", "SLURM_NODELIST": "localhost"}
    if port is not None:
        env["MASTER_PORT"] = str(port)
    return env


def start(root: Path, *overrides: str, env: dict | None = None, multirun: bool = False) -> subprocess.Popen:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    return subprocess.Popen(train_cmd(root, *overrides, multirun=multirun), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**clean, **OFFLINE_ENV, "PYTHONPATH": str(REPO / "tests"), **(env or {})})


def finish(root: Path, proc: subprocess.Popen) -> Run:
    out, err = proc.communicate(timeout=600)
    return Run(root, subprocess.CompletedProcess(proc.args, proc.returncode, out, err))


def run(root: Path, *overrides: str, env: dict | None = None, multirun: bool = False) -> Run:
    return finish(root, start(root, *overrides, env=env, multirun=multirun))


def final_adapters(root: Path) -> dict:
    (last,) = root.glob("runs/default/*/checkpoints/last.ckpt")
    return torch.load(last, map_location="cpu", weights_only=True)["state_dict"]


def assert_same_run(run: dict, ref: dict, root: Path, ref_root: Path) -> None:
    assert run["train"]["global_step"] == ref["train"]["global_step"]
    for name, value in ref["metrics"].items():
        if not name.endswith("ms_per_sample"):  # wall time, not a result
            assert run["metrics"][name] == pytest.approx(value, abs=1e-6), name
    a, b = final_adapters(root), final_adapters(ref_root)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Path, dict]:
    """The run without SLURM, uninterrupted."""
    root = tmp_path_factory.mktemp("reference")
    r = run(root, *TINY)
    assert r.returncode == 0, r.stderr[-3000:]
    return root, r.result()


def test_a_sweep_through_submitit_runs_each_point_in_its_own_process(tmp_path):
    r = run(tmp_path, "hydra/launcher=submitit_local", *TINY, "method.r=0,4", multirun=True)
    # the failing point is named, after the other one finished; the sweep exits non-zero
    assert r.returncode == 1 and "1 run(s) of this sweep failed" in r.stderr, r.stderr[-3000:]
    assert "method.r=0" in r.stderr.split("run(s) of this sweep failed")[1]
    results = tmp_path / "results" / "default"
    (ok,) = [json.loads(p.read_text()) for p in (results / "runs").glob("*.json")]
    assert ok["status"] == "ok" and ok["config"]["method"]["r"] == 4 and "method.r=4" in ok["run"]["key"]
    assert "must be a positive integer" in r.stderr  # a refused config: named, not recorded as a run
    assert not (results / "failed").exists()
    assert "method.r=4" in (results / "table.md").read_text()
    # submitit's folder keeps one job per point, each its own process (the local job id is its pid) with its log
    jobs = [d for d in (tmp_path / "runs" / "default" / ".submitit").iterdir() if d.name.isdigit()]
    assert len(jobs) == 2 and os.getpid() not in {int(d.name) for d in jobs}
    logs = {d.name: (d / f"{d.name}_0_log.out").read_text() + (d / f"{d.name}_0_log.err").read_text() for d in jobs}
    assert sum("rankmix: result:" in log for log in logs.values()) == 1
    assert sum("method.r=0: must be a positive integer" in log for log in logs.values()) == 1


@pytest.mark.parametrize("launcher", ["submitit_local", "slurm"])
def test_the_launchers_follow_the_trainer(launcher):
    cfg = compose(f"hydra/launcher={launcher}", "trainer=ddp", "trainer.devices=8", "trainer.num_nodes=2")
    assert cfg.hydra.launcher.tasks_per_node == 8 and cfg.hydra.launcher.nodes == 2


def test_the_slurm_launcher_asks_for_the_requeue_signal():
    """The sbatch script submitit writes for ``hydra/launcher=slurm`` asks SLURM for SIGUSR1 before the time limit
    (Lightning's requeue signal), in place of submitit's own."""
    from omegaconf import OmegaConf
    from submitit.slurm.slurm import _make_sbatch_string

    launcher = compose("hydra/launcher=slurm", "trainer=ddp").hydra.launcher
    sbatch = _make_sbatch_string(command="python -m rankmix.train", folder="/tmp/submitit",
                                 signal_delay_s=launcher.signal_delay_s,
                                 additional_parameters=OmegaConf.to_container(launcher.additional_parameters, resolve=True))
    assert "#SBATCH --signal=USR1@120" in sbatch.splitlines()


def test_a_requeue_signal_mid_training_leaves_the_tested_weights_the_final_ones(tmp_path, reference):
    """SIGUSR1 while training: Lightning saves an hpc checkpoint and requeues the job; the run (not stopped by this
    scontrol) goes on to its end and tests its final weights, as the same run without SLURM does."""
    proc = start(tmp_path, *TINY, env={**slurm_env(), **fake_scontrol(tmp_path, stops_job=False)})
    while not list(tmp_path.glob("runs/default/*/checkpoints/last.ckpt")) and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGUSR1)
    r = finish(tmp_path, proc)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / "scontrol.log").read_text() == f"requeue {JOB}\n"
    assert not list(tmp_path.glob("runs/default/*/hpc_ckpt_*.ckpt"))  # superseded by the finished fit
    assert_same_run(r.result(), reference[1], tmp_path, reference[0])


@pytest.mark.parametrize("when", ["mid_epoch", "validation", "first_step"])
def test_a_preempted_run_is_requeued_and_resumes_to_the_uninterrupted_result(tmp_path, reference, when):
    """The signal, Lightning's hpc checkpoint and ``scontrol requeue``; SLURM then stops the job (SIGTERM: a non-zero
    exit and a line naming the job), and the requeued job, the same command, resumes from its newest checkpoint."""
    env = {**slurm_env(), **fake_scontrol(tmp_path, stops_job=True)}
    signal_at = [f"+callbacks.signal={{_target_: test_cluster.SignalAt, when: {when}}}"]
    stopped = run(tmp_path, *TINY, *signal_at, env=env)
    assert stopped.returncode != 0 and "rankmix: error: SIGTERM: stopping run" in stopped.stderr, stopped.stderr[-3000:]
    assert f"(SLURM job {JOB})" in stopped.stderr and "Traceback" not in stopped.stderr
    assert (tmp_path / "scontrol.log").read_text() == f"requeue {JOB}\n"
    (hpc,) = tmp_path.glob("runs/default/*/hpc_ckpt_1.ckpt")
    assert not list(tmp_path.glob("results/default/runs/*.json"))  # a stopped run leaves no result
    hpc_step = torch.load(hpc, map_location="cpu", weights_only=True)["global_step"]

    resumed = run(tmp_path, *TINY, *signal_at, env=env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    result = resumed.result()
    if when == "validation":  # acted on at the next step boundary: the next epoch's start, as last.ckpt (the tie's pick)
        assert hpc_step == 6 and result["train"]["resumed_from"].endswith("checkpoints/last.ckpt")
    else:  # mid-epoch: newer than last.ckpt
        assert hpc_step == {"first_step": 1, "mid_epoch": 9}[when] and result["train"]["resumed_from"] == str(hpc)
    assert (tmp_path / "scontrol.log").read_text() == f"requeue {JOB}\n"  # no second signal, no second requeue
    assert_same_run(result, reference[1], tmp_path, reference[0])


def test_sigterm_at_the_time_limit_stops_the_run_naming_the_job(tmp_path):
    proc = start(tmp_path, *TINY, env={**slurm_env(), **fake_scontrol(tmp_path, stops_job=False)})
    while not list(tmp_path.glob("runs/default/*/checkpoints/last.ckpt")) and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    r = finish(tmp_path, proc)
    assert r.returncode != 0 and "rankmix: error: SIGTERM: stopping run" in r.stderr and f"(SLURM job {JOB})" in r.stderr
    assert not (tmp_path / "scontrol.log").exists()  # no requeue
    assert not list(tmp_path.glob("results/default/runs/*.json"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


SRUN = [*TINY, "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "task.datamodule.batch_size=4"]
METHODS = {"lora": [], "smora": ["method=smora", "method.r=8", "method.k=2"]}  # SMoRA: its bias balances global loads


@pytest.mark.parametrize("method", list(METHODS.values()), ids=list(METHODS))
def test_two_ranks_started_as_srun_starts_them_train_one_run(tmp_path, method):
    """Two processes with srun's variables: Lightning takes the SLURM environment and spawns nothing; rank 0 writes
    the one result, equal to one process over the same global batch (twice the per-rank batch)."""
    port = _free_port()
    ranks = [start(tmp_path / "ranks", *SRUN, *method, env=slurm_env(ntasks=2, procid=i, port=port)) for i in (0, 1)]
    done = [finish(tmp_path / "ranks", p) for p in ranks]
    assert [d.returncode for d in done] == [0, 0], done[0].stderr[-2000:] + done[1].stderr[-2000:]
    one = run(tmp_path / "one", *TINY, *method)
    assert one.returncode == 0, one.stderr[-3000:]
    (result,) = [json.loads(p.read_text()) for p in (tmp_path / "ranks" / "results" / "default" / "runs").glob("*")]
    # SLURMEnvironment creates no processes: the two started here are the run's two ranks
    assert result["train"]["cluster_environment"] == "SLURMEnvironment" and result["train"]["devices"] == 2
    assert "rankmix: result:" in done[0].stdout and "rankmix: result:" not in done[1].stdout
    ref = one.result()
    for name in ("test/loss", "test/em"):
        assert result["metrics"][name] == pytest.approx(ref["metrics"][name], abs=1e-4), name
    a, b = final_adapters(tmp_path / "ranks"), final_adapters(tmp_path / "one")
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)
