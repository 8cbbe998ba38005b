"""Routed rankmix methods (those declaring ``peft_export = "rankmix"``: SMoRA, LoRA-MoE, HydraLoRA, SMEAR) inside
real ``peft``.

``rankmix.adapters.export_peft`` writes them in peft's layout: ``adapter_config.json`` (a ``LoraConfig`` with
``peft_type: "RANKMIX"`` and a ``rankmix`` entry naming the method and its options) and
``adapter_model.safetensors`` (keys ``base_model.model.<layer>.lora_rankmix.<tensor>``: the router, the low-rank
factors and every buffer, e.g. SMoRA's balancing bias).

``from_pretrained(base_model, path)`` registers ``PeftRoutedLayer`` as a peft custom LoRA module
(``LoraConfig._register_custom_module``), builds a ``peft.PeftModel`` with ``peft.get_peft_model`` and loads the
tensors: its outputs are those of the rankmix model that was exported. peft then drives the layers as its own
(``disable_adapter()``, ``set_adapter``, ``delete_adapter``); ``merge_and_unload()`` refuses, since a routed update
has no fixed ΔW.

A plain ``peft.PeftModel.from_pretrained`` without rankmix refuses these files: peft knows no ``peft_type``
"RANKMIX" (``KeyError: 'RANKMIX'``), so a routed adapter is never loaded silently as a dense LoRA.
"""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from rankmix.errors import NotMergeableError, RankmixError

PEFT_TYPE = "RANKMIX"
MODULE_DICT = "lora_rankmix"   # peft keeps trainable, and saves, what carries its "lora_" prefix
FORMAT = 1


def _peft_layer_class():
    from peft.tuners.tuners_utils import BaseTunerLayer

    class PeftRoutedLayer(nn.Module, BaseTunerLayer):
        """A peft tuner layer around one base layer: ``y = W0 x + Σ_active Δ_a(x)``, each Δ_a a rankmix layer's
        ``delta`` (its router and low-rank path), kept in ``lora_rankmix[adapter_name]``."""

        adapter_layer_names = (MODULE_DICT,)
        other_param_names = ()

        def __init__(self, base_layer: nn.Module, adapter_name: str, config, **kwargs):
            nn.Module.__init__(self)
            self.base_layer = base_layer
            self.lora_rankmix = nn.ModuleDict()
            self._disable_adapters = False
            self.merged_adapters = []
            self.update_layer(adapter_name, config.rankmix["method"], config.rankmix["options"])
            self._active_adapter = adapter_name

        def update_layer(self, adapter_name: str, method: str, options: dict) -> None:
            from rankmix.adapters.registry import build

            layer = build(method, self.base_layer, **options)
            del layer._modules["base_layer"]  # one copy of the frozen weights: this wrapper's (peft's base layer)
            object.__setattr__(layer, "base_layer", self.base_layer)
            self.lora_rankmix[adapter_name] = layer

        def forward(self, x, *args, **kwargs):
            y = self.base_layer(x, *args, **kwargs)
            if self.disable_adapters:
                return y
            for name in self.active_adapters:
                if name in self.lora_rankmix:
                    y = y + self.lora_rankmix[name].delta(x).to(y.dtype)
            return y

        def merge(self, safe_merge: bool = False, adapter_names=None) -> None:
            methods = sorted({layer.method for layer in self.lora_rankmix.values()})
            raise NotMergeableError(f"{', '.join(methods)}: a routed update depends on the input, so it has no fixed "
                                    "ΔW to merge into the base weights; use the PeftModel unmerged")

        def unmerge(self) -> None:
            """Nothing is ever merged (``merge`` refuses)."""

    return PeftRoutedLayer


def _custom_layer_types() -> tuple[type, ...]:
    from transformers.pytorch_utils import Conv1D

    return (nn.Linear, Conv1D)


def routed_adapter_config(layers: dict, options: dict, task_type: str | None, base_model_name_or_path: str | None) -> dict:
    """``adapter_config.json`` of a routed export: peft's LoRA fields plus the ``rankmix`` entry. ``r`` and
    ``lora_alpha`` are the layers' own (SMoRA's Eq. 4 scaling s = α/k or α/r reads the α written here), and
    ``options`` must hold every option, defaults included (``rankmix.adapters.io.layer_options``)."""
    from peft import LoraConfig

    (method,) = {layer.method for layer in layers.values()}
    first = next(iter(layers.values()))
    r, alpha = int(getattr(first, "r", options["r"])), getattr(first, "alpha", options.get("alpha"))
    config = LoraConfig(r=r, lora_alpha=alpha if alpha is not None else r,
                        target_modules=sorted(layers), task_type=task_type,
                        base_model_name_or_path=base_model_name_or_path, inference_mode=True, bias="none")
    out = {k: sorted(v) if isinstance(v, set) else v for k, v in config.to_dict().items()}
    out["peft_type"] = PEFT_TYPE
    out["rankmix"] = {"format": FORMAT, "method": method, "options": options}
    return out


def from_pretrained(base_model: nn.Module, path: str | Path, adapter_name: str = "default", is_trainable: bool = False):
    """A ``peft.PeftModel`` of ``base_model`` with the adapter saved at ``path`` by ``export_peft``: a routed
    rankmix method through peft's custom-module support, or any other adapter through peft's own
    ``PeftModel.from_pretrained``."""
    import peft
    from peft import LoraConfig
    from safetensors.torch import load_file

    from rankmix.adapters.inject import load_fitting
    from rankmix.adapters.registry import peft_exportable

    d = Path(path)
    config_file = d / "adapter_config.json"
    if not config_file.is_file():
        raise RankmixError(f"{config_file}: not found; export the adapter with rankmix.adapters.export_peft")
    raw = json.loads(config_file.read_text())
    if raw.get("peft_type") != PEFT_TYPE:
        return peft.PeftModel.from_pretrained(base_model, str(d), adapter_name=adapter_name, is_trainable=is_trainable)
    spec = raw.pop("rankmix", None) or {}
    routed = peft_exportable("rankmix")
    if spec.get("format") != FORMAT or spec.get("method") not in routed:
        raise RankmixError(f"{config_file}: 'rankmix' entry {spec!r} is not a routed export of this version "
                           f"(format {FORMAT}, one of {', '.join(routed)})")
    raw["peft_type"] = "LORA"
    config = LoraConfig.from_peft_type(**raw)
    config.inference_mode = not is_trainable
    config._register_custom_module(dict.fromkeys(_custom_layer_types(), _peft_layer_class()))
    config.rankmix = {"method": spec["method"], "options": spec.get("options") or {}}
    model = peft.get_peft_model(base_model, config, adapter_name=adapter_name)
    saved = load_file(d / "adapter_model.safetensors")
    marker = f".{MODULE_DICT}."
    state = {k.replace(marker, f"{marker}{adapter_name}.", 1): v for k, v in saved.items()}
    load_fitting(model, state, {k for k in model.state_dict() if f"{marker}{adapter_name}." in k}, d)
    if not is_trainable:  # as peft's own from_pretrained: inference, nothing trainable
        model.requires_grad_(False)
        model.eval()
    return model
