"""HydraLoRA baseline of SMoRA (§E.4; Tian et al., 2024): one shared A, N B heads mixed by a router.

    y = W0 x + (α/r) Σ_i softmax(W_r x)_i B_i A dropout(x)

A (``lora_A.weight``, r × d_in) kaiming-uniform; heads ``lora_B`` (N × d_out × r) zero; router
Linear(d_in, N, bias=False) kaiming-uniform, fed x without dropout, softmax in fp32 — as the official code.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from rankmix.adapters.base import AdapterLayer
from rankmix.adapters.registry import register
from rankmix.checked import positive_int, probability


@register("hydralora")
class HydraLoRALayer(AdapterLayer):
    """HydraLoRA on one linear layer: y = W0 x + (α/r) Σ_i softmax(W_r x)_i B_i A dropout(x), one shared A and N heads
    B_i; routed, so it has no fixed ΔW to merge."""

    peft_export = "rankmix"

    def __init__(self, base_layer: nn.Module, r: int = 8, num_experts: int = 4, alpha: float = 16.0,
                 dropout: float = 0.0):
        super().__init__(base_layer)
        self.r, self.num_experts = positive_int("r", r), positive_int("num_experts", num_experts)
        self.alpha = float(alpha)
        self.scaling = self.alpha / self.r
        self.dropout = nn.Dropout(probability("dropout", dropout)) if dropout else nn.Identity()
        self.lora_A = nn.Linear(self.in_features, self.r, bias=False)
        self.lora_B = nn.Parameter(torch.zeros(self.num_experts, self.out_features, self.r))
        self.router = nn.Linear(self.in_features, self.num_experts, bias=False)
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.kaiming_uniform_(self.router.weight, a=math.sqrt(5))

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.lora_A.weight.dtype)
        g = torch.softmax(self.router(x).float(), dim=-1).to(x.dtype)
        h = self.lora_A(self.dropout(x))
        return torch.einsum("...n,...r,nor->...o", g, h, self.lora_B) * self.scaling

    def activated_parameters(self) -> int:
        return self.trainable_parameters()

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, r={self.r}, num_experts={self.num_experts}"
