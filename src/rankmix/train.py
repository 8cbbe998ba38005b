"""Training entry: ``python -m rankmix.train [group=option ...] [key=value ...]`` (Hydra; ``-m`` for sweeps).

Composes the config, builds backbone → injects the adapter method → builds the task's data module and
LightningModule → fits (resuming from the run's newest checkpoint when one exists: ``last.ckpt``, or a SLURM
requeue's ``hpc_ckpt_<n>.ckpt``) → tests the final (or the selected best) weights → writes one result JSON per
run (atomically) and rebuilds the run's results table.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

if TYPE_CHECKING:
    import lightning.pytorch as pl

from rankmix import locations
from rankmix.batching import accumulation, batch_layout
from rankmix.config import (
    check_table_id,
    check_trainer_keys,
    config_hash,
    register_resolvers,
    run_key,
    validate,
)
from rankmix.data.files import atomic_open, record_data_fingerprint, stale_temporaries
from rankmix.errors import ConfigError, RankmixError
from rankmix.rehearsal import preflight
from rankmix.results import (
    RESULT_FORMAT,
    environment,
    git_state,
    is_up_to_date,
    machine,
    package_versions,
    peak_memory_mb,
    read_json,
    result_path,
    same_computation,
    write_json_atomic,
)
from rankmix.sweep import SWEEP_FAILURES
from rankmix.writable import check_writable

log = logging.getLogger("rankmix.train")
CONF_DIR = str(locations.CONF_DIR)
register_resolvers()


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def build_trainer(cfg: DictConfig, run_dir: Path, extra_callbacks: list | None = None) -> pl.Trainer:
    """Lightning's Trainer from ``cfg.trainer``, the callbacks and loggers; with ``task.select_best`` (a paper's
    checkpoint selection, e.g. MoSLoRA's ``load_best_model_at_end``) also validation every ``every_n_steps``
    optimizer steps and a ModelCheckpoint that keeps the weights with the best ``monitor``."""
    import lightning.pytorch as pl
    from lightning.fabric.plugins.environments import SLURMEnvironment
    from lightning.pytorch.callbacks import ModelCheckpoint

    from rankmix.callbacks import SlurmRequeue, TrainingModes
    from rankmix.distributed import build_strategy
    from rankmix.quiet import quiet_lightning

    quiet_lightning()

    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c] + [TrainingModes()]
    if SLURMEnvironment.detect():  # a SLURM batch job (srun's tasks included): Lightning requeues it
        callbacks.append(SlurmRequeue())
    callbacks += extra_callbacks or []
    loggers = [instantiate(lg) for lg in (cfg.get("logger") or {}).values() if lg]
    kwargs = OmegaConf.to_container(cfg.trainer, resolve=True)
    kwargs.pop("_target_", None)
    kwargs["strategy"] = build_strategy(kwargs.get("strategy", "auto"))
    kwargs["accumulate_grad_batches"] = accumulation(cfg)  # from task.global_batch_size when the row sets one
    select = cfg.task.get("select_best")
    if select:
        callbacks.append(ModelCheckpoint(dirpath=str(run_dir / "checkpoints"), filename="best", monitor=select.monitor,
                                         mode=select.mode, save_top_k=1, save_last=False, auto_insert_metric_name=False))
        if select.get("every_n_steps"):  # HF eval_steps count optimizer steps; Lightning counts batches
            kwargs["val_check_interval"] = int(select.every_n_steps) * int(kwargs.get("accumulate_grad_batches", 1))
            kwargs["check_val_every_n_epoch"] = None
    return pl.Trainer(**kwargs, callbacks=callbacks, logger=loggers or False, default_root_dir=str(run_dir))


def cpu_fallback(cfg: DictConfig) -> dict[str, list[str]]:
    """On a CPU, half precision runs in fp32, with a notice: ``{key: [requested, used]}`` of what changed.

    The papers' bf16 (``trainer.precision=bf16-mixed``, ``backbone…dtype: bfloat16``) has no fast CPU kernels:
    one training step of a 2-layer stand-in took 35× longer in bf16 than in fp32 on a 2-core machine, and a
    Llama-2-7b-width step 7-11 minutes. fp16 AMP does not run on a CPU at all. The run's config and result
    record what ran; on a GPU the setting runs as written."""
    if cfg.trainer.get("accelerator") != "cpu":
        return {}
    changed = {}
    precision = str(cfg.trainer.get("precision", "32-true"))
    if precision.startswith(("bf16", "16")):
        changed["trainer.precision"] = [precision, "32-true"]
        cfg.trainer.precision = "32-true"
    for key, node in _dtype_nodes(cfg.backbone, "backbone"):
        if node.dtype in ("bfloat16", "float16"):
            changed[f"{key}.dtype"] = [node.dtype, "float32"]
            node.dtype = "float32"
    if changed:
        print("rankmix: notice: on the CPU half precision runs in fp32 (" + ", ".join(
            f"{k} {a} -> {b}" for k, (a, b) in changed.items()) + "); bf16 has no fast CPU kernels and fp16 AMP "
              "needs a GPU; on a GPU (trainer=gpu) the setting runs as written", file=sys.stderr)
    return changed


def _dtype_nodes(node: DictConfig, key: str):
    """``(key, node)`` of every part of a backbone config that sets a ``dtype``."""
    if "dtype" in node:
        yield key, node
    for k, v in node.items():
        if isinstance(v, DictConfig) and k not in ("tokenizer", "config"):
            yield from _dtype_nodes(v, f"{key}.{k}")


def selected_checkpoint(cfg: DictConfig, trainer: pl.Trainer) -> tuple[str | None, dict | None]:
    """The checkpoint to test and what was selected: the best by ``task.select_best.monitor`` when that ran,
    else the final weights (``None``)."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    select = cfg.task.get("select_best")
    if not select:
        return None, None
    best = next((c for c in trainer.callbacks if isinstance(c, ModelCheckpoint) and c.monitor == select.monitor), None)
    if best is None or not best.best_model_path:
        log.warning(f"task.select_best: no validation ran (every {select.get('every_n_steps')} steps); "
                    "testing the final weights")
        return None, {"monitor": select.monitor, "selected": "final weights (no validation ran)"}
    score = best.best_model_score
    return best.best_model_path, {"monitor": select.monitor, "mode": select.mode, "path": best.best_model_path,
                                  "score": float(score) if score is not None else None}


