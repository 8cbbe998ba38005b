"""``task.builder``: the function that builds a run, named by ``_target_``, and what it declares of its model.

``@builds(...)`` states, where the builder is written, the facts of the model it makes that other parts read
without building it: the backbone key of the trained language model's weights, the transformers auto class that
makes that model from a config, and how an image enters its sequence. The rehearsal projects a paper row's memory
and parameters from them (``rankmix.rehearsal.projection``); a builder without them is read as a decoder LM.

``task.kind``, which once named a builder, is refused in one line: a former kind with the builder to write
(``FORMER_KINDS``), any other with the form; so is a task that names no builder.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from rankmix.errors import ConfigError, first_line

FORMER_KINDS = {  # task.kind, no longer read -> the builder's _target_ to write instead
    "causal_lm": "rankmix.modules.causal_lm.build_causal_lm",
    "vqa": "rankmix.modules.vqa.build_vqa",
    "caption": "rankmix.modules.captioning.build_captioning",
    "vl_multitask": "rankmix.modules.clip_bart.build_vl_multitask",
    "benchmark_lm": "rankmix.modules.benchmark_lm.build_benchmark_lm",
    "dreambooth": "rankmix.modules.dreambooth.build_dreambooth",
    "visual_instruction": "rankmix.modules.visual_instruction.build_visual_instruction",
}


@dataclass(frozen=True)
class ModelFacts:
    """What a builder's model is, declared with ``@builds``.

    language: the ``backbone`` key of the trained language model's weights (``name_or_path``, ``text.name_or_path``,
    ``llm.name_or_path``, ...); auto_class: the transformers class that makes it from a config; image: how an image
    enters the language model's sequence: ``None`` (no image, or not as tokens), ``"prefix"`` (one token in front),
    ``"patches"`` (the vision tower's patches in place of one text token); decoder: whether it is a decoder LM whose
    memory per GPU the rehearsal measures."""

    language: str = "name_or_path"
    auto_class: str = "AutoModelForCausalLM"
    image: str | None = None
    decoder: bool = True


def builds(**facts) -> Callable:
    """Declare a builder's ``ModelFacts`` on it (``builder.facts``)."""
    declared = ModelFacts(**facts)

    def mark(function):
        function.facts = declared
        return function

    return mark


def builder_target(task: Mapping) -> str:
    """The dotted path of ``task``'s builder."""
    example = FORMER_KINDS["causal_lm"]
    if "kind" in task:
        kind = task["kind"]
        if kind in FORMER_KINDS:
            raise ConfigError("task.kind", kind, f"no longer read: write builder: {{_target_: {FORMER_KINDS[kind]}, "
                              "_partial_: true}} in the task yaml instead")
        raise ConfigError("task.kind", kind, "not read: name the task's builder in its yaml: builder: {_target_: "
                          f"<module>.<function>, _partial_: true}}, e.g. _target_: {example}")
    node = task.get("builder")
    if node is None:
        raise ConfigError("task.builder", None, "not set: write builder: {_target_: <module>.<function>, _partial_: "
                          f"true}} in the task yaml, e.g. _target_: {example}")
    target = node.get("_target_") if isinstance(node, Mapping) else None
    if not isinstance(target, str):
        raise ConfigError("task.builder", node, f"must be {{_target_: <module>.<function>, _partial_: true}}, e.g. "
                          f"_target_: {example}")
    return target


def builder_function(task: Mapping):
    """The function ``task``'s builder calls (for its ``facts``)."""
    from hydra.utils import get_method

    target = builder_target(task)
    try:
        return get_method(target)
    except Exception as e:  # noqa: BLE001 - Hydra wraps import errors in its own; one line names the key
        raise ConfigError("task.builder._target_", target, f"cannot be imported: {first_line(e)}") from None


def builder_of(task) -> Callable:
    """``task``'s builder, ``(cfg, run_dir) -> (module, data module, report, model)``, with the arguments its node
    adds."""
    from hydra.utils import instantiate

    function = builder_function(task)  # a target that cannot be imported is refused in one line
    node = task.get("builder")
    return function if node is None else instantiate(node, _partial_=True)


def facts_of(task: Mapping) -> ModelFacts:
    """The ``ModelFacts`` ``task``'s builder declares (a decoder LM's when it declares none)."""
    return getattr(builder_function(task), "facts", ModelFacts())
