"""What the training modules share: AdamW with a warm-up schedule, and checkpoints of the trainable weights only."""

from __future__ import annotations

import torch
from transformers import get_cosine_schedule_with_warmup, get_linear_schedule_with_warmup

SCHEDULES = {"linear": get_linear_schedule_with_warmup, "cosine": get_cosine_schedule_with_warmup}


def adamw_with_warmup(trainer, params, lr: float, weight_decay: float, betas, warmup_ratio: float,
                      warmup_steps: int | None = None, schedule: str = "linear", eps: float = 1e-8) -> dict:
    """Lightning's optimizer dict: AdamW over ``params`` (tensors or param groups) and a per-step schedule that
    warms up for ``warmup_steps`` (when set) or ``warmup_ratio`` of the run's steps."""
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=tuple(betas), eps=eps)
    total = int(trainer.estimated_stepping_batches)
    warmup = warmup_steps if warmup_steps is not None else int(warmup_ratio * total)
    sched = SCHEDULES[schedule](opt, min(warmup, total), total)
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def trainable(trainer) -> list[torch.nn.Parameter]:
    return [p for p in trainer.model.parameters() if p.requires_grad]


class TrainableCheckpoint:
    """LightningModule mixin: checkpoints hold the trainable weights only (adapters, heads), not the frozen backbone."""

    def on_save_checkpoint(self, checkpoint):
        keep = {n for n, p in self.named_parameters() if p.requires_grad}
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}