def fit_and_test(cfg: DictConfig, run_dir: Path, chash: str, on_fit: Callable[[], None] = lambda: None
                 ) -> tuple[dict, dict, pl.Trainer]:
    """Build the data, backbone, adapters and trainer, then fit and test; ``on_fit`` is called when training
    starts (what fails before it, a backbone that cannot load or a target that matches no layer, is refused, not
    a failed run)."""
    import lightning.pytorch as pl
    import torch

    from rankmix.adapters import adapter_layers, adapter_state_dict, check_context
    from rankmix.callbacks import LogRunConfig, TrainingModes
    from rankmix.modules import build
    from rankmix.modules.training import set_training_modes

    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    module, dm, report, model = build(cfg, run_dir)
    log.info(str(report))
    check_context(model, cfg.task.get("context", []))
    resume = _resumable_checkpoint(run_dir, chash, fresh=bool(cfg.rerun))
    if resume is None:  # a run from scratch: its log starts empty (a resumed one appends to it)
        (run_dir / "csv" / "metrics.csv").unlink(missing_ok=True)
    else:  # the rows logged after the checkpoint are logged again by the resumed steps
        truncate_log(run_dir / "csv" / "metrics.csv", torch.load(resume, map_location="cpu", weights_only=True)["global_step"])
    trainer = build_trainer(cfg, run_dir, [LogRunConfig({
        "run_key": run_key(HydraConfig.get().job.override_dirname),
        "params": {"trainable": report.trainable_parameters, "total": report.total_parameters},
        **OmegaConf.to_container(cfg, resolve=True)})])
    if resume is None:  # the adapters as initialised: ΔW = trained − initial (routing Fig. B8)
        torch.save(adapter_state_dict(model), run_dir / "adapter_init.pt")
    set_training_modes(module, cfg.backbone.get("frozen_dropout", True))
    live = live_models()  # this run's own, and nothing a sweep's earlier run left
    fit_started = time.time()
    on_fit()
    trainer.fit(module, datamodule=dm, ckpt_path=resume)
    fit_s = time.time() - fit_started
    drop_hpc_checkpoints(trainer, run_dir)
    final_loss = trainer.callback_metrics.get("train/loss_epoch")
    best_path, selection = selected_checkpoint(cfg, trainer)
    tested = trainer.test(module, datamodule=dm, verbose=False, ckpt_path=best_path)
    metrics = {k: float(v) for k, v in (tested[0] if tested else {}).items()}
    layers = list(adapter_layers(model).values())
    info = {
        "params": {
            "trainable": report.trainable_parameters,
            "total": report.total_parameters,
            "activated_per_token": sum(layer.activated_parameters() for layer in layers) if layers
            else report.trainable_parameters,  # peft-backed methods: every adapter weight is used
            "router": sum(layer.router_parameters() for layer in layers),
            "wrapped_layers": len(report.wrapped),
        },
        "train": {
            "resumed_from": resume,
            "global_step": trainer.global_step,
            "fit_s": round(fit_s, 2),  # trainer.fit (training and its validations), this process
            "epochs": trainer.current_epoch,
            "final_train_loss": float(final_loss) if final_loss is not None else None,
            "accelerator": type(trainer.accelerator).__name__,
            "live_models_at_fit": live,
            "devices": trainer.num_devices,
            "cluster_environment": type(trainer._accelerator_connector.cluster_environment).__name__,  # who starts ranks
            "batch_layout": batch_layout(cfg, trainer),  # devices x nodes x batch x accumulation = global batch
        },
    }
    if selection is not None:
        info["train"]["tested_checkpoint"] = selection
    modes = next((c.seen for c in trainer.callbacks if isinstance(c, TrainingModes)), None)
    if modes is not None:
        info["train"]["module_modes"] = modes
    if getattr(module, "evaluation_notes", None):
        info["evaluation"] = module.evaluation_notes  # e.g. a caption metric left out, and why
    return metrics, info, trainer


