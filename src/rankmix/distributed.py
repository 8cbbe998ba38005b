"""Data parallelism: Lightning strategies from config, and the sums adapter layers take over the data-parallel group.

Strategies: ``trainer.strategy`` is a Lightning registry name or a ``_target_`` node that ``hydra.utils.instantiate``
builds with the Trainer (FSDP through ``fsdp_strategy``, whose wrap classes are class paths in the config).

``data_parallel_sum`` sums a tensor over every process of the default group: statistics that an adapter layer
updates in its forward (SMoRA's per-rank counts behind the balancing bias, Eq. 7; the routing statistics of
LoRA-MoE and SMEAR) become those of the global batch, so every rank moves its buffers alike. DDP, FSDP and
DeepSpeed replicate the model over all processes (no tensor or pipeline parallelism here), so the default group
is the data-parallel group.
"""

from __future__ import annotations

import importlib

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


def fsdp_strategy(auto_wrap_policy: list[str] | None = None, **kwargs):
    """Lightning's ``FSDPStrategy`` with ``auto_wrap_policy`` given as class paths (a backbone's
    ``fsdp_blocks``, e.g. ``transformers.models.llama.modeling_llama.LlamaDecoderLayer``): each block class wrapped
    on its own. ``conf/trainer/fsdp.yaml`` instantiates it."""
    from lightning.pytorch.strategies import FSDPStrategy

    if auto_wrap_policy is not None:
        kwargs["auto_wrap_policy"] = {_import_class(p) for p in auto_wrap_policy}
    return FSDPStrategy(**kwargs)


def _import_class(path: str) -> type:
    module, _, name = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        raise ConfigError("trainer.strategy.auto_wrap_policy", path, "no such class") from None


def check_strategy(spec) -> None:
    """A strategy this machine cannot build is refused before any work: DeepSpeed without its package."""
    name = spec if isinstance(spec, str) else str((spec or {}).get("_target_", ""))
    if "deepspeed" in name.lower():
        try:
            import deepspeed  # noqa: F401
        except ImportError:
            raise ConfigError("trainer.strategy", name, "needs DeepSpeed: pip install -e '.[deepspeed]'") from None
