"""Image captioning with a frozen ViT and an adapted GPT-2 (routing functions §4, Tab. 4–6, B11, B13, B14).

The ViT's pooled [CLS] is the one-token prefix of GPT-2's input (no projection: both widths must agree) and x_R
of the routing layers (``rankmix.modules.vision_prefix``). Training minimises the cross-entropy of every caption
token given the prefix and the tokens before it; the prefix predicts the first word, the last word predicts
end-of-text. Evaluation generates from the prefix alone (greedy, or beam search with ``num_beams`` > 1; x_R is
repeated for each beam) up to ``max_new_tokens`` and scores with the COCO caption metrics
(``rankmix.metrics.captioning``): BLEU-4, ROUGE-L and CIDEr every validation epoch (Python tokenisation, no
Java start-up), all five and their mean on the PTB tokenizer's output at test.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from rankmix.adapters import adapter_context
from rankmix.checked import choice
from rankmix.metrics.captioning import CHEAP, FIVE, score_captions
from rankmix.modules.base import AdapterModule
from rankmix.modules.builder import builds
from rankmix.modules.vision_prefix import X_R, check_widths, visual_features


class VisionPrefixCaptioner(nn.Module):
    def __init__(self, vision: nn.Module, lm: nn.Module, x_r: str = "image"):
        super().__init__()
        check_widths(vision, lm)
        self.vision = vision.requires_grad_(False)
        self.lm = lm
        self.x_r = choice("task.x_r", x_r, X_R)

    def forward(self, pixel_values, input_ids, attention_mask) -> torch.Tensor:
        """Logits (B, L, V): position i predicts ``input_ids[:, i]`` (position 0 is the image prefix)."""
        cls, x_r = visual_features(self.vision, pixel_values, self.x_r)
        words = self.lm.get_input_embeddings()(input_ids[:, :-1])
        embeds = torch.cat([cls[:, None].to(words.dtype), words], dim=1)
        mask = torch.cat([attention_mask.new_ones(attention_mask.shape[0], 1), attention_mask[:, :-1]], dim=1)
        with adapter_context(self.lm, x_r=x_r):
            return self.lm(inputs_embeds=embeds, attention_mask=mask).logits

    @torch.no_grad()
    def generate(self, pixel_values, max_new_tokens: int, num_beams: int, eos_token_id: int,
                 pad_token_id: int) -> torch.Tensor:
        """Generated token ids (B, ≤ max_new_tokens), the prefix not included."""
        cls, x_r = visual_features(self.vision, pixel_values, self.x_r)
        embeds = cls[:, None].to(self.lm.get_input_embeddings().weight.dtype)
        mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device)
        with adapter_context(self.lm, x_r=x_r.repeat_interleave(num_beams, dim=0)):
            return self.lm.generate(inputs_embeds=embeds, attention_mask=mask, max_new_tokens=max_new_tokens,
                                    num_beams=num_beams, do_sample=False, eos_token_id=eos_token_id,
                                    pad_token_id=pad_token_id)


class CaptioningModule(AdapterModule):
    def __init__(self, model: VisionPrefixCaptioner, tokenizer, optimizer: Mapping, max_new_tokens: int = 50,
                 num_beams: int = 1, predictions_path: str | None = None):
        super().__init__(model, optimizer, predictions_path)
        self.tokenizer = tokenizer
        self.max_new_tokens, self.num_beams = max_new_tokens, num_beams

    def _loss(self, batch) -> torch.Tensor:
        logits = self.model(batch["pixel_values"], batch["input_ids"], batch["attention_mask"])
        target = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        return nn.functional.cross_entropy(logits.flatten(0, 1), target.flatten(), ignore_index=-100)

    def training_step(self, batch, batch_idx):
        loss = self._loss(batch)
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=batch["input_ids"].shape[0])
        return loss

    def score(self, records: list[dict], stage: str) -> dict[str, float]:
        test = stage == "test"
        scores, notes = score_captions(records, FIVE if test else CHEAP, java_tokenizer=test)
        if test:
            self.evaluation_notes = notes
        return scores

    def _eval_step(self, batch, stage):
        with self.timed_inference():
            ids = self.model.generate(batch["pixel_values"], self.max_new_tokens, self.num_beams,
                                      self.tokenizer.eos_token_id, self.tokenizer.pad_token_id)
        for i, text in enumerate(self.tokenizer.batch_decode(ids, skip_special_tokens=True)):
            self._records.append({"idx": int(batch["idx"][i]), "image_id": batch["image_id"][i],
                                  "prediction": text.strip(), "references": batch["references"][i]})


@builds(language="language.name_or_path", image="prefix", decoder=False)
def build_captioning(cfg, run_dir: Path, cached_only: bool = False):
    """(LightningModule, data module, injection report, the adapted language model) for a captioning config;
    ``cached_only``: the warm-started language model must come from the cache (rebuilding a finished run)."""
    from omegaconf import OmegaConf

    from rankmix.adapters import inject
    from rankmix.backbones import build_backbone, build_encoder, text_tokenizer
    from rankmix.data.loading import prepared_datamodule
    from rankmix.modules.warm_start import warm_start

    dm = prepared_datamodule(cfg)
    spec, texts = cfg.backbone.language, dm.caption_texts()
    tokenizer = text_tokenizer(spec.tokenizer, texts, run_dir / "tokenizer")
    dm.set_tokenizer(tokenizer)
    vision = build_encoder("backbone.vision", cfg.backbone.vision)
    lm = build_backbone(spec, tokenizer)
    if spec.get("warm_start"):
        lm = warm_start(lm, tokenizer, texts, spec.warm_start, Path(cfg.paths.cache_dir), cached_only=cached_only)
    report = inject(lm, OmegaConf.to_container(cfg.method, resolve=True))
    model = VisionPrefixCaptioner(vision, lm, x_r=cfg.task.x_r)
    module = CaptioningModule(model, tokenizer, OmegaConf.to_container(cfg.optimizer, resolve=True),
                              max_new_tokens=cfg.task.max_new_tokens, num_beams=cfg.task.num_beams,
                              predictions_path=str(run_dir / "predictions.jsonl"))
    return module, dm, report, lm
