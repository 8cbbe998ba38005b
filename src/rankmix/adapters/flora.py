"""FLoRA (Si et al., 2024, arXiv 2405.14739) for 2-D weights: a Tucker-2 update with a learnable core.

    y = W0 x + (α/r) · B G A dropout(x)

For a linear layer the low-rank core space G (r × r) sits between the factor matrices, the same algebra as
MoSLoRA's mixer (MoSLoRA §5 discusses the two); the methods differ in initialisation. rankmix's reading of
FLoRA: factor matrices A and B orthogonal (semi-orthogonal rows/columns), core G zero, so the layer starts
equal to its base and the first gradients reach G (∂L/∂G = Bᵀ ∂L/∂ΔW Aᵀ ≠ 0). The core is stored as
``lora_mixer`` so MoSLoRA's merge and peft export apply unchanged. Not checked against official FLoRA code.
"""

from __future__ import annotations

import torch
from torch import nn

from rankmix.adapters.moslora import MoSLoRALayer
from rankmix.adapters.registry import register


@register("flora")
class FLoRALayer(MoSLoRALayer):
    """FLoRA on one linear layer: y = W0 x + (α/r) · B G A dropout(x), A and B orthogonal, the core G (``lora_mixer``)
    zero at the start; ΔW = (α/r) B G A merges."""
    def __init__(self, base_layer: nn.Module, r: int = 8, alpha: float = 16.0, dropout: float = 0.0):
        super().__init__(base_layer, r=r, alpha=alpha, dropout=dropout, mixer_init="zero")
        with torch.no_grad():
            nn.init.orthogonal_(self.lora_A.weight)
            nn.init.orthogonal_(self.lora_B.weight)

    def extra_repr(self) -> str:
        return super().extra_repr().replace("mixer_init=zero", "core=tucker2")
