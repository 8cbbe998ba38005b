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

from typing import ClassVar

from torch import nn

from rankmix.adapters.registry import declared_defaults, register
from rankmix.errors import ConfigError

ADAPTER_TENSORS = (".lora_", ".hada_", ".lokr_", ".ranknum.")
AUTO_TOTAL_STEP = 10**9  # placeholder until training starts (resolve_total_step)
TUNER_KEY = "rankmix_peft_tuner"  # kept in the model's __dict__: not a submodule (it wraps the model itself)


def rank(r) -> int:
    """r as an int (a whole number given as text or float is taken), ``ConfigError`` on ``r`` unless positive."""
    r = int(r)
    if r <= 0:
        raise ConfigError("r", r, "must be a positive integer")
    return r


class PeftMethod:
    """A baseline peft implements, injected by peft into a whole model: an instance holds the method's options (its
    constructor declares them and their defaults) and ``config(targets)`` is peft's config for the layers
    ``targets``. Capabilities: no router statistics, exported by peft itself (peft, not rankmix, merges its layers)."""

    method: ClassVar[str] = ""
    peft_export: ClassVar[str | None] = "peft"

    @classmethod
    def check_options(cls, options: dict) -> None:
        """Nothing to check before a model is built (the constructor checks every option)."""

    @classmethod
    def routes(cls) -> bool:
        return False

    def config(self, targets: list[str]):
        raise NotImplementedError

    def inject(self, model: nn.Module, targets: list[str]) -> None:
        """Inject peft's adapter into exactly the layers ``targets``; peft marks only its weights trainable."""
        from peft import inject_adapter_in_model

        inject_adapter_in_model(self.config(targets), model)


class RankAlphaDropout(PeftMethod):
    """The options of peft's LoRA-like baselines: rank r, scaling α (α/r) and dropout."""

    def __init__(self, r: int = 8, alpha: float = 16.0, dropout: float = 0.0):
        self.r, self.alpha, self.dropout = rank(r), float(alpha), float(dropout)


@register("dora")
class DoRA(RankAlphaDropout):
    """DoRA: LoRA with a learned magnitude per output, W = m (W0 + (α/r) B A) / ‖W0 + (α/r) B A‖ (peft ``use_dora``)."""

    def config(self, targets: list[str]):
        from peft import LoraConfig

        return LoraConfig(r=self.r, lora_alpha=self.alpha, lora_dropout=self.dropout, use_dora=True,
                          target_modules=targets)


@register("loha")
class LoHa(RankAlphaDropout):
    """LoHa: ΔW = (α/r) (B1 A1) ⊙ (B2 A2), a Hadamard product of two rank-r products (peft); dropout on the ranks."""

    def config(self, targets: list[str]):
        from peft import LoHaConfig

        return LoHaConfig(r=self.r, alpha=self.alpha, rank_dropout=self.dropout, target_modules=targets)


@register("lokr")
class LoKr(RankAlphaDropout):
    """LoKr: ΔW = (α/r) W1 ⊗ (B A), a Kronecker product with a rank-r factor (peft); dropout on the ranks."""

    def config(self, targets: list[str]):
        from peft import LoKrConfig

        return LoKrConfig(r=self.r, alpha=self.alpha, rank_dropout=self.dropout, target_modules=targets)


@register("adalora")
class AdaLoRA(RankAlphaDropout):
    """AdaLoRA: ΔW = (α/r) P Λ Q, an SVD-shaped update whose init_r singular values per layer are pruned by
    importance to an average of r over ``total_step`` optimizer steps (peft's ``AdaLoraModel``, kept with the
    model: its forward adds the orthogonal regulariser to the loss)."""

    @classmethod
    def check_options(cls, options: dict) -> None:
        """``total_step`` is auto or a positive number of optimizer steps, more than ``tinit + tfinal`` (the budget
        falls between them)."""
        o = {**declared_defaults(cls), **options}
        total, tinit, tfinal = o["total_step"], o["tinit"], o["tfinal"]
        if total != "auto" and not (isinstance(total, int) and not isinstance(total, bool) and total > 0):
            raise ConfigError("total_step", total, "AdaLoRA schedules its rank budget over the run: give the "
                              "number of optimizer steps, or auto")
        if total != "auto" and isinstance(tinit, int) and isinstance(tfinal, int) and tinit >= total - tfinal:
            raise ConfigError("total_step", total, f"too few steps for tinit={tinit} + tfinal={tfinal}; lower "
                              "method.tinit / method.tfinal, or give more steps")

    def __init__(self, r: int = 8, init_r: int | None = None, alpha: float = 16.0, dropout: float = 0.0,
                 total_step: int | str = "auto", tinit: int = 50, tfinal: int = 100, deltaT: int = 10,
                 orth_reg_weight: float = 0.5):
        super().__init__(r=r, alpha=alpha, dropout=dropout)
        self.check_options({"total_step": total_step, "tinit": tinit, "tfinal": tfinal})
        self.init_r = int(init_r or round(1.5 * self.r))
        if self.init_r < self.r:
            raise ConfigError("init_r", self.init_r, f"must be at least method.r={self.r}: AdaLoRA prunes from "
                              "init_r ranks down to an average of r")
        self.total_step = AUTO_TOTAL_STEP if total_step == "auto" else total_step
        self.schedule = {"tinit": int(tinit), "tfinal": int(tfinal), "deltaT": int(deltaT)}
        self.orth_reg_weight = float(orth_reg_weight)

    def config(self, targets: list[str]):
        from peft import AdaLoraConfig

        return AdaLoraConfig(target_r=self.r, init_r=self.init_r, lora_alpha=self.alpha, lora_dropout=self.dropout,
                             total_step=self.total_step, target_modules=targets,
                             orth_reg_weight=self.orth_reg_weight, **self.schedule)

    def inject(self, model: nn.Module, targets: list[str]) -> None:
        """peft's ``AdaLoraModel`` around ``model``, kept in its ``__dict__`` (``peft_tuner``)."""
        from peft.tuners.adalora import AdaLoraModel

        model.__dict__[TUNER_KEY] = AdaLoraModel(model, self.config(targets), "default")


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
