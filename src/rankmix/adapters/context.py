"""Per-call inputs that adapter layers need beyond ``x``, set around a model call.

Hugging Face models call each linear layer with ``x`` alone, so extra inputs (the routing functions' visual
vector x_R, SMoLA's modality masks, an attention mask to exclude padding from routing statistics) reach the
adapter layers through a context set around the forward pass::

    with adapter_context(model, x_r=pooled_image, attention_mask=mask):
        out = model(input_ids=ids, attention_mask=mask)

Every ``AdapterLayer`` of ``model`` sees the values in ``self.context`` during the call.
"""

from __future__ import annotations

from contextlib import contextmanager

from torch import nn


@contextmanager
def adapter_context(model: nn.Module, **values):
    from rankmix.adapters.base import AdapterLayer

    layers = [m for m in model.modules() if isinstance(m, AdapterLayer)]
    saved = [layer.context for layer in layers]
    for layer in layers:
        layer.context = {**layer.context, **values}
    try:
        yield model
    finally:
        for layer, ctx in zip(layers, saved, strict=True):
            layer.context = ctx
