"""A bank of E LoRA experts of rank r, shared by the LoRA-MoE and SMEAR baselines (SMoRA App. E).

``experts_A`` (E × r × d_in) is kaiming-uniform per expert (a = √5), ``experts_B`` (E × d_out × r) is zero, so
a wrapped layer starts equal to its base layer.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from rankmix.adapters.base import AdapterLayer
from rankmix.checked import positive_int, probability
from rankmix.distributed import data_parallel_sum


class ExpertBankLayer(AdapterLayer):
    """Base for methods that mix E LoRA experts with a router ``Linear(d_in, E, bias=False)``."""

    def __init__(self, base_layer: nn.Module, num_experts: int, r: int, alpha: float, dropout: float):
        super().__init__(base_layer)
        self.num_experts, self.r = positive_int("num_experts", num_experts), positive_int("r", r)
        self.alpha = float(alpha)
        self.scaling = self.alpha / self.r
        self.dropout = nn.Dropout(probability("dropout", dropout)) if dropout else nn.Identity()
        self.experts_A = nn.Parameter(torch.empty(self.num_experts, self.r, self.in_features))
        self.experts_B = nn.Parameter(torch.zeros(self.num_experts, self.out_features, self.r))
        self.router = nn.Linear(self.in_features, self.num_experts, bias=False)  # PyTorch default init, as official
        self.register_buffer("expert_load", torch.zeros(self.num_experts), persistent=False)
        self.register_buffer("entropy_sum", torch.zeros(()), persistent=False)
        self.register_buffer("token_count", torch.zeros(()), persistent=False)
        for a in self.experts_A:
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))

    def expert_features(self, xd: torch.Tensor) -> torch.Tensor:
        """A_e x for every expert: T × E × r."""
        return torch.einsum("td,erd->ter", xd, self.experts_A)

    def combine(self, h: torch.Tensor) -> torch.Tensor:
        """Σ_e B_e h_e for weighted features h (T × E × r): T × d_out."""
        return torch.einsum("ter,eor->to", h, self.experts_B)

    def record_load(self, weights: torch.Tensor) -> None:
        """Accumulate the per-expert gate mass (for routing plots); weights: T × E. Not in checkpointing's
        recomputation of a forward, which would count its tokens twice."""
        if not self.updates_state():
            return
        with torch.no_grad():
            w = weights.detach().to(torch.promote_types(self.expert_load.dtype, torch.float32))
            stats = torch.cat([w.sum(0), -torch.special.xlogy(w, w).sum().view(1), w.new_full((1,), w.shape[0])])
            if self.training:   # the statistics of the global batch on every data-parallel rank
                data_parallel_sum(stats)
            self.expert_load += stats[:self.num_experts]
            self.entropy_sum += stats[self.num_experts]
            self.token_count += stats[self.num_experts + 1]

    def routing_stats(self) -> dict:
        """Per-expert gate mass and the mean per-token gate entropy since the last reset."""
        entropy = float(self.entropy_sum / self.token_count) if self.token_count > 0 else None
        return {"load": self.expert_load.tolist(), "gate_entropy": entropy}

    def reset_routing_stats(self) -> None:
        for buf in (self.expert_load, self.entropy_sum, self.token_count):
            buf.zero_()

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, num_experts={self.num_experts}, r={self.r}"
