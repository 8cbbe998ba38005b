"""SMoRA (Zhao et al., "Each Rank Could be an Expert"): every rank of one LoRA is an expert.

    y = W0 x + s · B G(x) A dropout(x)                                                   (Eq. 4)

G(x) = diag(g(x)) keeps the top-k of r ranks per token. Two gates:

- ``gate: sigmoid`` (default; what the official code that produced the paper's numbers does):
  s = sigmoid(W_g dropout(x)) + b, top-k of s, g = top-k values / their sum × k, scaling s = α/k.
- ``gate: softmax`` (the paper's Eq. 5/6): g = Softmax(TopK(W_g x + b)), scaling s = α/r.

Loss-free balancing (Eq. 7): the non-trainable bias b (buffer ``router_bias``, r) is updated as
b_i ← b_i + u · sign(mean(c) − c_i) from per-rank token counts c, u = ``bias_update_rate`` = 1e-5;
``bias_update: per_forward`` (official: every training forward, per layer) or ``per_step`` (counts summed
over the forwards of one optimizer step). Padding is left out of the counts when an attention mask is in
the adapter context, unless ``count_padding`` (the official behaviour).

Block experts: ``rank_partition = p`` groups ranks into r/p experts of p ranks (router W_g: r/p × d); top-k
then activates k/p whole blocks. By Property 1.1 this is LoRA-MoE with top-k routing.

Backends for the sparse path (``rankmix.kernels``): ``dense_masked`` (the reference: all r ranks, masked
gates), ``gather`` (per-token gathered rows of A and columns of B, as the official backward does) and
``triton`` (fused kernels, forward and backward); ``auto`` picks ``triton`` on CUDA when Triton is installed
and ``dense_masked`` otherwise; an unavailable ``triton`` falls back with a one-line notice. Top-k ties go to
the lower index in every backend.
MaxVio = max_i(c_i − mean c)/mean c over the counts since ``reset_routing_stats()`` (not in the official code).
"""

from __future__ import annotations

import math
import warnings
from functools import cache

import torch
from torch import nn

from rankmix.adapters.base import AdapterLayer
from rankmix.adapters.registry import declared_defaults, register
from rankmix.checked import choice, positive_int, probability
from rankmix.distributed import data_parallel_sum
from rankmix.errors import ConfigError
from rankmix.kernels import reference

GATES = ("sigmoid", "softmax")
BIAS_UPDATES = ("per_forward", "per_step", "none")
BACKENDS = ("auto", "dense_masked", "gather", "triton")


@cache
def _notice_once(message: str) -> None:
    warnings.warn(message, stacklevel=3)


def maxvio(counts: torch.Tensor) -> float:
    """Maximal violation of balanced load: max_i(c_i − mean c) / mean c (0 = perfectly balanced)."""
    mean = counts.float().mean()
    return float((counts.float().max() - mean) / mean) if mean > 0 else 0.0


