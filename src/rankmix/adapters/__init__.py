"""Adapter methods: one module each, all built on ``AdapterLayer``, registered by name.

Public API: ``build(name, base_layer, **cfg)`` wraps one linear layer; ``inject(model, method_cfg)``
wraps every target layer of a model and freezes the rest.
"""

# importing a method module registers it
from rankmix.adapters import (  # noqa: F401
    adapter,
    flora,
    hydralora,
    lora,
    lora_moe,
    moslora,
    multi_adapter,
    routing,
    smear,
    smola,
    smora,
)
from rankmix.adapters.base import AdapterLayer
from rankmix.adapters.context import adapter_context
from rankmix.adapters.inject import (
    DEFAULT_TARGETS,
    InjectionReport,
    adapter_layers,
    adapter_state_dict,
    candidate_names,
    check_context,
    inject,
    merge_adapters,
    merge_and_unload,
    unmerge_adapters,
)
from rankmix.adapters.io import export_peft, load_adapter, save_adapter
from rankmix.adapters.registry import METHODS, build, get_method, method_names, method_options, register
from rankmix.adapters.routing import routing_context

__all__ = [
    "AdapterLayer", "DEFAULT_TARGETS", "adapter_context", "InjectionReport", "METHODS", "adapter_layers", "adapter_state_dict",
    "build", "candidate_names", "check_context", "export_peft", "get_method", "inject", "load_adapter", "merge_adapters",
    "merge_and_unload", "method_names", "method_options", "register", "routing_context", "save_adapter", "unmerge_adapters",
]