def truncate_log(path: Path, step: int) -> None:
    """Drop the rows of ``metrics.csv`` logged after optimizer step ``step`` (a killed epoch's, replayed on resume)."""
    import csv

    if not path.is_file():
        return
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        fields, rows = reader.fieldnames or [], list(reader)
    kept = [r for r in rows if not r.get("step") or int(float(r["step"])) <= step]
    if len(kept) != len(rows):
        with atomic_open(path) as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(kept)


def check_launch(cfg: DictConfig, multirun: bool) -> None:
    """Refuse set-ups that are known to go wrong before any work starts."""
    if str(cfg.trainer.get("accelerator")) in ("gpu", "cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ConfigError("trainer.accelerator", cfg.trainer.accelerator, "no CUDA GPU is visible on this "
                              "machine; use trainer=cpu here, or run on a machine with one")
    strategy = cfg.trainer.get("strategy")
    name = strategy if isinstance(strategy, str) else str((strategy or {}).get("_target_", ""))
    relaunches = cfg.trainer.devices not in (1, "1") and not name.endswith("ddp_spawn") and any(
        s in name.lower() for s in ("ddp", "fsdp", "deepspeed"))
    launcher = str(HydraConfig.get().launcher.get("_target_", ""))
    if multirun and relaunches and "BasicLauncher" in launcher:
        raise ConfigError("trainer.strategy", name, "re-launches the command line for each rank, which would "
                          "restart this sweep; use hydra/launcher=slurm for multi-GPU sweeps (see trainer/ddp.yaml)")
    if "wandb" in (cfg.get("logger") or {}) and os.environ.get("WANDB_MODE", "offline") == "online" and not (
            os.environ.get("WANDB_API_KEY") or (Path.home() / ".netrc").is_file()):
        raise ConfigError("logger", "wandb", "WANDB_MODE=online needs WANDB_API_KEY (or `wandb login`); "
                          "or run offline and `make sync-wandb` later")


def hpc_checkpoints(run_dir: Path) -> list[Path]:
    """The checkpoints Lightning wrote on SLURM's requeue signal (``<run dir>/hpc_ckpt_<n>.ckpt``)."""
    return sorted(run_dir.glob("hpc_ckpt_*.ckpt"))


