"""Baselines that Hugging Face ``peft`` already implements, behind the same ``inject`` call (not re-written).

``dora`` (LoRA with ``use_dora``), ``loha``, ``lokr`` and ``adalora`` (MoSLoRA Tab. 4 baselines) use peft's
own layers. AdaLoRA also needs peft's model wrapper: its forward adds the orthogonal regulariser to the
loss, and ``update_and_allocate(step)`` re-allocates the rank budget after each optimizer step over a
schedule of ``total_step`` steps (``auto``: the run's optimizer steps, set when training starts). The
wrapper is kept with the model (``peft_tuner(model)``); rankmix's training module calls the model through
it and the ``AdapterRouting`` callback calls ``allocate_rank_budget`` after each optimizer step. AdaLoRA's importance estimates are not
part of a checkpoint, so a resumed AdaLoRA run re-estimates them.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import nn

from rankmix.errors import ConfigError

PEFT_METHODS = ("dora", "loha", "lokr", "adalora")
OPTIONS = {
    "dora": ("r", "alpha", "dropout"),
    "loha": ("r", "alpha", "dropout"),
    "lokr": ("r", "alpha", "dropout"),
    "adalora": ("r", "init_r", "alpha", "dropout", "total_step", "tinit", "tfinal", "deltaT", "orth_reg_weight"),
}
ADAPTER_TENSORS = (".lora_", ".hada_", ".lokr_", ".ranknum.")
AUTO_TOTAL_STEP = 10**9  # placeholder until training starts (resolve_total_step)
TUNER_KEY = "rankmix_peft_tuner"  # kept in the model's __dict__: not a submodule (it wraps the model itself)


def peft_config(name: str, targets: list[str], options: Mapping):
    """peft's config object for baseline ``name`` (dora, loha, lokr, adalora) on the layers ``targets``, from the method
    options (``ConfigError`` for an option the method does not take)."""
    from peft import AdaLoraConfig, LoHaConfig, LoKrConfig, LoraConfig

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
    if name == "lokr":
        return LoKrConfig(r=r, alpha=alpha, rank_dropout=dropout, target_modules=targets)
    total = options.get("total_step")
    if total != "auto" and not (isinstance(total, int) and total > 0):
        raise ConfigError("method.total_step", total, "AdaLoRA schedules its rank budget over the run: give the "
                          "number of optimizer steps, or auto")
    schedule = {k: int(options[k]) for k in ("tinit", "tfinal", "deltaT") if options.get(k) is not None}
    init_r = int(options.get("init_r") or round(1.5 * r))
    if init_r < r:
        raise ConfigError("method.init_r", init_r, f"must be at least method.r={r}: AdaLoRA prunes from init_r "
                          "ranks down to an average of r")
    return AdaLoraConfig(target_r=r, init_r=init_r, lora_alpha=alpha,
                         lora_dropout=dropout, total_step=AUTO_TOTAL_STEP if total == "auto" else total,
                         target_modules=targets,
                         orth_reg_weight=float(options.get("orth_reg_weight", 0.5)), **schedule)


def inject_peft(model: nn.Module, name: str, full_names: list[str], options: Mapping) -> None:
    """Inject peft's ``name`` adapter into exactly the layers ``full_names``; peft marks only its weights trainable."""
    from peft import inject_adapter_in_model
    from peft.tuners.adalora import AdaLoraModel

    config = peft_config(name, full_names, options)
    if name == "adalora":
        model.__dict__[TUNER_KEY] = AdaLoraModel(model, config, "default")
    else:
        inject_adapter_in_model(config, model)


def resolve_total_step(tuner, steps: int) -> None:
    """Give an AdaLoRA schedule built with ``total_step: auto`` the run's number of optimizer steps."""
    config = tuner.peft_config["default"]
    if config.total_step != AUTO_TOTAL_STEP:
        return
    if config.tinit >= steps - config.tfinal:
        raise ConfigError("method.total_step", "auto", f"the run has {steps} optimizer steps, too few for "
                          f"tinit={config.tinit} + tfinal={config.tfinal}; lower method.tinit / method.tfinal")
    config.total_step = steps


def allocate_rank_budget(tuner, step: int) -> None:
    """AdaLoRA's budget step after optimizer step ``step`` (peft's ``update_and_allocate``).

    The budget falls from ``init_r`` to ``r`` ranks per layer on a cubic schedule; at each allocation peft masks
    the ``init_bgt - budget`` least important singular triplets (a ``kthvalue`` over all scores). With
    ``init_r == r`` (MoSLoRA's setting, App. B.1) the budget never falls: nothing is ever masked, and peft's
    ``kthvalue`` with k = 0 raises. Then there is nothing to allocate and the step is skipped; the orthogonal
    regulariser, part of the loss, still applies.
    """
    config = tuner.peft_config["default"]
    if config.init_r == config.target_r:
        return
    tuner.update_and_allocate(step)


def peft_tuner(model: nn.Module):
    """The peft model wrapper kept by ``inject`` (AdaLoRA), searched in ``model`` and its submodules."""
    for m in model.modules():
        if TUNER_KEY in m.__dict__:
            return m.__dict__[TUNER_KEY]
    return None


def is_peft_adapter_param(name: str) -> bool:
    """Whether parameter ``name`` is a peft adapter tensor (LoRA/DoRA, LoHa, LoKr factors, AdaLoRA's ranknum), not a
    base weight."""
    return any(t in name for t in ADAPTER_TENSORS) and ".base_layer." not in name
