"""The frozen ViT side shared by the routing-functions models (§4): its pooled [CLS] (HF ``pooler_output``,
tanh(W·CLS)) is both the one-token prefix of the language model's input and x_R of the routing layers.

``x_r`` (``task.x_r``, Tab. B10) replaces only what the routing layers see: ``image`` (the [CLS]), ``noise``
(standard normal, drawn per call) or ``ones``; the prefix token stays the image's [CLS].
"""

from __future__ import annotations

import torch
from torch import nn

from rankmix.errors import ConfigError

X_R = ("image", "noise", "ones")


def check_widths(vision: nn.Module, language: nn.Module) -> None:
    d_v, d_t = vision.config.hidden_size, language.get_input_embeddings().embedding_dim
    if d_v != d_t:
        raise ConfigError("backbone", f"{d_v} vs {d_t}", "the ViT and the language model must have the same "
                          "width: the [CLS] is prepended to the word embeddings without a projection")


def visual_features(vision: nn.Module, pixel_values: torch.Tensor, x_r: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(the frozen ViT's pooled [CLS] (B, d), what the routing layers receive as x_R (B, d))."""
    vision.eval()
    with torch.no_grad():
        cls = vision(pixel_values=pixel_values).pooler_output
    if x_r == "noise":
        return cls, torch.randn_like(cls)
    return cls, (torch.ones_like(cls) if x_r == "ones" else cls)
