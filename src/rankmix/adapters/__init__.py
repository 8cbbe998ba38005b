"""Adapter methods: one module each, all built on ``AdapterLayer``, registered by name.

Public API: ``build(name, base_layer, **cfg)`` wraps one linear layer; ``inject(model, method_cfg)``
wraps every target layer of a model and freezes the rest.
"""

import importlib
import pkgutil

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
from rankmix.adapters.io import export_diffusers, export_peft, load_adapter, save_adapter
from rankmix.adapters.registry import METHODS, build, get_method, method_names, method_options, register
from rankmix.adapters.routing import routing_context

# Every module of this package is imported, so a method module registers itself by being here: adding a method
# is one file (plus its conf/method yaml), no import list to edit.
for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "AdapterLayer", "DEFAULT_TARGETS", "adapter_context", "InjectionReport", "METHODS", "adapter_layers", "adapter_state_dict",
    "build", "candidate_names", "check_context", "export_diffusers", "export_peft", "get_method", "inject", "load_adapter", "merge_adapters",
    "merge_and_unload", "method_names", "method_options", "register", "routing_context", "save_adapter", "unmerge_adapters",
]
