"""LoRA-MoE baselines of SMoRA (§E.2): E LoRA experts of rank r and a router Linear(d_in, E, bias=False).

    y = W0 x + (α/r) Σ_e g_e(x) B_e A_e dropout(x)

``routing``:
- ``top1``: training uses a dense Gumbel-softmax (τ = ``tau`` = 0.1, soft) over all experts; evaluation
  takes the argmax expert with weight 1 — as the official code (train and test differ).
- ``top2`` / ``topk``: softmax → top-k → renormalise (Mixtral style), router on x without dropout, as the
  official top-2; ``topk`` uses ``k``.
- ``soft``: the dense per-token softmax mixture of all experts (not Puigcerver's Soft MoE).
No auxiliary balancing loss, as in the official baselines.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rankmix.adapters.experts import ExpertBankLayer
from rankmix.adapters.registry import declared_defaults, register
from rankmix.checked import positive_int
from rankmix.errors import ConfigError

ROUTINGS = ("top1", "top2", "topk", "soft")


@register("lora_moe")
class LoRAMoELayer(ExpertBankLayer):
    """LoRA-MoE on one linear layer: y = W0 x + (α/r) Σ_e g_e(x) B_e A_e dropout(x) over E experts, gates g from the
    router by ``routing`` (top1, top2, topk, soft); routed, so it has no fixed ΔW to merge."""

    peft_export = "rankmix"

    @classmethod
    def check_options(cls, options: dict) -> None:
        """At most ``num_experts`` experts active per token: 1 for top1, 2 for top2, k for topk (soft: all)."""
        o = {**declared_defaults(cls), **options}
        k, n = {"top1": 1, "top2": 2}.get(o["routing"], o["k"]), o["num_experts"]
        if o["routing"] != "soft" and isinstance(k, int) and isinstance(n, int) and k > n:
            raise ConfigError("k", k, f"must be at most method.num_experts={n} (k experts are active per token)")

    def __init__(self, base_layer: nn.Module, num_experts: int = 8, r: int = 8, alpha: float = 16.0,
                 dropout: float = 0.0, routing: str = "top1", k: int = 2, tau: float = 0.1):
        super().__init__(base_layer, num_experts, r, alpha, dropout)
        if routing not in ROUTINGS:
            raise ConfigError("routing", routing, f"must be one of {', '.join(ROUTINGS)}")
        self.routing = routing
        self.k = {"top1": 1, "top2": 2}.get(routing, positive_int("k", k))
        self.check_options({"num_experts": num_experts, "routing": routing, "k": k})
        self.tau = float(tau)

    def gate_weights(self, x: torch.Tensor, xd: torch.Tensor) -> torch.Tensor:
        """Per-token expert weights, T × E (zeros for unselected experts)."""
        if self.routing == "soft":
            return F.softmax(self.router(xd), dim=-1)
        if self.routing == "top1":
            logits = self.router(xd)
            if self.training:
                return F.gumbel_softmax(logits, tau=self.tau, hard=False, dim=-1)
            return F.one_hot(logits.argmax(-1), self.num_experts).to(logits.dtype)
        probs = F.softmax(self.router(x), dim=-1)
        top, idx = probs.topk(self.k, dim=-1)
        return torch.zeros_like(probs).scatter(1, idx, top / top.sum(-1, keepdim=True))

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = x.to(self.experts_A.dtype).reshape(-1, self.in_features)
        xd = self.dropout(x)
        w = self.gate_weights(x, xd)
        self.record_load(w)
        out = self.combine(self.expert_features(xd) * w.unsqueeze(-1))
        return (out * self.scaling).reshape(*shape[:-1], self.out_features)

    def activated_parameters(self) -> int:
        k = self.num_experts if self.routing == "soft" else self.k
        return k * self.r * (self.in_features + self.out_features) + self.router.weight.numel()

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, routing={self.routing}, k={self.k}"
