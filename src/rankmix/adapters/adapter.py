"""Bottleneck adapters: the sequential Houlsby adapter ("adapter") and the parallel adapter ("parallel_adapter").

A bottleneck maps h to up(act(down(dropout(h)))) with down: d → r and up: r → d_out, both Linear with a bias.
An adapter layer wraps one linear layer W0 of the model and reads either its output or its input:

* ``adapter`` (Houlsby et al., 2019; the "Adapter" of the routing-functions paper, Fig. 1): sequential, after a
  sublayer. Wrapping the sublayer's output projection (RoBERTa ``output.dense``, GPT-2 ``c_proj``) makes the
  sublayer output h = W0 x the adapter input, with the residual around the adapter:

      y = h + up(act(down(dropout(h)))),   h = W0 x.

* ``parallel_adapter`` (I-Tuning, Luo et al., 2022; the Adapter† of the routing paper's Tab. 5): beside the
  wrapped layer, reading its input x, scaled by s (``scale``):

      y = W0 x + s · up(act(down(dropout(x)))).

Parameter names (a public API): ``adapter_down.weight`` (r×d), ``adapter_down.bias``, ``adapter_up.weight``
(d_out×r), ``adapter_up.bias``. Init ``zero_up`` (default) zeroes the up projection so the wrapped layer starts
equal to the base layer; ``default`` keeps PyTorch's Linear init for both, as the official routing-functions
code does (there the adapter starts as a random perturbation). The update depends on the input through the
activation, so there is no ΔW to merge.

Shared with ``routing`` and ``multi_adapter``: ``BottleneckLayer`` (reads x or W0 x), ``make_activation``,
``bottleneck`` (the down/up pair), ``dropout_module``, ``choice``, ``real``.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from rankmix.adapters.base import AdapterLayer
from rankmix.adapters.registry import register
from rankmix.checked import choice, positive_int, probability, real

# gelu_new is GPT-2's tanh approximation; swish (VL-Adapter's name) is SiLU.
ACTIVATIONS = {
    "gelu": nn.GELU, "gelu_new": partial(nn.GELU, approximate="tanh"), "relu": nn.ReLU, "swish": nn.SiLU,
    "silu": nn.SiLU,
}
INITS = ("zero_up", "default")


def make_activation(name: str) -> nn.Module:
    """The bottleneck's activation module by name (one of ``ACTIVATIONS``)."""
    return ACTIVATIONS[choice("activation", name, ACTIVATIONS)]()


def dropout_module(p) -> nn.Module:
    """``nn.Dropout(p)`` for p > 0, else ``nn.Identity()``; p must lie in [0, 1)."""
    return nn.Dropout(p) if probability("dropout", p) else nn.Identity()


def bottleneck(d_in: int, r_down: int, r_up: int, d_out: int, init: str = "zero_up") -> tuple[nn.Linear, nn.Linear]:
    """(down: d_in → r_down, up: r_up → d_out), both with a bias; ``zero_up`` zeroes the up projection."""
    down, up = nn.Linear(d_in, r_down), nn.Linear(r_up, d_out)
    if choice("init", init, INITS) == "zero_up":
        nn.init.zeros_(up.weight)
        nn.init.zeros_(up.bias)
    return down, up


class BottleneckLayer(AdapterLayer):
    """An adapter path ``adapt(h)`` that reads the layer output h = W0 x (``sequential``) or its input x."""

    sequential: bool = False

    @property
    def adapter_in_features(self) -> int:
        return self.out_features if self.sequential else self.in_features

    def adapt(self, h: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        return self.adapt(self.base_layer(x) if self.sequential else x)

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        y = self.base_layer(x, *args, **kwargs)
        if self.merged:
            return y
        return y + self.adapt(y if self.sequential else x).to(y.dtype)


@register("adapter")
class AdapterBottleneckLayer(BottleneckLayer):
    """The sequential Houlsby adapter (method ``adapter``): y = h + up(act(down(dropout(h)))), h = W0 x."""
    sequential = True

    def __init__(self, base_layer: nn.Module, r: int = 64, activation: str = "gelu", dropout: float = 0.0,
                 init: str = "zero_up"):
        super().__init__(base_layer)
        self.r = positive_int("r", r)
        self.act = make_activation(activation)
        self.dropout = dropout_module(dropout)
        self.adapter_down, self.adapter_up = bottleneck(self.adapter_in_features, r, r, self.out_features, init)

    def adapt(self, h: torch.Tensor) -> torch.Tensor:
        h = h.to(self.adapter_down.weight.dtype)
        return self.adapter_up(self.act(self.adapter_down(self.dropout(h))))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, r={self.r}, sequential={self.sequential}"


@register("parallel_adapter")
class ParallelAdapterLayer(AdapterBottleneckLayer):
    """The parallel adapter (method ``parallel_adapter``, Adapter† of Tab. 5): y = W0 x + s · up(act(down(dropout(x))))."""
    sequential = False

    def __init__(self, base_layer: nn.Module, r: int = 64, activation: str = "gelu", dropout: float = 0.0,
                 init: str = "zero_up", scale: float = 1.0):
        super().__init__(base_layer, r=r, activation=activation, dropout=dropout, init=init)
        self.scale = real("scale", scale)

    def adapt(self, h: torch.Tensor) -> torch.Tensor:
        return super().adapt(h) * self.scale
