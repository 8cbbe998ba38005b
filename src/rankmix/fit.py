"""One run's training and test: the Trainer built from config, the CPU's precision fallback, fit (resuming from
the run's newest checkpoint) and test, and the memory a finished run leaves."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from rankmix.batching import accumulation, batch_layout
from rankmix.checkpoints import drop_hpc_checkpoints, resumable_checkpoint, selected_checkpoint, truncate_log
from rankmix.config import OWN_TRAINER_KEYS, run_key

if TYPE_CHECKING:
    import lightning.pytorch as pl

log = logging.getLogger("rankmix.train")


def build_trainer(cfg: DictConfig, run_dir: Path, extra_callbacks: list | None = None) -> pl.Trainer:
    """Lightning's Trainer, instantiated from ``cfg.trainer`` (its strategy from ``trainer.strategy``, a name or a
    ``_target_`` node) with the callbacks of ``cfg.callbacks`` (the checkpoint ``task.select_best`` asks for
    included) and the loggers of ``cfg.logger``. What the config cannot hold is added here: the accumulation a
    row's ``task.global_batch_size`` asks of these devices, the run's own ``extra_callbacks`` (its record for the
    loggers), and with ``task.select_best`` validation every ``every_n_steps`` optimizer steps."""
    from rankmix.quiet import quiet_lightning

    quiet_lightning()
    callbacks = [c for c in (instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c) if c is not None]
    callbacks += extra_callbacks or []
    loggers = [instantiate(lg) for lg in (cfg.get("logger") or {}).values() if lg]
    kwargs = {"accumulate_grad_batches": accumulation(cfg)}  # from task.global_batch_size when the row sets one
    select = cfg.task.get("select_best")
    if select and select.get("every_n_steps"):  # HF eval_steps count optimizer steps; Lightning counts batches
        kwargs["val_check_interval"] = int(select.every_n_steps) * kwargs["accumulate_grad_batches"]
        kwargs["check_val_every_n_epoch"] = None
    trainer = {k: v for k, v in OmegaConf.to_container(cfg.trainer, resolve=True).items() if k not in OWN_TRAINER_KEYS}
    return instantiate(trainer, **kwargs, callbacks=callbacks, logger=loggers or False,
                       default_root_dir=str(run_dir), _convert_="all")


def cpu_fallback(cfg: DictConfig) -> dict[str, list[str]]:
    """On a CPU, half precision runs in fp32, with a notice: ``{key: [requested, used]}`` of what changed.

    The papers' bf16 (``trainer.precision=bf16-mixed``, ``backbone…dtype: bfloat16``) has no fast CPU kernels:
    one training step of a 2-layer stand-in took 35× longer in bf16 than in fp32 on a 2-core machine, and a
    Llama-2-7b-width step 7-11 minutes. fp16 AMP does not run on a CPU at all. The run's config and result
    record what ran; on a GPU the setting runs as written."""
    if cfg.trainer.get("accelerator") != "cpu":
        return {}
    changed = {}
    precision = str(cfg.trainer.precision)
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
    check_context(model, cfg.task.context)
    resume = resumable_checkpoint(run_dir, chash, fresh=bool(cfg.rerun))
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
    set_training_modes(module, cfg.backbone.frozen_dropout)
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
