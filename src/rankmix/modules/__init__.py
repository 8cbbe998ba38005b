"""The LightningModules, one per kind of benchmark (``task.kind``), each on ``base.AdapterModule``, and the builder of
each: ``build(cfg, run_dir)`` gives (LightningModule, data module, injection report, the adapted model), with the
backbone's activation checkpointing (``backbone.activation_checkpointing``) switched on as the row says."""

from __future__ import annotations

import importlib

BUILDERS = {  # task.kind -> "module:function"
    "causal_lm": "rankmix.modules.causal_lm:build_causal_lm",
    "vqa": "rankmix.modules.vqa:build_vqa",
    "caption": "rankmix.modules.captioning:build_captioning",
    "vl_multitask": "rankmix.modules.clip_bart:build_vl_multitask",
    "benchmark_lm": "rankmix.modules.benchmark_lm:build_benchmark_lm",
    "dreambooth": "rankmix.modules.dreambooth:build_dreambooth",
    "visual_instruction": "rankmix.modules.visual_instruction:build_visual_instruction",
}


def build(cfg, run_dir):
    """The task's model, data and LightningModule, by ``cfg.task.kind`` (``causal_lm`` when unset)."""
    from rankmix.errors import ConfigError

    kind = cfg.task.get("kind", "causal_lm")
    if kind not in BUILDERS:
        raise ConfigError("task.kind", kind, f"unknown; kinds: {', '.join(BUILDERS)}")
    from rankmix.backbones import enable_activation_checkpointing

    module, _, function = BUILDERS[kind].partition(":")
    built = getattr(importlib.import_module(module), function)(cfg, run_dir)
    enable_activation_checkpointing(built[0], cfg.backbone.get("activation_checkpointing", "none"))
    return built