def _resumable_checkpoint(run_dir: Path, chash: str, fresh: bool = False) -> str | None:
    """The newest checkpoint of this very configuration that loads: ``checkpoints/last.ckpt`` (an epoch's end) or
    an hpc checkpoint (a SLURM requeue, at a step boundary), whichever holds more optimizer steps (on a tie:
    ``last.ckpt``).

    Checkpoints of another configuration (an edited experiment file keeps the run's folder) and files cut
    short by a kill are set aside, never resumed; ``fresh`` (``rerun=true``) removes this configuration's own.
    """
    ckpt_dir, stamp = run_dir / "checkpoints", run_dir / "config_hash.txt"
    previous = stamp.read_text().strip() if stamp.is_file() else None
    if (ckpt_dir.is_dir() or hpc_checkpoints(run_dir)) and previous != chash:
        aside = run_dir / f"checkpoints.stale-{previous or 'unknown'}"
        shutil.rmtree(aside, ignore_errors=True)
        if ckpt_dir.is_dir():
            ckpt_dir.replace(aside)
        aside.mkdir(exist_ok=True)
        for hpc in hpc_checkpoints(run_dir):
            hpc.replace(aside / hpc.name)
        log.warning(f"the configuration changed since {run_dir}'s checkpoints were written; moved them to "
                    f"{aside.name}, starting fresh")
    run_dir.mkdir(parents=True, exist_ok=True)
    stamp.write_text(chash + "\n")
    if fresh:
        discard_checkpoints(run_dir)
    import torch

    newest, newest_step = None, -1
    for path in [ckpt_dir / "last.ckpt", *hpc_checkpoints(run_dir)]:
        if not path.is_file():
            continue
        try:
            step = int(torch.load(path, map_location="cpu", weights_only=True)["global_step"])
        except Exception as e:  # noqa: BLE001  (any unreadable file means: not this one)
            aside = path.with_suffix(".ckpt.unreadable")
            path.replace(aside)
            log.warning(f"{path} could not be read ({type(e).__name__}); moved to {aside.name}")
            continue
        if step > newest_step:
            newest, newest_step = path, step
    if newest is None:
        return None
    log.info(f"resuming from {newest} (optimizer step {newest_step})")
    return str(newest)


def drop_hpc_checkpoints(trainer: pl.Trainer, run_dir: Path) -> None:
    """Once fitting has finished, its hpc checkpoints are superseded (the final weights are in memory and in
    ``last.ckpt``); they are removed before anything is tested. Under SLURM, Lightning's ``test(ckpt_path=None)``
    otherwise loads the newest hpc checkpoint instead of the weights in memory, and a requeued run would report
    the metrics of the weights it had when the signal came."""
    if trainer.is_global_zero:
        for path in hpc_checkpoints(run_dir):
            path.unlink(missing_ok=True)
    trainer.strategy.barrier("drop_hpc_checkpoints")


