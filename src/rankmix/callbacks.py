"""Lightning callbacks for reliable runs: stop on a non-finite loss, reseed every epoch for exact resume."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch

from rankmix.errors import NonFiniteLossError


class FiniteLossGuard(pl.Callback):
    """Stop training with a clear message as soon as the training loss is NaN or infinite."""

    def on_train_start(self, trainer, pl_module):
        from rankmix.adapters.peft_methods import peft_tuner, resolve_total_step

        tuner = peft_tuner(pl_module)
        if tuner is not None and hasattr(tuner, "update_and_allocate"):
            resolve_total_step(tuner, int(trainer.estimated_stepping_batches))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        value = float(loss.detach()) if loss is not None else 0.0
        if not math.isfinite(value):
            raise NonFiniteLossError(
                f"training loss became {value} at step {trainer.global_step} (epoch {trainer.current_epoch}); "
                "lower optimizer.lr or method.alpha, or set trainer.gradient_clip_val"
            )


class EpochReseed(pl.Callback):
    """Seed the global RNGs from (seed, epoch) at every epoch start.

    Dropout and any other global-RNG draws of an epoch then do not depend on what ran before it, so a
    run resumed from an epoch-end checkpoint reproduces the uninterrupted run exactly.
    """

    def __init__(self, seed: int):
        self.seed = seed

    def on_train_epoch_start(self, trainer, pl_module):
        s = (self.seed * 1_000_003 + trainer.current_epoch) % (2**31)
        random.seed(s)
        np.random.seed(s)
        torch.manual_seed(s)


class AdapterRouting(pl.Callback):
    """Drives the adapters' per-step hooks and collects their routing statistics.

    Calls ``on_optimizer_step()`` of every adapter layer once per optimizer step (SMoRA's ``per_step``
    bias update) and peft's AdaLoRA budget update after it; logs the mean MaxVio of routed layers per
    training epoch (``routing/maxvio``); appends every routed layer's statistics (loads, MaxVio, gate
    entropy) to ``<run dir>/routing_stats_train.jsonl`` once per epoch; and writes the test-time statistics
    to ``<run dir>/routing_stats.json``.
    """

    @staticmethod
    def _routed(pl_module):
        from rankmix.adapters import adapter_layers

        return {n: m for n, m in adapter_layers(pl_module).items() if m.routes()}

    def _reset(self, pl_module):
        for layer in self._routed(pl_module).values():
            layer.reset_routing_stats()

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        from rankmix.adapters import adapter_layers

        for layer in adapter_layers(pl_module).values():
            layer.on_optimizer_step()

    def on_train_start(self, trainer, pl_module):
        from rankmix.adapters.peft_methods import peft_tuner, resolve_total_step

        tuner = peft_tuner(pl_module)
        if tuner is not None and hasattr(tuner, "update_and_allocate"):
            resolve_total_step(tuner, int(trainer.estimated_stepping_batches))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        from rankmix.adapters.peft_methods import peft_tuner

        tuner = peft_tuner(pl_module)
        if tuner is not None and hasattr(tuner, "update_and_allocate"):  # AdaLoRA's rank budget
            tuner.update_and_allocate(trainer.global_step)

    def on_train_epoch_start(self, trainer, pl_module):
        self._reset(pl_module)

    def _collect(self, pl_module, maxvio_key: str) -> dict:
        """Every routed layer's statistics; logs their mean MaxVio under ``maxvio_key`` when there is one."""
        stats = {n: m.routing_stats() for n, m in self._routed(pl_module).items()}
        vios = [s["maxvio"] for s in stats.values() if "maxvio" in s]
        if vios:
            pl_module.log(maxvio_key, sum(vios) / len(vios))
        return stats

    def on_train_epoch_end(self, trainer, pl_module):
        stats = self._collect(pl_module, "routing/maxvio")
        if stats and trainer.is_global_zero:  # one line per epoch, for the load-balancing figures
            with open(Path(trainer.default_root_dir) / "routing_stats_train.jsonl", "a") as f:
                f.write(json.dumps({"epoch": trainer.current_epoch, "step": trainer.global_step, "layers": stats}) + "\n")

    def on_test_epoch_start(self, trainer, pl_module):
        self._reset(pl_module)

    def on_test_epoch_end(self, trainer, pl_module):
        stats = self._collect(pl_module, "test/routing/maxvio")
        if stats and trainer.is_global_zero:
            from rankmix.results import write_json_atomic

            write_json_atomic(Path(trainer.default_root_dir) / "routing_stats.json", stats)


class LogRunConfig(pl.Callback):
    """Give every logger the run's resolved config, run key and parameter counts when fitting starts (after the
    processes of a distributed run are set up; rank 0 writes): the wandb dashboard compares runs by these, and the
    CSV logger keeps them in ``hparams.yaml``."""

    def __init__(self, params: dict):
        self.params = params

    def on_fit_start(self, trainer, pl_module):
        for logger in trainer.loggers:
            logger.log_hyperparams(self.params)


class TrainingModes(pl.Callback):
    """How many submodules are in train and in eval mode during the first training step (HF models apply dropout by
    their module's mode): ``{"train": n, "eval": m}``, written to the run's JSON as ``train.module_modes``. Read after
    the step, when a frozen ViT has been put in eval."""

    def __init__(self):
        self.seen: dict | None = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.seen is None:
            modes = [m.training for m in pl_module.modules()]
            self.seen = {"train": sum(modes), "eval": len(modes) - sum(modes)}
