"""The one base every adapter method builds on.

An adapter layer wraps a frozen base layer ``W0`` and adds a trainable low-rank path:

    y = W0 x + Δ(x)

Subclasses implement ``delta(x)``; linear methods (Δ(x) = ΔW x) also implement ``delta_weight()``
and get ``merge()``/``unmerge()`` for free.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from rankmix.adapters.recompute import recomputing
from rankmix.errors import NotMergeableError

SUPPORTED_BASE_LAYERS = (nn.Linear, Conv1D)


def layer_shape(layer: nn.Module) -> tuple[int, int]:
    """(in_features, out_features) of a linear layer; GPT-2's ``Conv1D`` stores W as (in, out)."""
    if isinstance(layer, nn.Linear):
        return layer.in_features, layer.out_features
    if isinstance(layer, Conv1D):
        return layer.weight.shape[0], layer.weight.shape[1]
    raise TypeError(
        f"cannot wrap {type(layer).__name__}: adapters wrap nn.Linear or transformers Conv1D layers"
    )


class AdapterLayer(nn.Module):
    """Frozen ``base_layer`` plus a trainable path; ``merge()`` folds a linear path into W0."""

    method: ClassVar[str] = ""
    mergeable: ClassVar[bool] = False   # Δ(x) = ΔW x with a fixed ΔW (``delta_weight``), so ``merge()`` folds it into W0
    peft_export: ClassVar[str | None] = None   # "lora", "rankmix" (rankmix.peft) or None: see rankmix.adapters.registry

    def __init__(self, base_layer: nn.Module):
        super().__init__()
        self.in_features, self.out_features = layer_shape(base_layer)
        self.base_layer = base_layer
        for p in base_layer.parameters():
            p.requires_grad_(False)
        self.merged = False
        self.context: dict = {}  # per-call inputs, see rankmix.adapters.context
        self.forward_values: dict = {}  # what the last forward used, for its recomputation (forward_value)

    @classmethod
    def check_options(cls, options: dict) -> None:
        """Raise ``ConfigError`` (key relative to ``method``) for options that are wrong together: the one place
        such a rule is written, run by ``validate`` before any model is built and by the constructor. ``options``
        may leave out options (their declared defaults apply) and hold values of the wrong type (left to the
        constructor's own checks). Default: nothing to check."""

    @classmethod
    def check_target(cls, model: nn.Module, name: str, options: dict) -> None:
        """Raise ``ConfigError`` if this method must not wrap layer ``name`` of ``model`` (default: any is fine)."""

    # -- the method ----------------------------------------------------------------------------
    def delta(self, x: torch.Tensor) -> torch.Tensor:
        """Δ(x), shape (..., out_features)."""
        raise NotImplementedError

    def delta_weight(self) -> torch.Tensor:
        """ΔW (out_features × in_features) for methods with Δ(x) = ΔW x."""
        raise NotMergeableError(
            f"{self.method}: the update depends on the input (routing), so it has no fixed ΔW to merge"
        )

    def required_context(self) -> set[str]:
        """Keys this layer reads from ``adapter_context`` (beyond the optional attention mask)."""
        return set()

    def activated_parameters(self) -> int:
        """Adapter parameters that take part in the computation for one token (SMoRA App. J)."""
        return self.trainable_parameters()

    # -- shared behaviour ------------------------------------------------------------------------
    def forward_value(self, key: str, compute):
        """``compute()`` in a forward, remembered under ``key``; in activation checkpointing's recomputation of
        that forward (``rankmix.adapters.recompute``) the remembered value, so both runs route alike."""
        if recomputing() and key in self.forward_values:
            return self.forward_values[key]
        self.forward_values[key] = value = compute()
        return value

    def call_context(self) -> dict:
        """The per-call inputs of this forward (``self.context``); a recomputation inside backward, which runs
        after the ``adapter_context`` block has closed, gets those of the forward it recomputes."""
        return self.forward_value("context", lambda: self.context)

    def updates_state(self) -> bool:
        """Whether this forward may count tokens and move buffers: not a recomputation, which would count every
        token a second time."""
        return not recomputing()

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        y = self.base_layer(x, *args, **kwargs)
        if self.merged:
            return y
        return y + self.delta(x).to(y.dtype)

    @property
    def weight(self) -> torch.Tensor:
        """The base layer's weight: code that reads ``layer.weight`` (T5's feed-forward reads its dtype) sees the
        layer it wrapped."""
        return self.base_layer.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return getattr(self.base_layer, "bias", None)

    def _base_weight_as_out_in(self) -> torch.Tensor:
        w = self.base_layer.weight
        return w.T if isinstance(self.base_layer, Conv1D) else w

    @torch.no_grad()
    def merge(self) -> None:
        """W0 ← W0 + ΔW; forward then skips the adapter path."""
        if self.merged:
            return
        dw = self.delta_weight().to(self.base_layer.weight.dtype)
        self._base_weight_as_out_in().add_(dw)
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """W0 ← W0 − ΔW, undoing ``merge()``."""
        if not self.merged:
            return
        dw = self.delta_weight().to(self.base_layer.weight.dtype)
        self._base_weight_as_out_in().sub_(dw)
        self.merged = False

    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        """Trainable weights and adapter buffers, without the frozen base layer."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("base_layer.")}

    def router_parameters(self) -> int:
        """Trainable parameters of the router (``router.*``), counted apart from the low-rank path (SMoRA Fig. 9)."""
        return sum(p.numel() for n, p in self.named_parameters() if p.requires_grad and n.startswith("router."))

    def trainable_parameters(self) -> int:
        return sum(p.numel() for n, p in self.named_parameters() if p.requires_grad and not n.startswith("base_layer."))

    def routing_stats(self) -> dict:
        """What the router did since ``reset_routing_stats()`` (loads, MaxVio, gate entropy); methods without a
        router have none (``routes()`` is False)."""
        return {}

    def reset_routing_stats(self) -> None:
        """Start counting the router's statistics afresh (every epoch; before the test)."""

    @classmethod
    def routes(cls) -> bool:
        """Whether this method routes (overrides ``routing_stats``)."""
        return cls.routing_stats is not AdapterLayer.routing_stats

    def on_optimizer_step(self) -> None:
        """Called after every optimizer step (e.g. SMoRA's per-step balancing-bias update); default: nothing."""

    def extra_repr(self) -> str:
        return f"method={self.method}, in_features={self.in_features}, out_features={self.out_features}"
