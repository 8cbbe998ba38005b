"""Name → method class registry: every method's options, defaults, checks and capabilities, declared once.

A method is one class registered with ``@register(name)``: an ``AdapterLayer`` (built per linear layer) or a
``PeftMethod`` (peft's own layers, ``rankmix.adapters.peft_methods``). What rankmix knows of a method is read from
that class alone:

- its options and their defaults: the keyword arguments of its constructor (``method_defaults``), mirrored in
  ``conf/method/<name>.yaml`` (a test holds the two equal);
- its checks of options taken together (``check_options``, e.g. SMoRA's k ≤ r), run by ``validate`` before a
  model is built and by the constructor;
- its capabilities: ``routes()`` (a router with statistics), ``mergeable`` (a fixed ΔW) and ``peft_export``
  (``"lora"``: a plain peft LoRA; ``"rankmix"``: a routed peft export read by ``rankmix.peft``; ``"peft"``: peft's
  own layers; None: not exportable).
"""

from __future__ import annotations

import inspect

from torch import nn

from rankmix.errors import ConfigError

METHODS: dict[str, type] = {}
FROZEN = "none"  # the frozen backbone: nothing injected (the baseline that adapters' gains are measured from)
NOT_OPTIONS = ("self", "base_layer")   # constructor parameters that are not options


def register(name: str):
    """Class decorator: make a method class buildable by ``name`` (which it keeps as ``method``)."""

    def deco(cls):
        if name in METHODS:
            raise ValueError(f"adapter method {name!r} is registered twice")
        cls.method = name
        METHODS[name] = cls
        return cls

    return deco


def method_names() -> list[str]:
    """Every method ``inject`` accepts: the registered methods and ``none``."""
    return sorted({*METHODS, FROZEN})


def declared_defaults(cls: type) -> dict:
    """``{option: default}`` of a method class: its constructor's keyword arguments."""
    params = inspect.signature(cls.__init__).parameters
    return {n: p.default for n, p in params.items() if n not in NOT_OPTIONS}


def method_defaults(name: str) -> dict:
    """``{option: default}`` of method ``name`` (none for ``none``)."""
    return {} if name == FROZEN else declared_defaults(get_method(name))


def method_options(name: str) -> list[str]:
    """The config keys a method accepts (its constructor's keyword arguments)."""
    return list(method_defaults(name))


def peft_exportable(kind: str) -> list[str]:
    """The methods whose ``peft_export`` is ``kind`` (``lora``, ``rankmix`` or ``peft``), sorted."""
    return sorted(name for name, cls in METHODS.items() if cls.peft_export == kind)


def get_method(name: str) -> type:
    """The class registered as ``name``; ``ConfigError`` on ``method.name`` listing the methods otherwise."""
    if name not in METHODS:
        raise ConfigError("method.name", name, f"unknown method; registered: {', '.join(method_names())}")
    return METHODS[name]


def instantiate(name: str, *args, **cfg):
    """``METHODS[name](*args, **cfg)`` after refusing an option it does not declare; its ``ConfigError`` names the
    key under ``method``."""
    cls = get_method(name)
    allowed = method_options(name)
    unknown = sorted(set(cfg) - set(allowed))
    if unknown:
        raise ConfigError(f"method.{unknown[0]}", cfg[unknown[0]], f"not an option of {name}; options: {', '.join(allowed)}")
    try:
        return cls(*args, **cfg)
    except ConfigError as e:
        raise e.prefixed("method") from None


def build(name: str, base_layer: nn.Module, **cfg) -> nn.Module:
    """Wrap one ``nn.Linear`` (or GPT-2 ``Conv1D``) with adapter method ``name``."""
    from rankmix.adapters.base import AdapterLayer

    if not issubclass(get_method(name), AdapterLayer):
        raise ConfigError("method.name", name, "is peft's own layer, injected into a whole model: use inject")
    layer = instantiate(name, base_layer, **cfg)
    layer.options = dict(cfg)  # what rebuilds it (a routed peft export records them)
    return layer
