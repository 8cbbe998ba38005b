"""Routing functions in a low-rank bottleneck (Qu, Tuytelaars & Moens, ECCV 2024, "Introducing Routing Functions to
Vision-Language Parameter-Efficient Fine-Tuning with Low-Rank Bottlenecks"), method "routing".

§3 / Fig. 2: the bottleneck's down-projection W_down maps both the hidden states x_H and the visual features x_R,

    x_t = W_down dropout(x_H)   (B, L, r),        x_v = W_down dropout(x_R)   (B, 1, r),

and a parameter-free routing function replaces x_t before the up-projection. With several visual tokens,
x_v is their mean after W_down (§3: "we use average pooling to reduce it to a single feature vector").
``fn`` chooses the function (x_v broadcast over the L tokens):

    none       x_t                                     plain LoRA / Adapter (the tables' "None" rows)
    mul        x_t ∘ x_v'                              element-wise multiplication
    add        x_t + x_v'                              element-wise addition
    proj       x_t x_vᵀ x_v   = (x_t · x_v) x_v         matrix multiplication 1: x_t projected on x_v
    matmul     x_t x_v''      = (Σ_j x_t,j) x_v         matrix multiplication 2
    proj_relu  ReLU(x_t) ReLU(x_v)ᵀ x_v                 Tab. 6, the ReLU variant of proj

x_v'' is the r×r matrix whose every row is x_v: the paper writes "x_v.reshape_as(r, r)", which r values cannot
fill; the official code uses ``xv.expand(B, r, r)``, which repeats the row, so each token gets x_v scaled by the
sum of its own bottleneck features. ``proj`` uses x_vᵀ where the official code uses ``xv.reshape(B, r, Lv)``;
both are the same for the single pooled token used here.

``base`` chooses the bottleneck (parameter names are a public API):

* ``lora``: y = W0 x + (α/r) · B route(x_t, x_v), with ``lora_A.weight`` (r×d_in, kaiming-uniform a=√5) as
  W_down and ``lora_B.weight`` (d_out×r, zero) as W_up; α defaults to r (scaling 1, §4.2). The plain path
  B x_t is *not* added: the routed tensor replaces it, as in the official code. ``fused_parts`` adapts
  only some parts of a fused projection, as loralib's ``MergedLinear`` (``enable_lora``) of the official GPT-2
  code: GPT-2's ``c_attn`` computes [Q; K; V] in one ``Conv1D``, and ``fused_parts: [true, false, true]`` gives
  Q and V each a rank-r LoRA (K untouched). With n enabled parts, ``lora_A`` is (n·r)×d, the routing function
  acts on the whole n·r-wide x_t and x_v (as the official code), and ``lora_B`` ((n·d_part)×r) maps each r-wide
  chunk to its own part (loralib's grouped conv1d).
* ``adapter``: the sequential adapter of ``rankmix.adapters.adapter`` with the routing function before the
  activation (Fig. 2, right): y = h + up(act(route(down(dropout(h)), down(dropout(x_R))))), h = W0 x; names
  ``adapter_down``/``adapter_up`` with biases, init as ``init`` says (``zero_up``: starts equal to the base;
  ``default``: PyTorch's Linear init for both, as the official code). x_R must have the width of h.
* ``parallel_adapter``: the same bottleneck reading the layer input x, scaled by ``scale`` (Tab. 5's Adapter†).

Unlike the official code, the adapter keeps its residual (the official RoBERTa adapter defaults to
``add_res=False``, replacing the sublayer output) and each wrapped layer has its own adapter (official GPT-2
shares one adapter between a block's attention and MLP outputs).

Variants:

* ``separate_mapping: true`` (§4.3, App. A, Fig. A7 d): x_H and x_R get their own down-projections to r/4,
  ``lora_A``/``adapter_down`` and ``route_down``, the routing function acts in the r/4 space, and
  ``route_up`` (r/4 → r) maps the result to rank r before the usual up-projection: d → r/4 → r → d
  (PyTorch's Linear init; biases only with the adapter bases). The paper uses it with LoRA only.
* ``fn: cross_attention`` (the Tab. 5 baseline, App. B): softmax(q kᵀ/√m) v with q = x_t and key/value
  projections of the visual tokens, k = ``xattn_key``(x_R), v = ``xattn_value``(x_R) (Linear d → m with a bias,
  the parameter count of App. B); single head, visual tokens not pooled. m = r, or r/4 followed by
  ``route_up`` with ``separate_mapping`` (Fig. A7 c, LoRA + cross-attention).

x_R reaches the layers as ``context["x_r"]`` of shape (B, d) or (B, Lv, d): wrap the model call in
``adapter_context(model, x_r=...)`` or ``routing_context(model, x_r)``. Routing makes the update depend on the
input, so only ``fn: none`` with ``base: lora`` (plain LoRA) can be merged into W0.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from rankmix.adapters.adapter import INITS, BottleneckLayer, bottleneck, dropout_module, make_activation
from rankmix.adapters.base import AdapterLayer
from rankmix.adapters.context import adapter_context, per_example
from rankmix.adapters.registry import register
from rankmix.checked import choice, positive_int, real
from rankmix.errors import ConfigError

ROUTING_FUNCTIONS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "none": lambda xt, xv: xt,
    "mul": lambda xt, xv: xt * xv,
    "add": lambda xt, xv: xt + xv,
    "proj": lambda xt, xv: (xt * xv).sum(-1, keepdim=True) * xv,
    "matmul": lambda xt, xv: xt.sum(-1, keepdim=True) * xv,
    "proj_relu": lambda xt, xv: (xt.relu() * xv.relu()).sum(-1, keepdim=True) * xv,
}
FUNCTIONS = (*ROUTING_FUNCTIONS, "cross_attention")
BASES = ("lora", "adapter", "parallel_adapter")


def routing_context(model: nn.Module, x_r: torch.Tensor):
    """``adapter_context(model, x_r=x_r)``: the visual features every routed layer of ``model`` reads."""
    return adapter_context(model, x_r=x_r)


def visual_input(layer: AdapterLayer, h: torch.Tensor) -> torch.Tensor:
    """x_R from ``layer.context`` as (B, Lv, d), checked against the bottleneck input h (B, ..., d)."""
    x_r = layer.call_context().get("x_r")
    if x_r is None:
        raise RuntimeError(
            f"{layer.method}: this layer routes with visual features x_R, but none were given; wrap the model "
            "call in `with rankmix.adapters.adapter_context(model, x_r=features):` (features of shape (B, d) "
            "or (B, Lv, d)), or use rankmix.adapters.routing.routing_context(model, features)"
        )
    x_r = per_example(x_r, h.shape[0])
    if x_r.dim() not in (2, 3) or x_r.shape[0] != h.shape[0] or x_r.shape[-1] != h.shape[-1]:
        raise RuntimeError(
            f"{layer.method}: context x_r has shape {tuple(x_r.shape)}; expected (B, d) or (B, Lv, d) with "
            f"B={h.shape[0]} and d={h.shape[-1]}, the batch and width of this layer's bottleneck input"
        )
    x_r = x_r.unsqueeze(1) if x_r.dim() == 2 else x_r
    return x_r.to(device=h.device, dtype=h.dtype)


def route(fn: str, xt: torch.Tensor, down: nn.Module, x_r: torch.Tensor) -> torch.Tensor:
    """ROUTING_FUNCTIONS[fn](x_t, x_v) with x_v = mean over the Lv tokens of down(x_r), broadcast over x_t's tokens."""
    xv = down(x_r).mean(1)
    return ROUTING_FUNCTIONS[fn](xt, xv.view(xv.shape[0], *[1] * (xt.dim() - 2), xv.shape[-1]))


