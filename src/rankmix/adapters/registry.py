"""Name → adapter class registry, and ``build(name, base_layer, **cfg)``."""

from __future__ import annotations

import inspect

from torch import nn

from rankmix.errors import ConfigError

METHODS: dict[str, type] = {}
FROZEN = "none"  # the frozen backbone: nothing injected (the baseline that adapters' gains are measured from)


def register(name: str):
    """Class decorator: make an ``AdapterLayer`` subclass buildable by ``name`` (which it keeps as ``method``)."""

    def deco(cls):
        if name in METHODS:
            raise ValueError(f"adapter method {name!r} is registered twice")
        cls.method = name
        METHODS[name] = cls
        return cls

    return deco


def method_names() -> list[str]:
    """Every method ``inject`` accepts: registered adapter layers, the peft-backed baselines and ``none``."""
    from rankmix.adapters.peft_methods import PEFT_METHODS

    return sorted({*METHODS, *PEFT_METHODS, FROZEN})


def method_options(name: str) -> list[str]:
    """The config keys a method accepts (its constructor's keyword arguments)."""
    from rankmix.adapters.peft_methods import OPTIONS

    if name in OPTIONS:
        return list(OPTIONS[name])
    if name == FROZEN:
        return []
    params = inspect.signature(get_method(name).__init__).parameters
    return [p for p in params if p not in ("self", "base_layer")]


def get_method(name: str) -> type:
    """The adapter class registered as ``name``; ``ConfigError`` on ``method.name`` listing the methods otherwise."""
    if name not in METHODS:
        raise ConfigError("method.name", name, f"unknown method; registered: {', '.join(method_names())}")
    return METHODS[name]


def build(name: str, base_layer: nn.Module, **cfg) -> nn.Module:
    """Wrap one ``nn.Linear`` (or GPT-2 ``Conv1D``) with adapter method ``name``."""
    cls = get_method(name)
    allowed = method_options(name)
    unknown = sorted(set(cfg) - set(allowed))
    if unknown:
        raise ConfigError(f"method.{unknown[0]}", cfg[unknown[0]], f"not an option of {name}; options: {', '.join(allowed)}")
    try:
        layer = cls(base_layer, **cfg)
    except ConfigError as e:
        raise e.prefixed("method") from None
    layer.options = dict(cfg)  # what rebuilds it (a routed peft export records them)
    return layer
