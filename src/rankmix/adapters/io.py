"""Saving and loading adapter weights, and exporting the methods that declare a ``peft_export`` (LoRA/MoSLoRA as
plain LoRA, the peft-backed baselines, the routed methods of ``rankmix.peft``) in peft's ``save_pretrained`` format.

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

from rankmix.adapters.inject import adapter_layers, adapter_state_dict, load_fitting
from rankmix.adapters.registry import method_defaults, peft_exportable
from rankmix.errors import RankmixError


def save_adapter(model: nn.Module, directory: str | Path, method_cfg: Mapping) -> Path:
    """Write the adapters of ``model`` to ``directory`` (made if missing) and return it: ``adapter.safetensors``
    holds every adapter layer's weights and persistent buffers (e.g. SMoRA's balancing bias ``router_bias``, never
    the frozen base weights), keyed by their full names in ``model``; ``adapter.json`` holds ``method_cfg``, the
    method config to inject before ``load_adapter`` (``inject(model, method_cfg)``)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in adapter_state_dict(model).items()}
    save_file(state, d / "adapter.safetensors")
    (d / "adapter.json").write_text(json.dumps(dict(method_cfg), indent=2, default=list) + "\n")
    return d


def load_adapter(model: nn.Module, directory: str | Path) -> None:
    """Load weights saved by ``save_adapter`` into ``model`` (already injected with the same method)."""
    load_fitting(model, load_file(Path(directory) / "adapter.safetensors"), set(adapter_state_dict(model)), directory)


def peft_task_type(model: nn.Module) -> str | None:
    """peft's ``task_type`` for a transformers model: causal LM, seq2seq LM, else None (a bare encoder)."""
    config = getattr(model, "config", None)
    if getattr(config, "is_encoder_decoder", False) and hasattr(model, "generate"):
        return "SEQ_2_SEQ_LM"
    if type(model).__name__.endswith(("ForCausalLM", "LMHeadModel")):
        return "CAUSAL_LM"
    return None


def export_peft(model: nn.Module, directory: str | Path, base_model_name_or_path: str | None = None) -> Path:
    """Write the model's LoRA/MoSLoRA adapters in peft's format (keys ``base_model.model.<layer>.lora_A.weight``),
    with complete metadata: ``task_type`` (so ``AutoPeftModelFor…`` loads it), ``base_model_name_or_path`` (the
    model's own name unless given), the layers' dropout, and ``rank_pattern`` / ``alpha_pattern`` for layers whose
    r or alpha differ from the most common one."""
    from collections import Counter

    from peft import LoraConfig
    from transformers.pytorch_utils import Conv1D

    layers = adapter_layers(model)
    if not layers and "default" in (getattr(model, "peft_config", None) or {}):
        return _export_peft_injected(model, Path(directory), base_model_name_or_path)
    methods = {layer.method for layer in layers.values()}
    kinds = {layer.peft_export for layer in layers.values()}
    name = base_model_name_or_path or getattr(getattr(model, "config", None), "_name_or_path", None) or None
    if len(methods) == 1 and kinds == {"rankmix"}:
        return _export_routed(model, layers, Path(directory), name)
    if not layers or kinds != {"lora"}:
        raise RankmixError(f"peft export supports {', '.join(peft_exportable('lora'))}, the peft-backed baselines and "
                           f"the routed {', '.join(peft_exportable('rankmix'))} (rankmix.peft); this model has "
                           f"{sorted(methods) or 'none'}")
    dropouts = {getattr(layer.dropout, "p", 0.0) for layer in layers.values()}
    if len(dropouts) != 1:
        raise RankmixError(f"peft export needs one dropout for all layers; found {sorted(dropouts)}")
    r, _ = Counter(layer.r for layer in layers.values()).most_common(1)[0]
    alpha, _ = Counter(layer.alpha for layer in layers.values()).most_common(1)[0]
    conv1d = any(isinstance(layer.base_layer, Conv1D) for layer in layers.values())
    config = LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=dropouts.pop(), target_modules=sorted(layers), fan_in_fan_out=conv1d,
        bias="none", task_type=peft_task_type(model), base_model_name_or_path=name,
        rank_pattern={n: layer.r for n, layer in layers.items() if layer.r != r},
        alpha_pattern={n: layer.alpha for n, layer in layers.items() if layer.alpha != alpha},
    )
    d = Path(directory)
    config.save_pretrained(d)
    state = {}
    for name, layer in layers.items():
        a = layer.absorbed_A() if hasattr(layer, "absorbed_A") else layer.lora_A.weight
        state[f"base_model.model.{name}.lora_A.weight"] = a.detach().contiguous().cpu()
        state[f"base_model.model.{name}.lora_B.weight"] = layer.lora_B.weight.detach().contiguous().cpu()
    save_file(state, d / "adapter_model.safetensors", metadata={"format": "pt"})
    return d