@register("smora")
class SMoRALayer(AdapterLayer):
    """SMoRA on one linear layer: y = W0 x + s · B G(x) A dropout(x) (Eq. 4), each of the r ranks an expert, G(x)
    keeping the top-k of r per token (``gate``: sigmoid with s = α/k, or softmax with s = α/r, Eq. 5/6), the
    balancing bias b (``router_bias``) moved by b_i ← b_i + u · sign(mean(c) − c_i) from the rank loads c (Eq. 7)
    in training only; ``routing_stats()`` gives the loads, MaxVio and gate entropy. Routed: no fixed ΔW to merge."""

    peft_export = "rankmix"

    @classmethod
    def check_options(cls, options: dict) -> None:
        """k ≤ r (k of the r ranks are active, Eq. 4); with block experts (``rank_partition`` p) p divides r and k."""
        o = {**declared_defaults(cls), **options}
        r, k, p = o["r"], o["k"], o["rank_partition"]
        if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (r, k, p)):
            return  # the constructor names the option that is not a positive integer
        if k > r:
            raise ConfigError("k", k, f"must be at most method.r={r} (k ranks are active out of r)")
        if r % p:
            raise ConfigError("rank_partition", p, f"must divide method.r={r}")
        if k % p:
            raise ConfigError("k", k, f"must be a multiple of method.rank_partition={p} (whole blocks are active)")

    def __init__(self, base_layer: nn.Module, r: int = 16, k: int = 4, alpha: float = 16.0, dropout: float = 0.0,
                 gate: str = "sigmoid", rank_partition: int = 1, bias_update: str = "per_forward",
                 bias_update_rate: float = 1e-5, count_padding: bool = False, backend: str = "auto"):
        super().__init__(base_layer)
        self.r, self.k = positive_int("r", r), positive_int("k", k)
        self.rank_partition = positive_int("rank_partition", rank_partition)
        self.check_options({"r": r, "k": k, "rank_partition": rank_partition})
        self.gate = choice("gate", gate, GATES)
        self.bias_update = choice("bias_update", bias_update, BIAS_UPDATES)
        self.backend = choice("backend", backend, BACKENDS)
        self.bias_update_rate = float(bias_update_rate)
        self.count_padding = bool(count_padding)
        self.alpha = float(alpha)
        self.n_experts, self.k_experts = self.r // self.rank_partition, self.k // self.rank_partition
        self.scaling = self.alpha / (self.k if self.gate == "sigmoid" else self.r)
        self.dropout = nn.Dropout(probability("dropout", dropout)) if dropout else nn.Identity()
        self.lora_A = nn.Linear(self.in_features, self.r, bias=False)
        self.lora_B = nn.Linear(self.r, self.out_features, bias=False)
        self.router = nn.Linear(self.in_features, self.n_experts, bias=False)  # PyTorch default init, as official
        self.register_buffer("router_bias", torch.zeros(self.r))
        self.register_buffer("load_counts", torch.zeros(self.r), persistent=False)
        self.register_buffer("pending_counts", torch.zeros(self.r), persistent=False)
        self.register_buffer("entropy_sum", torch.zeros(()), persistent=False)
        self.register_buffer("token_count", torch.zeros(()), persistent=False)
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)

    # -- routing and forward ---------------------------------------------------------------------
    def expert_bias(self) -> torch.Tensor:
        """The balancing bias per expert (E): the mean of ``router_bias`` over each block of ranks."""
        return self.router_bias.view(self.n_experts, self.rank_partition).mean(-1)

    def resolve_backend(self, x: torch.Tensor) -> str:
        """``auto`` → ``triton`` on CUDA when Triton is installed, else ``dense_masked``."""
        from rankmix.kernels import smora_triton

        if self.backend == "auto" and x.is_cuda and smora_triton.triton is not None:
            return "triton"
        if self.backend == "triton" and smora_triton.available(x.device):  # CUDA, or the CPU interpreter
            return "triton"
        if self.backend == "triton":
            _notice_once(f"smora: backend=triton needs Triton and a CUDA device ({x.device.type} here); "
                         "using dense_masked")
        return "gather" if self.backend == "gather" else "dense_masked"

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        xd = self.dropout(x.to(self.lora_A.weight.dtype)).reshape(-1, self.in_features)
        bias = self.forward_value("expert_bias", lambda: self.expert_bias().clone())   # as routed, also when recomputed
        args = (self.lora_A.weight, self.lora_B.weight, self.router.weight, bias.to(xd.dtype))
        backend = self.resolve_backend(xd)
        if backend == "triton":
            from rankmix.kernels.smora_triton import SMoRATriton

            out, idx, g = SMoRATriton.apply(xd, *args, self.k_experts, self.rank_partition, self.gate == "sigmoid",
                                            self.scaling)
            idx = idx.long()
            gates = g.gather(1, idx)
        else:
            fn = reference.smora_gather if backend == "gather" else reference.smora_dense
            out, idx, gates = fn(xd, *args, self.k_experts, self.rank_partition, self.gate, self.scaling)
        if self.updates_state():
            self._count(idx, gates.detach(), shape[:-1])
        return out.reshape(*shape[:-1], self.out_features)

    def rank_indices(self, idx: torch.Tensor) -> torch.Tensor:
        """Active rank indices, T × k, from active expert indices."""
        p = self.rank_partition
        return (idx.unsqueeze(-1) * p + torch.arange(p, device=idx.device)).flatten(-2)

    @torch.no_grad()
    def _count(self, idx: torch.Tensor, gates: torch.Tensor, token_shape: torch.Size) -> None:
        """Per-rank token counts c of this forward (Eq. 7), summed over the data-parallel group in training, so
        that every rank moves the bias by the counts of the global batch."""
        keep = None
        mask = self.call_context().get("attention_mask")
        if not self.count_padding and mask is not None and tuple(mask.shape) == tuple(token_shape):
            keep = mask.reshape(-1).bool()
            idx, gates = idx[keep], gates[keep]
        p = gates.to(torch.promote_types(self.load_counts.dtype, torch.float32))
        p = p / p.sum(-1, keepdim=True)
        chosen = self.rank_indices(idx)
        stats = torch.cat([torch.bincount(chosen.reshape(-1), minlength=self.r).to(self.load_counts.dtype),
                           (-torch.special.xlogy(p, p).sum()).to(self.load_counts.dtype).view(1),
                           self.load_counts.new_full((1,), gates.shape[0])])
        if self.training:
            data_parallel_sum(stats)
        counts = stats[:self.r]
        self.load_counts += counts
        self.entropy_sum += stats[self.r]
        self.token_count += stats[self.r + 1]
        if not self.training or self.bias_update == "none":
            return
        if self.bias_update == "per_forward":
            self._update_bias(counts)
        else:
            self.pending_counts += counts

    @torch.no_grad()
    def _update_bias(self, counts: torch.Tensor) -> None:
        self.router_bias += self.bias_update_rate * torch.sign(counts.mean() - counts)

    @torch.no_grad()
    def on_optimizer_step(self) -> None:
        if self.bias_update == "per_step" and self.pending_counts.sum() > 0:
            self._update_bias(self.pending_counts)
            self.pending_counts.zero_()

    # -- statistics and accounting --------------------------------------------------------------
    def routing_stats(self) -> dict:
        """Per-rank token counts, MaxVio and the mean entropy of the active gates since the last reset."""
        entropy = float(self.entropy_sum / self.token_count) if self.token_count > 0 else None
        return {"load": self.load_counts.tolist(), "maxvio": maxvio(self.load_counts), "gate_entropy": entropy}

    def reset_routing_stats(self) -> None:
        for buf in (self.load_counts, self.entropy_sum, self.token_count):
            buf.zero_()

    def activated_parameters(self) -> int:
        """k rows of A and k columns of B, plus the router (always evaluated) — SMoRA App. J."""
        return self.k * (self.in_features + self.out_features) + self.router.weight.numel()

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, r={self.r}, k={self.k}, gate={self.gate}, "
                f"rank_partition={self.rank_partition}, backend={self.backend}")
