"""Pure-PyTorch reference of SMoRA's sparse rank path (the ``dense_masked`` backend).

For tokens x (T × d_in), A (r × d_in), B (d_out × r), router W_g (E × d_in, E = r/p experts of p ranks) and
the expert-level balancing bias b (E):

    scores  = sigmoid(W_g x) + b            (gate "sigmoid")   |   W_g x + b        (gate "softmax")
    sel     = top-k_e experts of scores, ties to the lowest index
    g       = scores_sel / Σ scores_sel · k_e                  |   softmax(scores_sel)
    C       = (A x) ⊙ expand_p(g) · scale     (T × r, zero outside the selected ranks)
    Δ       = C Bᵀ
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def topk_lowest_index(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k along the last axis with ties broken towards the lower index (what the Triton kernel does)."""
    values, idx = torch.sort(scores, dim=-1, descending=True, stable=True)
    return values[..., :k], idx[..., :k]


def route(logits: torch.Tensor, bias: torch.Tensor, k: int, gate: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Selected experts (T × k) and their gates (T × k) from router logits (T × E) and bias (E)."""
    if gate == "sigmoid":
        top, idx = topk_lowest_index(torch.sigmoid(logits) + bias, k)
        return idx, top / top.sum(-1, keepdim=True) * k
    top, idx = topk_lowest_index(logits + bias, k)
    return idx, F.softmax(top, dim=-1)


def dense_gates(idx: torch.Tensor, gates: torch.Tensor, n_experts: int, p: int) -> torch.Tensor:
    """T × r rank gates (zero for inactive ranks) from expert indices and gates."""
    g = torch.zeros(idx.shape[0], n_experts, dtype=gates.dtype, device=gates.device).scatter(1, idx, gates)
    return g.repeat_interleave(p, dim=1)


def smora_dense(x: torch.Tensor, A: torch.Tensor, B: torch.Tensor, router: torch.Tensor, bias: torch.Tensor,
                k: int, p: int, gate: str, scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Δ (T × d_out), selected experts (T × k) and their gates (T × k), all ranks computed then masked."""
    idx, gates = route(x @ router.T, bias, k, gate)
    c = (x @ A.T) * dense_gates(idx, gates, router.shape[0], p) * scale
    return c @ B.T, idx, gates


def smora_gather(x: torch.Tensor, A: torch.Tensor, B: torch.Tensor, router: torch.Tensor, bias: torch.Tensor,
                 k: int, p: int, gate: str, scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The same Δ from per-token gathered rows of A and columns of B (T × k·p × d), as the official backward."""
    idx, gates = route(x @ router.T, bias, k, gate)
    ranks = (idx.unsqueeze(-1) * p + torch.arange(p, device=idx.device)).flatten(-2)
    g = gates.repeat_interleave(p, dim=-1)
    h = torch.einsum("tkd,td->tk", A[ranks], x)
    return torch.einsum("tk,tko->to", h * g * scale, B.T[ranks]), idx, gates
