"""Data parallelism: Lightning strategies from config, and the sums adapter layers take over the data-parallel group.

Strategies: registry strings pass through; ``_target_`` nodes are built here so that class-path strings (FSDP
``auto_wrap_policy``) become classes.

``data_parallel_sum`` sums a tensor over every process of the default group: statistics that an adapter layer
updates in its forward (SMoRA's per-rank counts behind the balancing bias, Eq. 7; the routing statistics of
LoRA-MoE and SMEAR) become those of the global batch, so every rank moves its buffers alike. DDP, FSDP and
DeepSpeed replicate the model over all processes (no tensor or pipeline parallelism here), so the default group
is the data-parallel group.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping

import torch

from rankmix.errors import ConfigError


def data_parallel_sum(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` summed in place over the data-parallel group; unchanged with one process or without an
    initialised ``torch.distributed``. Every rank must call it the same number of times (one training forward
    of a layer each), as a collective."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def import_class(path: str) -> type:
    module, _, name = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        raise ConfigError("trainer.strategy.auto_wrap_policy", path, "no such class") from None


def build_strategy(spec):
    if isinstance(spec, str):
        if spec.startswith("deepspeed"):
            try:
                import deepspeed  # noqa: F401
            except ImportError:
                raise ConfigError("trainer.strategy", spec, "needs DeepSpeed: pip install -e '.[deepspeed]'") from None
        return spec
    if isinstance(spec, Mapping):
        spec = dict(spec)
        cls = import_class(spec.pop("_target_"))
        if "auto_wrap_policy" in spec:
            spec["auto_wrap_policy"] = {import_class(p) for p in spec["auto_wrap_policy"]}
        return cls(**spec)
    raise ConfigError("trainer.strategy", spec, "must be a strategy name or a mapping with _target_")
