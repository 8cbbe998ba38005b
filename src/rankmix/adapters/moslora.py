"""MoSLoRA (Wu et al., 2024, arXiv 2406.11909): a learnable r×r mixer between A and B.

    y = W0 x + (α/r) · B M A dropout(x)                                   (Eq. 7, W = M)

LoRA is the special case M = I (Eq. 5); two-subspace mixing ("TS-Mixing", §2.2) is the fixed butterfly
factor M = [[I, I], [I, I]] of Eq. 6, i.e. x(A1+A2)(B1+B2) of Eq. 3. ΔW = (α/r) B M A is mergeable, and
exporting to a plain LoRA absorbs the mixer into A (A' = M A).

``mixer_init`` (Tab. 3): ``kaiming`` (uniform, a=√5, the official code's choice), ``orthogonal``,
``identity``, ``normal`` (standard normal, std 1: the official code's ``nn.init.normal_``), ``zero`` (with B = 0 every gradient of A, B, M is zero: the paper's
"does not converge").
"""

from __future__ import annotations

import math

import torch
from torch import nn

from rankmix.adapters.lora import LoRALayer
from rankmix.adapters.registry import register
from rankmix.errors import ConfigError

MIXER_INITS = ("kaiming", "orthogonal", "identity", "normal", "zero")


def butterfly_mixer(r: int) -> torch.Tensor:
    """The fixed two-subspace mixer [[I, I], [I, I]] of MoSLoRA Eq. 6 (r even)."""
    eye = torch.eye(r // 2)
    return torch.cat([torch.cat([eye, eye], 1), torch.cat([eye, eye], 1)], 0)


@register("moslora")
class MoSLoRALayer(LoRALayer):
    """MoSLoRA on one linear layer: y = W0 x + (α/r) · B M A dropout(x) with a learnable r×r mixer M (Eq. 7), M
    initialised by ``mixer_init``; ΔW = (α/r) B M A merges, and a peft export absorbs M into A (A' = M A)."""
    def __init__(self, base_layer: nn.Module, r: int = 8, alpha: float = 16.0, dropout: float = 0.0,
                 mixer_init: str = "kaiming"):
        if mixer_init not in MIXER_INITS:
            raise ConfigError("mixer_init", mixer_init, f"must be one of {', '.join(MIXER_INITS)}")
        super().__init__(base_layer, r=r, alpha=alpha, dropout=dropout)
        self.mixer_init = mixer_init
        self.lora_mixer = nn.Linear(self.r, self.r, bias=False)
        self.reset_mixer()

    def reset_mixer(self) -> None:
        w = self.lora_mixer.weight
        with torch.no_grad():
            if self.mixer_init == "kaiming":
                nn.init.kaiming_uniform_(w, a=math.sqrt(5))
            elif self.mixer_init == "orthogonal":
                nn.init.orthogonal_(w)
            elif self.mixer_init == "identity":
                w.copy_(torch.eye(self.r))
            elif self.mixer_init == "normal":
                nn.init.normal_(w)  # std 1, as the official layer's commented-out option
            else:
                nn.init.zeros_(w)

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.lora_A.weight.dtype)
        return self.lora_B(self.lora_mixer(self.lora_A(self.dropout(x)))) * self.scaling

    def delta_weight(self) -> torch.Tensor:
        return (self.lora_B.weight @ self.lora_mixer.weight @ self.lora_A.weight) * self.scaling

    def absorbed_A(self) -> torch.Tensor:
        """A' = M A: with it a plain LoRA (B, A') computes the same update (used for the peft export)."""
        return self.lora_mixer.weight @ self.lora_A.weight

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, mixer_init={self.mixer_init}"


@register("ts_mixing")
class TSMixingLayer(MoSLoRALayer):
    """Two-subspace mixing (MoSLoRA §2.2, Eq. 3/6): MoSLoRA with the fixed, untrained butterfly mixer."""

    def __init__(self, base_layer: nn.Module, r: int = 8, alpha: float = 16.0, dropout: float = 0.0):
        if isinstance(r, int) and r % 2:
            raise ConfigError("r", r, "ts_mixing splits the rank into two subspaces: r must be even")
        super().__init__(base_layer, r=r, alpha=alpha, dropout=dropout, mixer_init="identity")
        with torch.no_grad():
            self.lora_mixer.weight.copy_(butterfly_mixer(self.r))
        self.lora_mixer.weight.requires_grad_(False)

    def extra_repr(self) -> str:
        return f"{LoRALayer.extra_repr(self)}, mixer=butterfly"
