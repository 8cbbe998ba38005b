"""Lightning strategies from config: registry strings pass through; ``_target_`` nodes are built here so
that class-path strings (FSDP ``auto_wrap_policy``) become classes."""

from __future__ import annotations

import importlib
from collections.abc import Mapping

from rankmix.errors import ConfigError


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
