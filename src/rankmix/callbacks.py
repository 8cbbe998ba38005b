"""Lightning callbacks for reliable runs: stop on a non-finite loss, reseed every epoch for exact resume."""

from __future__ import annotations

import math
import random

import lightning.pytorch as pl
import numpy as np
import torch

from rankmix.errors import NonFiniteLossError


class FiniteLossGuard(pl.Callback):
    """Stop training with a clear message as soon as the training loss is NaN or infinite."""

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
