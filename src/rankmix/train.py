"""Training entry: ``python -m rankmix.train [group=option ...] [key=value ...]`` (Hydra; ``-m`` for sweeps).

Composes the config, builds backbone → injects the adapter method → builds the task's data module and
LightningModule → fits (resuming from the run's ``last.ckpt`` when one exists) → tests → writes one
result JSON per run (atomically) and rebuilds the run's results table.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path

import hydra
import lightning.pytorch as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from rankmix.config import apply_scale, config_hash, register_resolvers, run_key, validate
from rankmix.errors import ConfigError, RankmixError
from rankmix.results import (
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

log = logging.getLogger("rankmix.train")
CONF_DIR = str(Path(__file__).resolve().parents[2] / "conf")
register_resolvers()


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def build_trainer(cfg: DictConfig, run_dir: Path) -> pl.Trainer:
    """Lightning's Trainer from ``cfg.trainer``, the callbacks and loggers; with ``task.select_best`` (a paper's
    checkpoint selection, e.g. MoSLoRA's ``load_best_model_at_end``) also validation every ``every_n_steps``
    optimizer steps and a ModelCheckpoint that keeps the weights with the best ``monitor``."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    from rankmix.callbacks import TrainingModes
    from rankmix.distributed import build_strategy

    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c] + [TrainingModes()]
    loggers = [instantiate(lg) for lg in (cfg.get("logger") or {}).values() if lg]
    kwargs = OmegaConf.to_container(cfg.trainer, resolve=True)
    kwargs.pop("_target_", None)
    kwargs["strategy"] = build_strategy(kwargs.get("strategy", "auto"))
    select = cfg.task.get("select_best")
    if select:
        callbacks.append(ModelCheckpoint(dirpath=str(run_dir / "checkpoints"), filename="best", monitor=select.monitor,
                                         mode=select.mode, save_top_k=1, save_last=False, auto_insert_metric_name=False))
        if select.get("every_n_steps"):  # HF eval_steps count optimizer steps; Lightning counts batches
            kwargs["val_check_interval"] = int(select.every_n_steps) * int(kwargs.get("accumulate_grad_batches", 1))
            kwargs["check_val_every_n_epoch"] = None
    return pl.Trainer(**kwargs, callbacks=callbacks, logger=loggers or False, default_root_dir=str(run_dir))


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


def fit_and_test(cfg: DictConfig, run_dir: Path, chash: str) -> tuple[dict, dict, pl.Trainer]:
    from rankmix.adapters import adapter_layers, adapter_state_dict, check_context, inject
    from rankmix.backbones import build_backbone, load_tokenizer
    from rankmix.callbacks import TrainingModes
    from rankmix.data.loading import prepared_datamodule
    from rankmix.modules.causal_lm import CausalLMModule
    from rankmix.modules.training import set_training_modes

    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    kind = cfg.task.get("kind", "causal_lm")
    if kind in ("vqa", "caption", "vl_multitask"):
        from rankmix.modules.captioning import build_captioning
        from rankmix.modules.clip_bart import build_vl_multitask
        from rankmix.modules.vqa import build_vqa

        build = {"vqa": build_vqa, "caption": build_captioning, "vl_multitask": build_vl_multitask}[kind]
        module, dm, report, model = build(cfg, run_dir)
    else:
        dm = prepared_datamodule(cfg)
        tokenizer = load_tokenizer(cfg.backbone.tokenizer, [dm.files()["train"]], run_dir / "tokenizer",
                                   dm.template_text())
        model = build_backbone(cfg.backbone, tokenizer)
        report = inject(model, OmegaConf.to_container(cfg.method, resolve=True))
        dm.set_tokenizer(tokenizer)
        module = CausalLMModule(model, tokenizer, max_new_tokens=cfg.task.datamodule.max_new_tokens,
                                num_beams=cfg.task.get("num_beams", 1),
                                validation_generates=(cfg.task.get("select_best") or {}).get("generate", True),
                                scorer=cfg.task.get("scorer", "generic"),
                                scorer_options=OmegaConf.to_container(cfg.task.scorer_options) if cfg.task.get("scorer_options") else {},
                                predictions_path=str(run_dir / "predictions.jsonl"), **cfg.optimizer)
    log.info(str(report))
    check_context(model, cfg.task.get("context", []))
    trainer = build_trainer(cfg, run_dir)
    resume = _resumable_checkpoint(run_dir, chash)
    if resume is None:  # the adapters as initialised: ΔW = trained − initial (routing Fig. B8)
        torch.save(adapter_state_dict(model), run_dir / "adapter_init.pt")
    set_training_modes(module, cfg.backbone.get("frozen_dropout", True))
    trainer.fit(module, datamodule=dm, ckpt_path=resume)
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
            "epochs": trainer.current_epoch,
            "final_train_loss": float(final_loss) if final_loss is not None else None,
            "accelerator": type(trainer.accelerator).__name__,
            "devices": trainer.num_devices,
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


def check_launch(cfg: DictConfig, multirun: bool) -> None:
    """Refuse set-ups that are known to go wrong before any work starts."""
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


