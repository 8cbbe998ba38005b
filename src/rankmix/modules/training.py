"""Training helpers the modules share: AdamW with a warm-up schedule, and the modules' train/eval modes."""

from __future__ import annotations

import torch
from transformers import (
    get_constant_schedule_with_warmup,
    get_cosine_schedule_with_warmup,
    get_linear_schedule_with_warmup,
)

SCHEDULES = {"linear": get_linear_schedule_with_warmup, "cosine": get_cosine_schedule_with_warmup,
             "constant": lambda opt, warmup, total: get_constant_schedule_with_warmup(opt, warmup)}


def adamw_with_warmup(trainer, params, lr: float, weight_decay: float, betas, warmup_ratio: float,
                      warmup_steps: int | None = None, schedule: str = "linear", eps: float = 1e-8) -> dict:
    """Lightning's optimizer dict: AdamW over ``params`` (tensors or param groups) and a per-step schedule that
    warms up for ``warmup_steps`` (when set) or ``warmup_ratio`` of the run's steps."""
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=tuple(betas), eps=eps)
    total = int(trainer.estimated_stepping_batches)
    warmup = warmup_steps if warmup_steps is not None else int(warmup_ratio * total)
    sched = SCHEDULES[schedule](opt, min(warmup, total), total)
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def set_training_modes(module: torch.nn.Module, frozen_dropout: bool = True) -> None:
    """Train mode for the whole module before fitting, as the official codes train (HF Trainer, VL-Adapter and
    Routing_VLPEFT call ``model.train()``; ``from_pretrained`` returns eval mode and Lightning keeps a module's
    mode). ``frozen_dropout=False`` keeps the frozen backbone's own dropout layers off; the adapters' stay on. A frozen
    ViT is put in eval at each call (``vision_prefix.visual_features``), as in the official code."""
    from rankmix.adapters import adapter_layers

    module.train()
    if not frozen_dropout:
        own = {id(m) for layer in adapter_layers(module).values()
               for name, m in layer.named_modules() if not name.startswith("base_layer")}
        for m in module.modules():
            if isinstance(m, torch.nn.Dropout) and id(m) not in own:
                m.eval()
