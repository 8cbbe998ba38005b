"""Baselines that Hugging Face ``peft`` already implements, behind the same ``inject`` call (not re-written).

``dora`` (LoRA with ``use_dora``), ``loha`` and ``lokr`` (MoSLoRA Tab. 4 baselines) are injected with
``peft.inject_adapter_in_model``; their layers are peft's own. ``adalora`` is not offered: its rank budget
is re-allocated by ``AdaLoraModel.update_and_allocate`` every step, which needs peft's model wrapper and
its training loop hooks rather than layer injection.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import nn

from rankmix.errors import ConfigError

PEFT_METHODS = ("dora", "loha", "lokr")
OPTIONS = {
    "dora": ("r", "alpha", "dropout"),
    "loha": ("r", "alpha", "dropout"),
    "lokr": ("r", "alpha", "dropout"),
}


def peft_config(name: str, targets: list[str], options: Mapping):
    from peft import LoHaConfig, LoKrConfig, LoraConfig

    unknown = sorted(set(options) - set(OPTIONS[name]))
    if unknown:
        raise ConfigError(f"method.{unknown[0]}", options[unknown[0]],
                          f"not an option of {name}; options: {', '.join(OPTIONS[name])}")
    r, alpha, dropout = int(options.get("r", 8)), float(options.get("alpha", 16)), float(options.get("dropout", 0.0))
    if r <= 0:
        raise ConfigError("method.r", r, "must be a positive integer")
    if name == "dora":
        return LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, use_dora=True, target_modules=targets)
    if name == "loha":
        return LoHaConfig(r=r, alpha=alpha, rank_dropout=dropout, target_modules=targets)
    return LoKrConfig(r=r, alpha=alpha, rank_dropout=dropout, target_modules=targets)


def inject_peft(model: nn.Module, name: str, full_names: list[str], options: Mapping) -> None:
    """Inject peft's ``name`` adapter into exactly the layers ``full_names``; only its weights train."""
    from peft import inject_adapter_in_model

    inject_adapter_in_model(peft_config(name, full_names, options), model)
    for n, p in model.named_parameters():
        p.requires_grad_(is_peft_adapter_param(n))


def is_peft_adapter_param(name: str) -> bool:
    return any(t in name for t in (".lora_", ".hada_", ".lokr_")) and ".base_layer." not in name