def _resumable_checkpoint(run_dir: Path, chash: str) -> str | None:
    """``last.ckpt`` when it exists, loads, and was written by this very configuration.

    Checkpoints of another configuration (an edited experiment file keeps the run's folder) and files cut
    short by a kill are set aside, never resumed.
    """
    ckpt_dir, stamp = run_dir / "checkpoints", run_dir / "config_hash.txt"
    previous = stamp.read_text().strip() if stamp.is_file() else None
    if ckpt_dir.is_dir() and previous != chash:
        aside = run_dir / f"checkpoints.stale-{previous or 'unknown'}"
        shutil.rmtree(aside, ignore_errors=True)
        ckpt_dir.replace(aside)
        log.warning(f"the configuration changed since {ckpt_dir} was written; moved it to {aside.name}, starting fresh")
    run_dir.mkdir(parents=True, exist_ok=True)
    stamp.write_text(chash + "\n")
    last = ckpt_dir / "last.ckpt"
    if not last.is_file():
        return None
    try:
        torch.load(last, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001  (any unreadable file means: start over)
        aside = last.with_suffix(".ckpt.unreadable")
        last.replace(aside)
        log.warning(f"{last} could not be read ({type(e).__name__}); moved to {aside.name}, starting from scratch")
        return None
    log.info(f"resuming from {last}")
    return str(last)


def train(cfg: DictConfig) -> float | None:
    """Run one configuration; returns ``cfg.optimized_metric`` for sweepers (None when it failed)."""
    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    run_dir = Path(hc.runtime.output_dir)
    key = run_key(hc.job.override_dirname)
    started, t0 = _now(), time.time()
    path, chash = None, None
    try:
        path = result_path(Path(cfg.paths.results_dir), cfg.table.id, key)
        apply_scale(cfg)
        validate(cfg)
        check_launch(cfg, multirun)
        chash = config_hash(cfg)
        if not cfg.rerun and is_up_to_date(path, chash):
            print(f"rankmix: up to date: {path} (rerun=true runs it again)")
            return _finish(cfg, read_json(path)["metrics"])
        config = OmegaConf.to_container(cfg, resolve=True)
        same = None if cfg.rerun else same_computation(Path(cfg.paths.results_dir), config, exclude=path)
        if same is not None:
            print(f"rankmix: {key}: same computation as {same}; its numbers are reused (rerun=true trains again)")
            done = read_json(same)
            result = {**done, "run": {**done["run"], "key": key, "table": cfg.table.id, "config_hash": chash,
                                      "reused_from": str(same)}, "config": config}
            write_json_atomic(path, result)
            return _finish(cfg, result["metrics"], path)
        metrics, info, trainer = fit_and_test(cfg, run_dir, chash)
        if trainer.global_rank != 0:
            return None
        info["train"].update(wall_time_s=round(time.time() - t0, 2), peak_memory=peak_memory_mb())
        result = {
            "status": "ok",
            "run": {"key": key, "table": cfg.table.id, "scale": cfg.scale, "config_hash": chash,
                    "run_dir": str(run_dir), "started_at": started, "finished_at": _now()},
            "metrics": metrics,
            **info,
            "meta": {"versions": package_versions(), "git": git_state(Path(CONF_DIR).parent), "machine": machine()},
            "config": config,
        }
        write_json_atomic(path, result)
        write_json_atomic(run_dir / "result.json", result)
        return _finish(cfg, metrics, path)
    except (RankmixError, pl.utilities.exceptions.MisconfigurationException) as e:
        _record_failure(path, key, cfg, chash, started, str(e))
        print(f"rankmix: error: {e}", file=sys.stderr)
        log.error(str(e))
        if multirun:
            return None
        sys.exit(1)
    except Exception as e:
        _record_failure(path, key, cfg, chash, started, f"{type(e).__name__}: {e}")
        if not multirun:
            raise
        log.error(f"run {key} failed; the sweep goes on:\n{traceback.format_exc()}")
        return None
    finally:
        if "wandb" in sys.modules:
            sys.modules["wandb"].finish()


def _record_failure(path, key, cfg, chash, started, message) -> None:
    """A failed run leaves a ``status: failed`` JSON (never a table row) so sweeps can report it."""
    if path is None:
        return
    write_json_atomic(path, {
        "status": "failed", "error": message,
        "run": {"key": key, "table": cfg.table.id, "scale": cfg.get("scale"), "config_hash": chash,
                "started_at": started, "finished_at": _now()},
    })


def _finish(cfg: DictConfig, metrics: dict, path: Path | None = None) -> float | None:
    from rankmix.tables import build_table

    table_md = build_table(cfg.table.id, Path(cfg.paths.results_dir), Path(cfg.paths.paper_dir))
    if path is not None:
        print(f"rankmix: result: {path}")
    print(f"rankmix: table: {table_md}")
    return metrics.get(cfg.get("optimized_metric"))


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
def main(cfg: DictConfig) -> float | None:
    return train(cfg)


if __name__ == "__main__":
    main()
