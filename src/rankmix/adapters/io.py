"""Saving and loading adapter weights, and exporting LoRA/MoSLoRA in peft's ``save_pretrained`` format.

``save_adapter`` writes ``adapter.safetensors`` (adapter weights and buffers only) and ``adapter.json``
(the method config); ``load_adapter`` puts them back into a model injected with the same config.
``export_peft`` writes ``adapter_config.json`` + ``adapter_model.safetensors`` that
``peft.PeftModel.from_pretrained`` reads. MoSLoRA and TS-Mixing are exported as plain LoRA with the mixer
absorbed into A (A' = M A, so B A' = B M A): the update is identical, the mixer is no longer separate.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from safetensors.torch import load_file, save_file
from torch import nn

from rankmix.adapters.inject import adapter_layers, adapter_state_dict
from rankmix.errors import RankmixError

PEFT_EXPORTABLE = ("lora", "moslora", "ts_mixing", "flora")


def save_adapter(model: nn.Module, directory: str | Path, method_cfg: Mapping) -> Path:
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in adapter_state_dict(model).items()}
    save_file(state, d / "adapter.safetensors")
    (d / "adapter.json").write_text(json.dumps(dict(method_cfg), indent=2, default=list) + "\n")
    return d


def load_adapter(model: nn.Module, directory: str | Path) -> None:
    """Load weights saved by ``save_adapter`` into ``model`` (already injected with the same method)."""
    state = load_file(Path(directory) / "adapter.safetensors")
    expected = set(adapter_state_dict(model))
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise RankmixError(f"{directory}: adapter does not fit this model ({len(missing)} tensors missing, "
                           f"{len(unexpected)} unexpected; first: {(missing or unexpected)[0]})")
    model.load_state_dict(state, strict=False)


def export_peft(model: nn.Module, directory: str | Path) -> Path:
    """Write the model's LoRA/MoSLoRA adapters in peft's format (keys ``base_model.model.<layer>.lora_A.weight``)."""
    from peft import LoraConfig
    from transformers.pytorch_utils import Conv1D

    layers = adapter_layers(model)
    methods = {layer.method for layer in layers.values()}
    if not layers or not methods <= set(PEFT_EXPORTABLE):
        raise RankmixError(f"peft export supports {', '.join(PEFT_EXPORTABLE)}; this model has {sorted(methods) or 'none'}")
    ranks = {(layer.r, layer.alpha) for layer in layers.values()}
    if len(ranks) != 1:
        raise RankmixError(f"peft export needs one (r, alpha) for all layers; found {sorted(ranks)}")
    (r, alpha), = ranks
    conv1d = any(isinstance(layer.base_layer, Conv1D) for layer in layers.values())
    config = LoraConfig(r=r, lora_alpha=alpha, target_modules=sorted(layers), fan_in_fan_out=conv1d, bias="none")
    d = Path(directory)
    config.save_pretrained(d)
    state = {}
    for name, layer in layers.items():
        a = layer.absorbed_A() if hasattr(layer, "absorbed_A") else layer.lora_A.weight
        state[f"base_model.model.{name}.lora_A.weight"] = a.detach().contiguous().cpu()
        state[f"base_model.model.{name}.lora_B.weight"] = layer.lora_B.weight.detach().contiguous().cpu()
    save_file(state, d / "adapter_model.safetensors", metadata={"format": "pt"})
    return d
