"""LoRA (Hu et al., 2021): y = W0 x + (α/r) · B A dropout(x).

A ∈ R^{r×d_in} is kaiming-uniform initialised (a = √5, as nn.Linear), B ∈ R^{d_out×r} is zero, so the
wrapped layer starts equal to the base layer. ΔW = (α/r) B A is mergeable.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from rankmix.adapters.base import AdapterLayer
from rankmix.adapters.registry import register
from rankmix.checked import positive_int, probability


@register("lora")
class LoRALayer(AdapterLayer):
    """LoRA on one linear layer: y = W0 x + (α/r) · B A dropout(x), A kaiming-uniform, B zero; ΔW = (α/r) B A merges."""

    mergeable = True
    peft_export = "lora"

    def __init__(self, base_layer: nn.Module, r: int = 8, alpha: float = 16.0, dropout: float = 0.0):
        super().__init__(base_layer)
        self.r = positive_int("r", r)
        self.alpha = float(alpha)
        self.scaling = self.alpha / self.r
        self.dropout = nn.Dropout(probability("dropout", dropout)) if dropout else nn.Identity()
        self.lora_A = nn.Linear(self.in_features, self.r, bias=False)
        self.lora_B = nn.Linear(self.r, self.out_features, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.lora_A.weight.dtype)
        return self.lora_B(self.lora_A(self.dropout(x))) * self.scaling

    def delta_weight(self) -> torch.Tensor:
        return (self.lora_B.weight @ self.lora_A.weight) * self.scaling

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, r={self.r}, alpha={self.alpha}"
