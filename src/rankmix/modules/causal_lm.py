"""LightningModule for instruction tuning a causal LM with an adapter method, scored by generation.

Training minimises the token cross-entropy of the response. Validation and test generate from the prompt
(greedy, or beam search with ``num_beams`` > 1; left padding with the attention mask) and score with the
task's scorer: ``generic`` (``rankmix.metrics.text``: per task, then the mean over tasks), or the ``score`` of a
benchmark folder (``rankmix.tasks``: ``flan``, SMoRA's FLAN protocol, clusters and average; ``commonsense``,
LLM-Adapters' answer extraction from the text after the first "### Response:" of the decoded prompt + generation,
accuracy per test set and average; or one's own). A folder that defines ``prediction`` reads the prediction from
the decoded prompt + generation; otherwise it is the generated text.
Checkpoints hold the adapter weights and buffers (``rankmix.modules.base``); the frozen backbone is rebuilt from its
config.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from pathlib import Path

from rankmix.adapters import adapter_context
from rankmix.adapters.peft_methods import peft_tuner
from rankmix.checked import choice
from rankmix.data.instruction import RECORD_KEYS
from rankmix.errors import ConfigError
from rankmix.metrics.text import score_generations
from rankmix.modules.base import AdapterModule
from rankmix.modules.builder import builds

SCORERS = {"generic": score_generations}


def scorer_function(name: str):
    """``task.scorer``: ``generic``, or the ``score`` of the benchmark folder ``rankmix/tasks/<name>/``."""
    from rankmix import tasks

    if name in SCORERS:   # the generic scorer is found without importing any benchmark folder
        return SCORERS[name]
    own = {n: getattr(tasks.get(n), "score", None) for n in tasks.names()}
    scorers = {n: f for n, f in own.items() if f is not None}
    return scorers[choice("task.scorer", name, (*SCORERS, *scorers))]


def prediction_function(name: str):
    """The benchmark folder ``name``'s ``prediction`` (read from the decoded prompt + generation), or None."""
    from rankmix import tasks

    return getattr(tasks.get(name), "prediction", None) if name not in SCORERS else None


class CausalLMModule(AdapterModule):
    def __init__(self, model, tokenizer, optimizer: Mapping, max_new_tokens: int = 16, num_beams: int = 1,
                 validation_generates: bool = True, scorer: str = "generic", scorer_options: dict | None = None,
                 predictions_path: str | None = None):
        super().__init__(model, optimizer, predictions_path)
        self.tokenizer = tokenizer
        self.scorer = scorer
        self.score_fn = scorer_function(scorer)
        self.from_full_text = prediction_function(scorer)
        self.scorer_options = dict(scorer_options or {})  # e.g. flan: {rouge_package: rouge}
        accepted = [p for p in inspect.signature(self.score_fn).parameters if p != "records"]
        for name in self.scorer_options:
            if name not in accepted:
                raise ConfigError(f"task.scorer_options.{name}", self.scorer_options[name],
                                  f"not an option of scorer {self.scorer}; its options: {', '.join(accepted) or 'none'}")
        self.max_new_tokens = max_new_tokens
        self.num_beams = num_beams
        self.validation_generates = validation_generates  # False: validation computes the loss only (HF Trainer)

    # -- training ------------------------------------------------------------------------------
    def _lm(self, batch):
        """The model's forward, through peft's wrapper where a peft method needs it (AdaLoRA's regulariser)."""
        forward = peft_tuner(self.model) or self.model
        with adapter_context(self.model, attention_mask=batch["attention_mask"]):
            return forward(**{k: batch[k] for k in ("input_ids", "attention_mask", "labels")})

    def training_step(self, batch, batch_idx):
        loss = self._lm(batch).loss
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=batch["input_ids"].shape[0])
        return loss

    # -- evaluation ----------------------------------------------------------------------------
    def score(self, records: list[dict], stage: str) -> dict[str, float]:
        return self.score_fn(records, **self.scorer_options)

    def _eval_step(self, batch, stage: str):
        n = batch["input_ids"].shape[0]
        loss = self._lm(batch).loss
        self.log(f"{stage}/loss", loss, on_epoch=True, batch_size=n, sync_dist=True)
        if stage == "val" and not self.validation_generates:
            return
        generated = self.model.generate(
            input_ids=batch["prompt_ids"], attention_mask=batch["prompt_mask"], max_new_tokens=self.max_new_tokens,
            num_beams=self.num_beams, do_sample=False, pad_token_id=self.tokenizer.pad_token_id, eos_token_id=self.tokenizer.eos_token_id,
        )
        if self.from_full_text is not None:
            full = self.tokenizer.batch_decode(generated, skip_special_tokens=True)
            texts = [self.from_full_text(t) for t in full]
        else:
            texts = self.tokenizer.batch_decode(generated[:, batch["prompt_ids"].shape[1]:], skip_special_tokens=True)
        for i, text in enumerate(texts):
            self._records.append({"idx": int(batch["idx"][i]), "prediction": text.strip(),
                                      **{k: batch[k][i] for k in RECORD_KEYS}})


def adapted_lm(cfg, run_dir: Path):
    """(data module, tokenizer, the adapted LM, injection report) of an instruction-tuning config: the data prepared,
    the tokenizer read or built from its training file, the backbone built and the method injected."""
    from omegaconf import OmegaConf

    from rankmix.adapters import inject
    from rankmix.backbones import build_backbone, load_tokenizer
    from rankmix.data.loading import prepared_datamodule

    dm = prepared_datamodule(cfg)
    tokenizer = load_tokenizer(cfg.backbone.tokenizer, [dm.files()["train"]], run_dir / "tokenizer",
                               dm.template_text(), model_name=cfg.backbone.get("name_or_path"))
    model = build_backbone(cfg.backbone, tokenizer)
    report = inject(model, OmegaConf.to_container(cfg.method, resolve=True))
    dm.set_tokenizer(tokenizer)
    return dm, tokenizer, model, report


@builds()
def build_causal_lm(cfg, run_dir: Path):
    """(LightningModule, data module, injection report, the adapted LM) for an instruction-tuning config."""
    from omegaconf import OmegaConf

    dm, tokenizer, model, report = adapted_lm(cfg, run_dir)
    module = CausalLMModule(model, tokenizer, OmegaConf.to_container(cfg.optimizer, resolve=True),
                            max_new_tokens=cfg.task.datamodule.max_new_tokens, num_beams=cfg.task.num_beams,
                            validation_generates=(cfg.task.select_best or {}).get("generate", True),
                            scorer=cfg.task.scorer,
                            scorer_options=OmegaConf.to_container(cfg.task.scorer_options, resolve=True),
                            predictions_path=str(run_dir / "predictions.jsonl"))
    return module, dm, report, model
