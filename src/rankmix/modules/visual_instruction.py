"""Visual instruction tuning of a LLaVA-1.5 model with one adapter method on the language model and another on the
vision tower (MoSLoRA §4.2, Tab. 5; the official recipe is XTuner's LLaVA fine-tuning stage).

The model is ``rankmix.llava``'s (CLIP ViT, pretrained projector, LLM). ``method`` is injected into the language
model and ``vision_method`` into the vision tower, each by its own ``target_modules``; the projector trains whole
(XTuner freezes only the LLM and the vision encoder); every base weight stays frozen. The LLM's method sees the LM
head under the LLM's own name (``llm_head_name``: InternLM2's ``output``, else ``lm_head``), as XTuner's
``find_all_linear_names`` does, which adapts every linear layer but one named ``lm_head`` or ``output_layer``: the
InternLM2 rows' targets include ``output``, the LLaMA-3 rows' defaults leave ``lm_head`` out. The loss is the
token cross-entropy of the answers (``rankmix.data.llava_instruct``). Validation and test compute it on a fixed
sample of the training records; at the end of the test epoch the adapted model answers the benchmarks of
``task.benchmarks`` through lmms-eval (``rankmix.benchmarks.multimodal``), greedily, through the training chat
template with the image first. Metrics: ``test/<benchmark>`` in percent and ``test/average`` over
``task.average`` (missing when one of them is). Each benchmark's per-item scores (``rankmix.benchmarks.multimodal``)
give its standard error; ``test/average``'s are the mean of its benchmarks' item by item (``uncertainty.combine``),
and a cell whose standard error cannot be computed says why in the run's JSON (``evaluation.no_se``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from rankmix import uncertainty
from rankmix.adapters import adapter_context
from rankmix.data.llava_instruct import encode_text, pixel_values_of, prompt_text, template_markers
from rankmix.data.loading import pad_left
from rankmix.errors import ConfigError
from rankmix.modules.base import AdapterModule
from rankmix.modules.builder import builds


class VisualInstructionModule(AdapterModule):
    def __init__(self, model, tokenizer, processor, template: Mapping, optimizer: Mapping, benchmarks: Mapping,
                 out_dir: str, average: Sequence[str] = (), eval_batch_size: int = 8,
                 max_new_tokens: int | None = None, judge: Mapping | None = None, pad_image_to_square: bool = True):
        super().__init__(model, optimizer)
        self.tokenizer, self.processor, self.template = tokenizer, processor, dict(template)
        self.benchmarks = {k: dict(v) for k, v in benchmarks.items()}
        self.out_dir, self.average = Path(out_dir), list(average)
        self.eval_batch_size, self.max_new_tokens, self.judge = eval_batch_size, max_new_tokens, dict(judge or {})
        self.pad_image_to_square = pad_image_to_square
        self.stop_ids = [tokenizer.convert_tokens_to_ids(w) for w in self.template["stop_words"]]

    def _loss(self, batch) -> torch.Tensor:
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "labels", "pixel_values") if k in batch}
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.model.model.vision_tower.dtype)
        with adapter_context(self.model, attention_mask=batch["attention_mask"]):
            return self.model(**inputs).loss

    def training_step(self, batch, batch_idx):
        loss = self._loss(batch)
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=batch["input_ids"].shape[0])
        return loss

    def _eval_step(self, batch, stage: str):
        self.log(f"{stage}/loss", self._loss(batch), on_epoch=True, batch_size=batch["input_ids"].shape[0],
                 sync_dist=True)

    # -- the benchmarks ------------------------------------------------------------------------
    def score(self, records: list[dict], stage: str) -> dict[str, float]:
        if stage != "test" or self.global_rank != 0 or not self.benchmarks:
            return {}
        if self.trainer.world_size > 1:  # lmms-eval's evaluator waits at a barrier the other ranks never reach
            why = (f"lmms-eval runs in one process and this test ran in {self.trainer.world_size}: test the "
                   "checkpoint on one device (trainer=gpu)")
            self.evaluation_notes.setdefault("missing", {}).update(dict.fromkeys([*self.benchmarks, "average"], why))
            return {}
        from rankmix.benchmarks import multimodal

        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                metrics, missing, notes = multimodal.evaluate(self.answer, self.benchmarks, self.out_dir / "benchmarks",
                                                              self.eval_batch_size, self.max_new_tokens, self.judge)
        finally:
            self.model.train(was_training)
        if notes.get("no_se"):
            self.evaluation_notes["no_se"] = notes.pop("no_se")
        if notes:
            self.evaluation_notes["benchmarks"] = notes
        if self.average:
            absent = [m for m in self.average if m not in metrics]
            if absent:
                missing["average"] = f"needs {', '.join(absent)}"
            else:
                metrics["average"] = sum(metrics[m] for m in self.average) / len(self.average)
                uncertainty.combine("average", dict.fromkeys(self.average, 1.0 / len(self.average)))
                if self.evaluation_notes.get("no_se", {}).keys() & set(self.average):
                    self.evaluation_notes["no_se"]["average"] = "needs the per-item scores of every benchmark in it"
        if missing:
            self.evaluation_notes.setdefault("missing", {}).update(missing)
        return metrics

    def answer(self, questions: Sequence[str], images: Sequence, max_new_tokens: int) -> list[str]:
        """Greedy answers to ``questions`` (one image or None each): the training template, image first."""
        tok, image_id = self.tokenizer, self.model.config.image_token_id
        n_image = self.model.config.image_seq_length
        ids = []
        for q, image in zip(questions, images, strict=True):
            one = [tok.bos_token_id, *encode_text(tok, prompt_text(q, self.template, image is not None), image_id)]
            ids.append([t for i in one for t in ([i] * n_image if i == image_id else [i])])
        batch, mask = pad_left(ids, tok.pad_token_id)
        width = batch.shape[1]
        device = next(self.model.parameters()).device
        dtype = self.model.model.vision_tower.dtype   # the frozen parts' dtype: the fp32 projector computes in it
        shown = [pixel_values_of(im, self.processor, self.pad_image_to_square) for im in images if im is not None]
        extra = {"pixel_values": torch.stack(shown).to(device, dtype)} if shown else {}
        with self.timed_inference(), torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            out = self.model.generate(input_ids=batch.to(device), attention_mask=mask.to(device), **extra,
                                      max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id,
                                      eos_token_id=self.stop_ids, suppress_tokens=[image_id])
        return [t.strip() for t in tok.batch_decode(out[:, width:], skip_special_tokens=True)]


def llm_head_name(decoder) -> str:
    """The LM head's name in the LLM's own code: InternLM2's ``output`` (``rankmix.internlm2.HEAD_NAME``), else
    transformers' ``lm_head``."""
    from rankmix import internlm2

    return internlm2.HEAD_NAME if decoder.config.model_type == internlm2.MODEL_TYPE else "lm_head"


