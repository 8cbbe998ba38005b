"""The base of every task's LightningModule: the optimizer and schedule from ``cfg.optimizer``, the checkpoint
policy, and the scored evaluation (``rankmix.modules.evaluation``).

Optimizer: AdamW over ``param_groups()`` (the trainable parameters); the learning rate warms up linearly over
``warmup_steps`` (when set) or ``warmup_ratio`` of the run's optimizer steps, then decays to 0 (``schedule``: linear
or cosine). Checkpoints hold what a run changes: the trainable weights (adapters, heads, unfrozen backbone parts)
and every adapter buffer (SMoRA's balancing bias), not the frozen backbone, which is rebuilt from its config;
a checkpoint that lacks one of this model's adapter tensors is refused.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields

import lightning.pytorch as pl

from rankmix.adapters import adapter_state_dict
from rankmix.checked import choice
from rankmix.errors import ConfigError, RankmixError
from rankmix.modules.evaluation import ScoredEvaluation
from rankmix.modules.training import SCHEDULES, adamw_with_warmup


@dataclass(frozen=True)
class OptimizerSettings:
    """``cfg.optimizer``: every key it may hold."""

    lr: float
    weight_decay: float = 0.0
    warmup_ratio: float = 0.0
    warmup_steps: int | None = None
    betas: tuple[float, float] = (0.9, 0.999)
    schedule: str = "linear"
    eps: float = 1e-8

    @classmethod
    def from_config(cls, optimizer: Mapping) -> OptimizerSettings:
        known = [f.name for f in fields(cls)]
        for key in optimizer:
            if key not in known:
                raise ConfigError(f"optimizer.{key}", optimizer[key], f"not an optimizer setting; settings: {', '.join(known)}")
        settings = cls(**{**optimizer, "betas": tuple(optimizer.get("betas", cls.betas))})
        choice("optimizer.schedule", settings.schedule, tuple(SCHEDULES))
        return settings


class AdapterModule(ScoredEvaluation, pl.LightningModule):
    """``model`` trained with ``optimizer`` (a ``cfg.optimizer`` mapping); subclasses add the task's loss
    (``training_step``), its evaluation (``_eval_step``, ``score``) and, where the recipe has them, parameter groups."""

    def __init__(self, model, optimizer: Mapping, predictions_path: str | None = None):
        super().__init__()
        self.model = model
        self.optimizer_settings = OptimizerSettings.from_config(optimizer)
        self._init_evaluation(predictions_path)
        self.strict_loading = False  # checkpoints hold only what the run trains (on_save_checkpoint)

    def param_groups(self) -> list:
        return [p for p in self.trainer.model.parameters() if p.requires_grad]

    def configure_optimizers(self):
        s = self.optimizer_settings
        return adamw_with_warmup(self.trainer, self.param_groups(), s.lr, s.weight_decay, s.betas, s.warmup_ratio,
                                 s.warmup_steps, s.schedule, eps=s.eps)

    def on_save_checkpoint(self, checkpoint):
        keep = {n for n, p in self.named_parameters() if p.requires_grad} | set(adapter_state_dict(self))
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}

    def on_load_checkpoint(self, checkpoint):
        missing = sorted(set(adapter_state_dict(self)) - set(checkpoint["state_dict"]))
        if missing:
            raise RankmixError(f"checkpoint lacks {len(missing)} adapter tensors (first: {missing[0]}); was it "
                               "written with another method or target_modules?")