def train(cfg: DictConfig) -> float | None:
    """Run one configuration; returns ``cfg.optimized_metric`` for sweepers (None when it failed)."""
    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    run_dir = Path(hc.runtime.output_dir)
    key = run_key(hc.job.override_dirname)
    started, t0 = _now(), time.time()
    path, chash = None, None
    lock = None
    started_fit = []  # a config refused before training starts is not a run: it leaves no failure record
    stop_on_sigterm(key, bool(cfg.get("rerun")))
    try:
        check_table_id(cfg)
        path = result_path(Path(cfg.paths.results_dir), cfg.table.id, key)
        validate(cfg)
        check_trainer_keys(cfg)
        check_launch(cfg, multirun)
        accumulation(cfg)  # a global batch the devices cannot reach is refused before any work
        fallback = cpu_fallback(cfg)
        record_data_fingerprint(cfg)
        chash = config_hash(cfg)
        check_writable(path.parent, run_dir)
        lock = lock_run_dir(run_dir) if _is_first_process() else None
        if lock is not None:  # what a killed writer of this run left (the lock keeps other writers of it out)
            for tmp in stale_temporaries(path) + stale_temporaries(run_dir / "result.json"):
                tmp.unlink(missing_ok=True)
        if not cfg.rerun and is_up_to_date(path, chash):
            failure_path(path).unlink(missing_ok=True)
            print(f"rankmix: up to date: {path} (rerun=true runs it again)")
            return _finish(cfg, read_json(path)["metrics"])
        config = OmegaConf.to_container(cfg, resolve=True)
        same = None if cfg.rerun else same_computation(Path(cfg.paths.results_dir), config, exclude=path)
        if same is not None:
            print(f"rankmix: {key}: same computation as {same}; its numbers are reused (rerun=true trains again)"
                  + ("; no wandb run is made for it (nothing was trained)" if cfg.get("logger", {}).get("wandb") else ""))
            done = read_json(same)
            result = {**done, "run": {**done["run"], "key": key, "table": cfg.table.id, "config_hash": chash,
                                      "reused_from": str(same)}, "config": config}
            write_json_atomic(path, result)
            failure_path(path).unlink(missing_ok=True)
            return _finish(cfg, result["metrics"], path)
        preflight.check(cfg)   # the projected memory against the GPU's free memory, before any weight loads
        metrics, info, trainer = fit_and_test(cfg, run_dir, chash, on_fit=lambda: started_fit.append(True))
        rank = trainer.global_rank
        del trainer  # nothing of this run's model outlives it (a sweep's next run loads its own)
        release_memory()
        if rank != 0:
            return None
        info["train"].update(wall_time_s=round(time.time() - t0, 2), peak_memory=peak_memory_mb())
        if fallback:
            info["train"]["cpu_fallback"] = fallback
        result = {
            "status": "ok",
            "run": {"key": key, "table": cfg.table.id, "scale": cfg.scale, "config_hash": chash, "format": RESULT_FORMAT,
                    "run_dir": str(run_dir), "started_at": started, "finished_at": _now()},
            "metrics": metrics,
            **info,
            "meta": {"versions": package_versions(), "environment": environment(Path(CONF_DIR).parent),
                     "git": git_state(Path(CONF_DIR).parent), "machine": machine()},
            "config": config,
        }
        for target in (path, run_dir / "result.json"):
            try:
                write_json_atomic(target, result)
            except OSError as e:  # a full disk, a folder made read-only meanwhile; last.ckpt stays valid
                raise RankmixError(f"{target}: cannot write the result ({e.strerror}); free space or fix the "
                                   "folder, then run the same command again (it resumes from last.ckpt)") from None
        failure_path(path).unlink(missing_ok=True)
        return _finish(cfg, metrics, path)
    except (RankmixError, *_lightning_config_errors()) as e:
        _record_failure(path if started_fit else None, key, cfg, chash, started, str(e))
        if started_fit:
            _rebuild_table(cfg)
        print(f"rankmix: error: {e}", file=sys.stderr)
        log.error(str(e))
        if multirun:
            return None
        sys.exit(1)
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM outside Lightning's fit (which stops by itself, exit code 1)
        print(f"rankmix: error: run {key} interrupted; run the same command again to resume it", file=sys.stderr)
        sys.exit(130)
    except Exception as e:
        _record_failure(path if started_fit else None, key, cfg, chash, started, f"{type(e).__name__}: {e}")
        if started_fit:
            _rebuild_table(cfg)
        if not multirun:
            raise
        log.error(f"run {key} failed; the sweep goes on:\n{traceback.format_exc()}")
        return None
    finally:
        if "wandb" in sys.modules:
            sys.modules["wandb"].finish()
        if lock is not None:
            lock.close()
        release_memory()


def _lightning_config_errors() -> tuple[type, ...]:
    """Lightning's own config error, when Lightning has been imported (a config refused before it never is)."""
    mod = sys.modules.get("lightning.fabric.utilities.exceptions")
    return (mod.MisconfigurationException,) if mod else ()


