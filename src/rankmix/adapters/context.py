"""Per-call inputs that adapter layers need beyond ``x``, set around a model call.

Hugging Face models call each linear layer with ``x`` alone, so extra inputs (the routing functions' visual
vector x_R, SMoLA's modality masks, an attention mask to exclude padding from routing statistics) reach the
adapter layers through a context set around the forward pass::

    with adapter_context(model, x_r=pooled_image, attention_mask=mask):
        out = model(input_ids=ids, attention_mask=mask)

Every ``AdapterLayer`` of ``model`` sees the values in ``self.context`` during the call. Inside
``generate(num_beams=n)`` (or ``num_return_sequences``) the model runs on B·n rows, each example repeated n times
in a row (transformers' ``repeat_interleave``); ``per_example`` expands a per-example value the same way.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn


@contextmanager
def adapter_context(model: nn.Module, **values):
    """Within the block, every adapter layer of ``model`` sees ``values`` (e.g. ``attention_mask``, ``x_r``) as its
    per-call context (``AdapterLayer.context``); the previous contexts come back when the block ends."""
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


def per_example(value, batch: int):
    """A per-example context value (first dim B) for a call on ``batch`` rows: as it is when B = ``batch``,
    repeated ``batch / B`` times per example when ``generate`` expanded the batch for beams or samples."""
    value = torch.as_tensor(value)
    if value.dim() and value.shape[0] != batch and value.shape[0] and batch % value.shape[0] == 0:
        return value.repeat_interleave(batch // value.shape[0], dim=0)
    return value