def inject_llm(model, method: Mapping):
    """``method`` into a LLaVA model's LLM: its decoder's layers by their names there, and its head (LLaVA's
    ``lm_head``) as ``llm_head_name``, so the head is adapted when the targets name it (InternLM2's ``output``)."""
    from rankmix.adapters import inject

    decoder, name = model.model.language_model, llm_head_name(model.model.language_model)
    if name in decoder._modules:
        raise ConfigError("backbone.llm", decoder.config.model_type, f"its decoder has a module {name!r} already")
    decoder.add_module(name, model.lm_head)
    try:
        report = inject(decoder, method)
    finally:
        model.lm_head = decoder._modules.pop(name)  # the head, wrapped or not, back in LLaVA's place
    return report


def adapted_llava(cfg, run_dir: Path):
    """(data module, tokenizer, image processor, the adapted LLaVA model, injection report) of a config."""
    from omegaconf import OmegaConf

    from rankmix.adapters import inject
    from rankmix.adapters.inject import InjectionReport
    from rankmix.backbones import load_tokenizer, word_level_tokenizer
    from rankmix.data.loading import prepared_datamodule
    from rankmix.llava import build_llava, image_processor

    if cfg.backbone.get("kind") != "llava":
        raise ConfigError("backbone", cfg.backbone.get("name"), "the visual instruction task needs a LLaVA backbone "
                          "(backbone=llava_llama3_8b or backbone=llava_internlm2_7b)")
    if cfg.get("vision_method") is None:
        raise ConfigError("vision_method", None, "a LLaVA task adapts the vision tower too: choose its method "
                          "(+method@vision_method=lora, or method none to keep it frozen)")
    backbone = OmegaConf.to_container(cfg.backbone, resolve=True)
    dm = prepared_datamodule(cfg)
    spec = backbone["tokenizer"]
    if spec.get("source") == "word_level":
        tokenizer = word_level_tokenizer(dm.texts(), run_dir / "tokenizer")
        tokenizer.add_special_tokens({"additional_special_tokens": template_markers(dm.template)})
    else:
        tokenizer = load_tokenizer(spec, [], run_dir / "tokenizer", model_name=backbone["llm"].get("name_or_path"))
    model = build_llava(backbone, tokenizer)
    processor = image_processor(backbone["vision"])
    model.requires_grad_(False)
    head = llm_head_name(model.model.language_model)
    reports = {"llm": inject_llm(model, OmegaConf.to_container(cfg.method, resolve=True)),
               "vision": inject(model.model.vision_tower, OmegaConf.to_container(cfg.vision_method, resolve=True))}
    model.model.multi_modal_projector.requires_grad_(True)
    report = InjectionReport(method=f"{reports['llm'].method} (LLM) + {reports['vision'].method} (vision)",
                             wrapped=[("lm_head" if n == head else f"model.language_model.{n}")
                                      for n in reports["llm"].wrapped]
                             + [f"model.vision_tower.{n}" for n in reports["vision"].wrapped])
    report.trainable_parameters = sum(p.numel() for p in model.parameters() if p.requires_grad)
    report.total_parameters = sum(p.numel() for p in model.parameters())
    dm.set_model_inputs(tokenizer, processor, model.config.image_token_id, model.config.image_seq_length)
    return dm, tokenizer, processor, model, report


@builds(language="llm.name_or_path", image="patches")
def build_visual_instruction(cfg, run_dir: Path):
    """(LightningModule, data module, injection report, the adapted model) for a visual-instruction config."""
    from omegaconf import OmegaConf

    from rankmix.modules.benchmark_lm import resolve_suite

    dm, tokenizer, processor, model, report = adapted_llava(cfg, run_dir)
    task = OmegaConf.to_container(cfg.task, resolve=True)
    benchmarks = resolve_suite(task.get("benchmarks") or {}, dm.suite) if dm.suite else task.get("benchmarks") or {}
    module = VisualInstructionModule(model, tokenizer, processor, dm.template,
                                     OmegaConf.to_container(cfg.optimizer, resolve=True), benchmarks=benchmarks,
                                     out_dir=str(run_dir), average=task.get("average") or (),
                                     eval_batch_size=task["datamodule"]["eval_batch_size"],
                                     max_new_tokens=cfg.task.max_new_tokens, judge=task.get("judge"),
                                     pad_image_to_square=cfg.task.datamodule.pad_image_to_square)
    return module, dm, report, model