def stop_on_sigterm(key: str, rerun: bool = False) -> None:
    """SIGTERM (a timeout, ``docker stop``, ``kill``, SLURM's time limit) stops the run as Ctrl-C does: Lightning
    shuts down and the process exits non-zero, with a line saying so (naming the SLURM job under SLURM); a sweep
    stops there. Under SLURM, Lightning's requeue signal (SIGUSR1, which ``--signal`` asks for) is another signal:
    it is recorded here (``SlurmRequeue``) and Lightning saves and requeues at the next step boundary; the SIGTERM
    that SLURM sends when it then stops the job ends this process as above."""
    import signal

    job = os.environ.get("SLURM_JOB_ID")
    if job:
        from rankmix.callbacks import SlurmRequeue

        SlurmRequeue.listen()

    def handler(signum, frame):
        resume = ("the same command without rerun=true resumes it (with rerun=true it trains from scratch)" if rerun
                  else "the same command resumes it")
        print(f"rankmix: error: SIGTERM: stopping run {key}" + (f" (SLURM job {job})" if job else "") +
              f"; its last checkpoint is kept and {resume}", file=sys.stderr, flush=True)
        raise KeyboardInterrupt

    try:
        signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread (a launcher's worker): the launcher's own handling applies
        pass


def failure_path(path: Path) -> Path:
    """Where a run's failure is kept: ``results/<table>/failed/<key>.json``, apart from the finished results."""
    return path.parent.parent / "failed" / path.name


def _record_failure(path, key, cfg, chash, started, message) -> None:
    """A failed run leaves a ``status: failed`` JSON in ``failed/`` (listed under its table, never a row), so a
    finished result is never replaced by a failure; ``path`` None (a config refused before training, not a run)
    leaves none. In a sweep either is counted for the sweep's exit code."""
    if path is not None:
        failure = {"status": "failed", "error": message,
                   "run": {"key": key, "table": cfg.table.id, "scale": cfg.get("scale"), "config_hash": chash,
                           "started_at": started, "finished_at": _now()}}
        try:
            write_json_atomic(failure_path(path), failure)
        except OSError as e:
            print(f"rankmix: error: cannot record the failure in {failure_path(path)} ({e.strerror})",
                  file=sys.stderr)
    sweep_failures = os.environ.get(SWEEP_FAILURES)
    if sweep_failures and HydraConfig.get().mode == RunMode.MULTIRUN:
        with open(sweep_failures, "a") as f:
            f.write(f"{key}\t{message.splitlines()[0] if message else ''}\n")


def _is_first_process() -> bool:
    """Rank 0 of the run (ranks that Lightning or srun start re-enter the entry with RANK/LOCAL_RANK set)."""
    return all(os.environ.get(v, "0") == "0" for v in ("RANK", "LOCAL_RANK", "SLURM_PROCID"))


def lock_run_dir(run_dir: Path):
    """An exclusive lock on the run's folder for this process's run; a second identical run is refused."""
    import fcntl

    handle = open(run_dir / ".lock", "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        owner = handle.read().strip() or "another process"
        handle.close()
        raise RankmixError(f"{run_dir}: the same run is already running (pid {owner}); wait for it, or give "
                           "this one other overrides") from None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


def discard_checkpoints(run_dir: Path) -> None:
    """``rerun=true`` trains from scratch: the run's earlier checkpoints (hpc ones included) are removed, not
    resumed."""
    ckpt_dir = run_dir / "checkpoints"
    if ckpt_dir.is_dir():
        shutil.rmtree(ckpt_dir)
        log.info(f"rerun=true: removed {ckpt_dir}; training from scratch")
    for path in hpc_checkpoints(run_dir):
        path.unlink()


def live_models() -> int:
    """How many Hugging Face models this process holds, outermost only (a ViT + text encoder run holds two)."""
    import gc

    from transformers import PreTrainedModel

    # type(), not isinstance(): isinstance reads each object's __class__, and a deprecated module attribute
    # (torch.distributed.reduce_op) warns when touched
    models = [o for o in gc.get_objects() if issubclass(type(o), PreTrainedModel)]
    inner = {id(c) for m in models for c in m.modules() if c is not m}
    return sum(id(m) not in inner for m in models)


def release_memory() -> None:
    """Free what a finished run left (its model, trainer, cached GPU blocks) before a sweep's next run."""
    import gc

    gc.collect()
    torch = sys.modules.get("torch")  # nothing to free where no run got as far as importing it
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def _rebuild_table(cfg: DictConfig) -> None:
    """After a failure: the table lists it (best effort: a table that cannot be built is not this run's error)."""
    from rankmix.tables import build_table

    try:
        check_table_id(cfg)
        build_table(cfg.table.id, Path(cfg.paths.results_dir), Path(cfg.paths.paper_dir))
    except Exception as e:  # noqa: BLE001
        log.warning(f"table {cfg.table.get('id')} not rebuilt: {e}")


def _finish(cfg: DictConfig, metrics: dict, path: Path | None = None) -> float | None:
    """Report the result and rebuild its table; a table that cannot be built yet (a gain whose baseline run has
    not finished) is said in one line and does not fail the finished run."""
    from rankmix.tables import build_table

    shown = {k: v for k, v in sorted(metrics.items()) if k.startswith("test/") and k.count("/") == 1}
    if shown:
        print("rankmix: metrics: " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                                for k, v in shown.items()))
    if path is not None:
        print(f"rankmix: result: {path}")
    try:
        table_md = build_table(cfg.table.id, Path(cfg.paths.results_dir), Path(cfg.paths.paper_dir))
        print(f"rankmix: table: {table_md}")
    except RankmixError as e:
        print(f"rankmix: table {cfg.table.id} not built yet: {e}")
    return metrics.get(cfg.get("optimized_metric"))


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
def main(cfg: DictConfig) -> float | None:
    return train(cfg)


if __name__ == "__main__":
    main()
