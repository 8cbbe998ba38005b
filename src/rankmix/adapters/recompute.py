"""Adapter layers under activation checkpointing: what a recomputed forward must see again.

Activation checkpointing (transformers' ``activation_checkpointing_enable``, reentrant or not, or an FSDP
checkpoint wrapper) runs a block's forward once without keeping its activations and runs it again inside the
backward pass to rebuild them. A layer whose forward also *changes* state (SMoRA's balancing bias and counts,
Eq. 7; the routing statistics of LoRA-MoE and SMEAR) or reads per-call inputs set around the model call
(``adapter_context``: x_R, task ids, modality masks, the attention mask) would, in that second run, count every
token again, route with a bias that has since moved, and miss the per-call inputs, which are gone by the time
backward runs. ``recomputing()`` tells the two runs apart, and ``AdapterLayer.forward_value`` hands the
recomputation the value the original forward used.
"""

from __future__ import annotations

import torch


def recomputing() -> bool:
    """True while autograd's backward pass is running: the only place a forward runs then is checkpointing's
    recomputation (``torch.utils.checkpoint`` tells its own passes apart by the same graph-task id)."""
    return torch._C._current_graph_task_id() != -1
