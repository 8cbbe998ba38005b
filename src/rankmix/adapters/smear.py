"""SMEAR baseline of SMoRA (§E.3): merge the experts' parameters per token by the gate, then apply one LoRA.

    y = W0 x + (α/r) (Σ_e g_e B_e)(Σ_e g_e A_e) dropout(x),   g = softmax(W_g dropout(x))

Per-token merging follows the official SMoRA baseline (the original SMEAR routes once per example).
Computed without materialising per-token matrices: h = Σ_e g_e A_e x, then Σ_e g_e B_e h.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rankmix.adapters.experts import ExpertBankLayer
from rankmix.adapters.registry import register


@register("smear")
class SMEARLayer(ExpertBankLayer):
    """SMEAR on one linear layer: y = W0 x + (α/r) (Σ_e g_e B_e)(Σ_e g_e A_e) dropout(x), g = softmax(W_g dropout(x)),
    the experts merged per token; routed, so it has no fixed ΔW to merge."""

    peft_export = "rankmix"

    def __init__(self, base_layer: nn.Module, num_experts: int = 8, r: int = 8, alpha: float = 16.0,
                 dropout: float = 0.0):
        super().__init__(base_layer, num_experts, r, alpha, dropout)

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        xd = self.dropout(x.to(self.experts_A.dtype)).reshape(-1, self.in_features)
        g = F.softmax(self.router(xd), dim=-1)
        self.record_load(g)
        h = torch.einsum("te,ter->tr", g, self.expert_features(xd))  # merged A applied to x
        out = self.combine(g.unsqueeze(-1) * h.unsqueeze(1))  # merged B applied to h
        return (out * self.scaling).reshape(*shape[:-1], self.out_features)

    def activated_parameters(self) -> int:
        return self.trainable_parameters()