def export_diffusers(unet: nn.Module, directory: str | Path) -> Path:
    """A UNet's LoRA/MoSLoRA adapters as a diffusers LoRA file, ``<directory>/pytorch_lora_weights.safetensors`` with
    keys ``unet.<layer>.lora_A.weight`` / ``unet.<layer>.lora_B.weight``, which diffusers' ``load_lora_weights``
    (pipelines) and ``load_lora_adapter(..., prefix="unet")`` (a UNet) read. The mixer is absorbed into A (A' = M A)
    and the scaling α/r into B, so diffusers' rank-r LoRA at its default α = r computes the same update."""
    layers = adapter_layers(unet)
    methods = {layer.method for layer in layers.values()}
    if not layers or {layer.peft_export for layer in layers.values()} != {"lora"}:
        raise RankmixError(f"diffusers export supports {', '.join(peft_exportable('lora'))}; this UNet has "
                           f"{sorted(methods) or 'no adapters'}")
    state = {}
    for name, layer in layers.items():
        a = layer.absorbed_A() if hasattr(layer, "absorbed_A") else layer.lora_A.weight
        state[f"unet.{name}.lora_A.weight"] = a.detach().contiguous().cpu()
        state[f"unet.{name}.lora_B.weight"] = (layer.lora_B.weight * layer.scaling).detach().contiguous().cpu()
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    save_file(state, d / "pytorch_lora_weights.safetensors", metadata={"format": "pt"})
    return d


def layer_options(layer: nn.Module) -> dict:
    """Every option that builds ``layer``: those it was built with over its class's defaults, so an exported config
    states the values the layer uses (an option left out, e.g. SMoRA's ``alpha``, is written with its default)."""
    return {**method_defaults(layer.method), **dict(getattr(layer, "options", None) or {})}


def _export_routed(model: nn.Module, layers: dict, d: Path, base_model_name_or_path: str | None) -> Path:
    """A routed method (``rankmix.peft``): peft's file layout, ``peft_type: "RANKMIX"``, every layer's adapter tensors
    (router, low-rank factors, buffers) under ``base_model.model.<layer>.lora_rankmix.<tensor>``, and every option
    of the layers, defaults included (``layer_options``)."""
    from rankmix.peft import MODULE_DICT, routed_adapter_config

    options = [layer_options(layer) for layer in layers.values()]
    if any(o != options[0] for o in options):
        raise RankmixError("peft export of a routed method needs one set of options for all layers")
    d.mkdir(parents=True, exist_ok=True)
    config = routed_adapter_config(layers, options[0], peft_task_type(model), base_model_name_or_path)
    (d / "adapter_config.json").write_text(json.dumps(config, indent=2, sort_keys=True, default=list) + "\n")
    state = {f"base_model.model.{name}.{MODULE_DICT}.{k}": v.detach().contiguous().cpu()
             for name, layer in layers.items() for k, v in layer.adapter_state_dict().items()}
    save_file(state, d / "adapter_model.safetensors", metadata={"format": "pt"})
    return d


def _export_peft_injected(model: nn.Module, d: Path, base_model_name_or_path: str | None) -> Path:
    """The peft-backed baselines (dora, loha, lokr, adalora): peft's own config and state dict
    (``get_peft_model_state_dict``), with the task type and base model filled in as ``export_peft`` does."""
    import copy

    from peft import get_peft_model_state_dict

    config = copy.deepcopy(model.peft_config["default"])
    config.task_type = peft_task_type(model)
    config.base_model_name_or_path = (base_model_name_or_path
                                      or getattr(getattr(model, "config", None), "_name_or_path", None) or None)
    config.inference_mode = True
    config.save_pretrained(d)
    state = get_peft_model_state_dict(model, adapter_name="default")
    save_file({f"base_model.model.{k}": v.detach().contiguous().cpu() for k, v in state.items()},
              d / "adapter_model.safetensors", metadata={"format": "pt"})
    return d
