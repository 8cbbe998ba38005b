"""The LightningModules, one per family of benchmark, each on ``base.AdapterModule``, and what builds a run.

A task yaml names its builder by ``_target_``::

    builder:
      _target_: rankmix.modules.vqa.build_vqa
      _partial_: true

A builder is a function ``(cfg, run_dir) -> (LightningModule, data module, injection report, the adapted model)``,
declared with ``@builds(...)`` (``rankmix.modules.builder``): what model it makes, which the rehearsal's projection
reads. ``build`` switches on the backbone's activation checkpointing (``backbone.activation_checkpointing``) as the
row says. A task of one's own may name a builder of one's own the same way.
"""

from __future__ import annotations

from rankmix.modules.builder import builder_of


def build(cfg, run_dir):
    """The task's model, data and LightningModule, from ``cfg.task.builder``."""
    from rankmix.backbones import enable_activation_checkpointing

    built = builder_of(cfg.task)(cfg, run_dir)
    enable_activation_checkpointing(built[0], cfg.backbone.activation_checkpointing)
    return built