def cross_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q kᵀ/√m) v per example: q (B, ..., m) attends over the Lv tokens of k, v (B, Lv, m)."""
    out = F.scaled_dot_product_attention(q.reshape(q.shape[0], -1, q.shape[-1]), k, v)
    return out.reshape(q.shape)


@register("routing")
class RoutingLayer(BottleneckLayer):
    """A LoRA or Adapter bottleneck with a parameter-free routing function (§3): x_t = W_down dropout(x_H) is replaced by
    f(x_t, x_v), x_v = W_down dropout(x_R) pooled over the visual tokens, before the up-projection."""
    def __init__(self, base_layer: nn.Module, fn: str = "proj", base: str = "lora", r: int = 64,
                 alpha: float | None = None, activation: str = "gelu", dropout: float = 0.0,
                 init: str = "zero_up", scale: float = 1.0, separate_mapping: bool = False,
                 fused_parts: list[bool] | None = None):
        super().__init__(base_layer)
        self.fn = choice("fn", fn, FUNCTIONS)
        self.base = choice("base", base, BASES)
        self.sequential = self.base == "adapter"
        self.r = positive_int("r", r)
        if not isinstance(separate_mapping, bool):
            raise ConfigError("separate_mapping", separate_mapping, "must be true or false")
        if separate_mapping and self.fn == "none":
            raise ConfigError("separate_mapping", separate_mapping, "maps x_R separately, but fn=none uses no x_R")
        if separate_mapping and r % 4:
            raise ConfigError("r", r, "separate_mapping projects to r/4 (App. A): r must be a multiple of 4")
        # Every option is checked, also those the chosen base does not use.
        alpha = r if alpha is None else real("alpha", alpha)
        scale, act = real("scale", scale), make_activation(activation)
        choice("init", init, INITS)
        d, lora = self.adapter_in_features, self.base == "lora"
        self.fused_parts = self._check_parts(fused_parts, lora)
        n = sum(self.fused_parts)  # LoRAs side by side in one fused projection (1 unless fused_parts)
        m = (r // 4 if separate_mapping else r) * n  # the width the routing function acts in
        self.dropout = dropout_module(dropout)
        if lora:
            self.scaling, self.act = alpha / r, nn.Identity()
            self.lora_A = nn.Linear(d, m, bias=False)
            self.lora_B = nn.Linear(r, self.out_features // len(self.fused_parts) * n, bias=False)
            nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
            nn.init.zeros_(self.lora_B.weight)
        else:
            self.scaling, self.act = (scale if self.base == "parallel_adapter" else 1.0), act
            self.adapter_down, self.adapter_up = bottleneck(d, m, r, self.out_features, init)
        separate_x_r = separate_mapping and self.fn != "cross_attention"
        self.route_down = nn.Linear(d, m, bias=not lora) if separate_x_r else None
        self.route_up = nn.Linear(m, r * n, bias=not lora) if separate_mapping else None
        if self.fn == "cross_attention":
            self.xattn_key, self.xattn_value = nn.Linear(d, m), nn.Linear(d, m)

    def _check_parts(self, parts, lora: bool) -> tuple[bool, ...]:
        if parts is None:
            return (True,)
        if not lora:
            raise ConfigError("fused_parts", parts, "splits a fused LoRA projection; use it with base: lora")
        if not isinstance(parts, (list, tuple)) or not parts or not all(isinstance(p, bool) for p in parts) \
                or not any(parts):
            raise ConfigError("fused_parts", parts, "must be a list of true/false with at least one true, "
                              "e.g. [true, false, true] for Q and V of GPT-2's c_attn")
        if self.out_features % len(parts):
            raise ConfigError("fused_parts", parts, f"{len(parts)} parts do not divide the layer's "
                              f"{self.out_features} outputs")
        return tuple(parts)

    def _scatter_parts(self, u: torch.Tensor) -> torch.Tensor:
        """(..., enabled parts) → (..., out_features) with zeros in the disabled parts (dim -1)."""
        if len(self.fused_parts) == 1:
            return u
        chunks = iter(u.chunk(sum(self.fused_parts), dim=-1))
        zero = u.new_zeros(*u.shape[:-1], self.out_features // len(self.fused_parts))
        return torch.cat([next(chunks) if on else zero for on in self.fused_parts], dim=-1)

    def _lora_up(self, z: torch.Tensor) -> torch.Tensor:
        """B z with the i-th r-wide chunk of z mapped by the i-th block of rows of B (one LoRA per part)."""
        n = sum(self.fused_parts)
        if n == 1:
            return self.lora_B(z)
        w = self.lora_B.weight.view(n, -1, self.r)
        return torch.einsum("...nr,npr->...np", z.unflatten(-1, (n, self.r)), w).flatten(-2)

    @property
    def down(self) -> nn.Linear:
        return self.lora_A if self.base == "lora" else self.adapter_down

    @property
    def up(self) -> nn.Linear:
        return self.lora_B if self.base == "lora" else self.adapter_up

    def adapt(self, h: torch.Tensor) -> torch.Tensor:
        h = h.to(self.down.weight.dtype)
        z = self.down(self.dropout(h))
        if self.fn != "none":
            x_r = self.dropout(visual_input(self, h))
            if self.fn == "cross_attention":
                z = cross_attention(z, self.xattn_key(x_r), self.xattn_value(x_r))
            else:
                z = route(self.fn, z, self.down if self.route_down is None else self.route_down, x_r)
        if self.route_up is not None:
            z = self.route_up(z)
        up = self._lora_up if self.base == "lora" else self.up
        return self._scatter_parts(up(self.act(z))) * self.scaling

    def required_context(self) -> set[str]:
        return set() if self.fn == "none" else {"x_r"}

    @property
    def mergeable(self) -> bool:
        """Only ``fn: none`` with ``base: lora`` (plain LoRA) has a fixed ΔW."""
        return self.fn == "none" and self.base == "lora"

    def delta_weight(self) -> torch.Tensor:
        if not self.mergeable:
            return super().delta_weight()
        n = sum(self.fused_parts)
        blocks = zip(self.lora_B.weight.chunk(n), self.lora_A.weight.chunk(n), strict=True)
        return self._scatter_parts(torch.cat([b @ a for b, a in blocks]).T).T * self.scaling

    def extra_repr(self) -> str:
        mapping = ", separate_mapping=True" if self.route_up is not None else ""
        mapping += f", fused_parts={list(self.fused_parts)}" if len(self.fused_parts) > 1 else ""
        return f"{super().extra_repr()}, fn={self.fn}, base={self.base}, r={self.r}{mapping}"
