"""A run's checkpoints: which one a run resumes from (its newest of this very configuration), what ``rerun=true``
and a finished fit remove, and which weights are tested (``task.select_best``)."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from omegaconf import DictConfig

from rankmix.atomic import atomic_open

if TYPE_CHECKING:
    import lightning.pytorch as pl

log = logging.getLogger("rankmix.train")


def hpc_checkpoints(run_dir: Path) -> list[Path]:
    """The checkpoints Lightning wrote on SLURM's requeue signal (``<run dir>/hpc_ckpt_<n>.ckpt``)."""
    return sorted(run_dir.glob("hpc_ckpt_*.ckpt"))


def resumable_checkpoint(run_dir: Path, chash: str, fresh: bool = False) -> str | None:
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


def discard_checkpoints(run_dir: Path) -> None:
    """``rerun=true`` trains from scratch: the run's earlier checkpoints (hpc ones included) are removed, not
    resumed."""
    ckpt_dir = run_dir / "checkpoints"
    if ckpt_dir.is_dir():
        shutil.rmtree(ckpt_dir)
        log.info(f"rerun=true: removed {ckpt_dir}; training from scratch")
    for path in hpc_checkpoints(run_dir):
        path.unlink()


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


def best_checkpoint(select, dirpath: str):
    """The ModelCheckpoint that keeps the weights with the best ``select.monitor`` (``task.select_best``: a paper's
    checkpoint selection, e.g. MoSLoRA's ``load_best_model_at_end``), as ``best.ckpt``; None (no callback) when
    the task tests its final weights (``select_best: null``). Named in ``conf/callbacks``."""
    if not select:
        return None
    from lightning.pytorch.callbacks import ModelCheckpoint

    return ModelCheckpoint(dirpath=dirpath, filename="best", monitor=select["monitor"], mode=select["mode"],
                           save_top_k=1, save_last=False, auto_insert_metric_name=False)


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
