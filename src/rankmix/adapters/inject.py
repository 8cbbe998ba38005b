"""Inject adapter layers into a model by target-module names, freeze the rest, report what changed; the adapters'
state out of a model (``adapter_state_dict``) and back into one (``load_fitting``)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from rankmix.adapters.base import SUPPORTED_BASE_LAYERS, AdapterLayer
from rankmix.adapters.peft_methods import PeftMethod, is_peft_adapter_param
from rankmix.adapters.registry import FROZEN, build, get_method, instantiate
from rankmix.errors import ConfigError, NotMergeableError, RankmixError

# Used when a method config leaves target_modules empty, keyed by the HF config's model_type: peft's mapping, except
# for the Llama-style decoders, where it is every linear layer of the block (LLaMA-Factory's ``lora_target: all``, the
# setting of SMoRA's and HydraLoRA's runs) rather than peft's q_proj, v_proj.
LLAMA_BLOCK = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
DEFAULT_TARGETS: dict[str, list[str]] = {
    "llama": LLAMA_BLOCK,
    "mistral": LLAMA_BLOCK,
    "qwen2": LLAMA_BLOCK,
    "t5": ["q", "v"],
    "roberta": ["query", "value"],
    "bert": ["query", "value"],
    "gpt2": ["c_attn"],
    "bart": ["q_proj", "v_proj"],
    "vit": ["query", "value", "q_proj", "v_proj"],  # layer names differ across transformers releases
    # XTuner (MoSLoRA Tab. 5) wraps every linear layer but one named lm_head or output_layer (its
    # find_all_linear_names): all of the CLIP vision tower's, and all of InternLM2's, whose head is named `output`
    # (rankmix.llava names it so where the LLM's adapters are injected)
    "clip_vision_model": ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"],
    "internlm2": ["wqkv", "wo", "w1", "w2", "w3", "output"],
}

# Keys of a method config that steer injection rather than the layer itself.
INJECTION_KEYS = ("name", "target_modules", "exclude_modules", "modules_to_save")
SAVED_WHOLE = "_rankmix_saved_whole"   # marks a module trained and saved whole (``modules_to_save``)


@dataclass
class InjectionReport:
    method: str
    wrapped: list[str] = field(default_factory=list)
    trainable_parameters: int = 0
    total_parameters: int = 0

    def __str__(self) -> str:
        pct = 100.0 * self.trainable_parameters / max(self.total_parameters, 1)
        return (
            f"{self.method}: wrapped {len(self.wrapped)} layers; trainable {self.trainable_parameters:,} of "
            f"{self.total_parameters:,} parameters ({pct:.3f}%)"
        )


def _matches(name: str, pattern: str) -> bool:
    if pattern.startswith("re:"):
        return re.fullmatch(pattern[3:], name) is not None
    return name == pattern or name.endswith("." + pattern)


def _targets_for(model: nn.Module, target_modules: Iterable[str] | None) -> list[str]:
    if target_modules:
        return [str(t) for t in ([target_modules] if isinstance(target_modules, str) else target_modules)]
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in DEFAULT_TARGETS:
        raise ConfigError(
            "method.target_modules", None,
            f"no default targets for model_type {model_type!r}; list the layer names to wrap",
        )
    return DEFAULT_TARGETS[model_type]


def candidate_names(model: nn.Module) -> list[str]:
    """Distinct leaf names of the layers an adapter can wrap (e.g. q_proj, v_proj)."""
    return sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, SUPPORTED_BASE_LAYERS)})


def inject(model: nn.Module, method_cfg: Mapping) -> InjectionReport:
    """Wrap every matching layer of ``model`` with the configured method; freeze everything else.

    ``method_cfg`` holds ``name``, ``target_modules`` (names, or ``re:<regex>`` on full names; empty =
    per-architecture default), optional ``exclude_modules``, optional ``modules_to_save`` (modules trained whole
    and saved with the adapter, e.g. a new classifier head, as peft's option of that name), and the method's own
    options. Method ``none`` wraps nothing: the whole model is frozen (the baseline of the frozen backbone).
    """
    cfg = dict(method_cfg)
    name = cfg.get("name")
    if name == FROZEN:
        model.requires_grad_(False)
        total = sum(p.numel() for p in model.parameters())
        return InjectionReport(method=name, trainable_parameters=0, total_parameters=total)
    targets = _targets_for(model, cfg.get("target_modules"))
    excludes = [str(e) for e in (cfg.get("exclude_modules") or [])]
    options = {k: v for k, v in cfg.items() if k not in INJECTION_KEYS}

    for p in model.parameters():
        p.requires_grad_(False)

    chosen = [
        n for n, m in model.named_modules()
        if isinstance(m, SUPPORTED_BASE_LAYERS) and not isinstance(m, AdapterLayer)
        and any(_matches(n, t) for t in targets) and not any(_matches(n, e) for e in excludes)
    ]
    if not chosen:
        default = DEFAULT_TARGETS.get(getattr(getattr(model, "config", None), "model_type", None))
        hint = (f"; its architecture's default targets are {', '.join(default)} (method.target_modules=[] "
                "uses them)" if default and cfg.get("target_modules") else "")
        raise ConfigError(
            "method.target_modules", targets,
            f"matches no layer of {type(model).__name__}; layers it has: {', '.join(candidate_names(model))}{hint}",
        )
    report = InjectionReport(method=name, wrapped=list(chosen))
    cls = get_method(name)
    if issubclass(cls, PeftMethod):
        instantiate(name, **options).inject(model, chosen)
    else:
        for full_name in chosen:
            cls.check_target(model, full_name, options)
        for full_name in chosen:
            parent_name, _, child = full_name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, build(name, getattr(parent, child), **options))
    _train_whole(model, [str(m) for m in (cfg.get("modules_to_save") or [])])
    report.trainable_parameters = sum(p.numel() for p in model.parameters() if p.requires_grad)
    report.total_parameters = sum(p.numel() for p in model.parameters())
    return report


def _train_whole(model: nn.Module, names: list[str]) -> None:
    """Unfreeze the modules named in ``modules_to_save`` and mark them for ``adapter_state_dict``."""
    for pattern in names:
        found = [m for n, m in model.named_modules() if n and _matches(n, pattern)]
        if not found:
            raise ConfigError("method.modules_to_save", pattern,
                              f"matches no module of {type(model).__name__}; name a module it has (e.g. its head)")
        for module in found:
            module.requires_grad_(True)
            setattr(module, SAVED_WHOLE, True)


def check_context(model: nn.Module, provided) -> None:
    """Refuse a method that reads per-call inputs (x_R, task ids, modality masks) the task never supplies."""
    needed = set().union(*(layer.required_context() for layer in adapter_layers(model).values()))
    missing = sorted(needed - set(provided))
    if missing:
        method = next(iter(adapter_layers(model).values())).method
        raise ConfigError("method.name", method, f"reads {', '.join(missing)} from each batch, which this task "
                          f"does not provide (it provides: {', '.join(sorted(provided)) or 'nothing'}); "
                          "pick a task that does (e.g. a vision-language task for x_r)")


def adapter_layers(model: nn.Module) -> dict[str, AdapterLayer]:
    """Every rankmix adapter layer of ``model`` by its full module name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, AdapterLayer)}


def adapter_state_dict(model: nn.Module, prefix: str = "") -> dict[str, torch.Tensor]:
    """State entries of all adapter layers (weights and buffers), keyed by their full names in ``model``.

    Layers injected through peft (dora, loha, lokr) contribute their adapter weights, and modules named in
    ``modules_to_save`` their whole state.
    """
    out = {}
    for name, module in model.named_modules():
        if getattr(module, SAVED_WHOLE, False):
            out.update({f"{prefix}{name}.{k}": v for k, v in module.state_dict().items()})
    for name, layer in adapter_layers(model).items():
        for k, v in layer.adapter_state_dict().items():
            out[f"{prefix}{name}.{k}"] = v
    for k, v in model.state_dict(keep_vars=True).items():
        if is_peft_adapter_param(k):
            out[f"{prefix}{k}"] = v.detach()
    return out


def merge_adapters(model: nn.Module) -> None:
    """W0 ← W0 + ΔW in every adapter layer (the layers stay in place; ``unmerge_adapters`` undoes it)."""
    for layer in adapter_layers(model).values():
        layer.merge()


def unmerge_adapters(model: nn.Module) -> None:
    """W0 ← W0 − ΔW in every merged adapter layer, undoing ``merge_adapters``."""
    for layer in adapter_layers(model).values():
        layer.unmerge()


def merge_and_unload(model: nn.Module) -> nn.Module:
    """W0 ← W0 + ΔW in every adapter layer, then the plain base modules back in their places: the model is the
    backbone alone again, and its ``save_pretrained`` reloads in plain transformers. A wrapped weight that is tied
    to another (an LM head tied to the input embeddings) is untied first, so the update reaches the head only. A
    model with a method whose update depends on the input (routing, mixtures) has no fixed ΔW: it is refused
    before anything changes."""
    layers = adapter_layers(model)
    routed = {layer.method for layer in layers.values() if not layer.mergeable}
    if routed:
        raise NotMergeableError(
            f"merge_and_unload: {', '.join(sorted(routed))} cannot be merged (the update depends on the input, "
            "so there is no fixed ΔW); keep the adapters and save them with rankmix.adapters.save_adapter")
    shared = {id(p) for n, p in model.named_parameters(remove_duplicate=False)
              if not n.endswith("base_layer.weight")}   # weights also used elsewhere (a head tied to embeddings)
    for name, layer in layers.items():
        if id(layer.base_layer.weight) in shared:   # the update is the head's alone: untie before merging
            layer.base_layer.weight = nn.Parameter(layer.base_layer.weight.detach().clone(), requires_grad=False)
            if getattr(getattr(model, "config", None), "tie_word_embeddings", False):
                model.config.tie_word_embeddings = False
        layer.merge()
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, layer.base_layer)
    return model


def load_fitting(model: nn.Module, state: Mapping, expected: set[str], source) -> None:
    """Load ``state`` into ``model`` (non-strict) when its keys are exactly ``expected``; else refuse, naming
    ``source`` and the first missing or unexpected tensor."""
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise RankmixError(f"{source}: adapter does not fit this model ({len(missing)} tensors missing, "
                           f"{len(unexpected)} unexpected; first: {(missing or unexpected)[0]})")
    model.load_state_dict(state, strict=False)
