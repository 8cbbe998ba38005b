"""VQA with a frozen ViT and an adapted text encoder (routing functions §4, Tab. 1–3, B10).

The ViT's pooled [CLS] (``pooler_output``) is x_R: prepended as a one-token prefix to the text encoder's word
embeddings (no projection: both widths must agree) and handed to the adapter layers (routing functions read
it through ``adapter_context(x_r=...)``). A 2-layer MLP over the text's first token ([CLS] / <s>) scores the
answer vocabulary; the loss is binary cross-entropy against the soft scores, times the vocabulary size
(LXMERT / VL-T5's classifier loss). Evaluation takes the arg-max answer and scores it with the official VQA
accuracy. ``x_r`` (``task.x_r``) replaces what the routing layers see for the B10 ablation: ``image`` (the
[CLS]), ``noise`` (standard normal, drawn per call) or ``ones``; the prefix token stays the image's [CLS] (with
noise the paper's accuracy falls to the no-routing level, not below it).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from rankmix.adapters import adapter_context
from rankmix.checked import choice
from rankmix.metrics.vqa import score_vqa
from rankmix.modules.base import AdapterModule
from rankmix.modules.builder import builds
from rankmix.modules.vision_prefix import X_R, check_widths, visual_features


class VisionPrefixClassifier(nn.Module):
    def __init__(self, vision: nn.Module, text: nn.Module, num_answers: int, x_r: str = "image"):
        super().__init__()
        check_widths(vision, text)
        self.vision = vision.requires_grad_(False)
        self.text = text
        self.x_r = choice("task.x_r", x_r, X_R)
        d_t = text.config.hidden_size
        self.classifier = nn.Sequential(nn.Linear(d_t, 2 * d_t), nn.GELU(), nn.LayerNorm(2 * d_t),
                                        nn.Linear(2 * d_t, num_answers))

    def forward(self, pixel_values, input_ids, attention_mask) -> torch.Tensor:
        cls, x_r = visual_features(self.vision, pixel_values, self.x_r)
        words = self.text.get_input_embeddings()(input_ids)
        embeds = torch.cat([cls[:, None].to(words.dtype), words], dim=1)
        mask = torch.cat([attention_mask.new_ones(attention_mask.shape[0], 1), attention_mask], dim=1)
        with adapter_context(self.text, x_r=x_r, attention_mask=mask):
            hidden = self.text(inputs_embeds=embeds, attention_mask=mask).last_hidden_state
        return self.classifier(hidden[:, 1])


class VQAModule(AdapterModule):
    def __init__(self, model: VisionPrefixClassifier, label2ans: list[str], optimizer: Mapping,
                 predictions_path: str | None = None):
        super().__init__(model, optimizer, predictions_path)
        self.label2ans = label2ans

    def _loss(self, batch):
        logits = self.model(batch["pixel_values"], batch["input_ids"], batch["attention_mask"])
        target = batch["target"]
        loss = nn.functional.binary_cross_entropy_with_logits(logits, target) * target.shape[1]
        return logits, loss

    def training_step(self, batch, batch_idx):
        _, loss = self._loss(batch)
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=batch["target"].shape[0])
        return loss

    def score(self, records: list[dict], stage: str) -> dict[str, float]:
        return score_vqa(records)

    def _eval_step(self, batch, stage):
        with self.timed_inference():
            logits, loss = self._loss(batch)
        self.log(f"{stage}/loss", loss, on_epoch=True, batch_size=logits.shape[0], sync_dist=True)
        for i, label in enumerate(logits.argmax(-1).tolist()):
            self._records.append({"idx": int(batch["idx"][i]), "question_id": batch["question_id"][i],
                                  "prediction": self.label2ans[label], "answers": batch["answers"][i],
                                  "answer_type": batch["answer_type"][i], "question_type": batch["question_type"][i]})


@builds(language="text.name_or_path", auto_class="AutoModel", image="prefix", decoder=False)
def build_vqa(cfg, run_dir: Path):
    """(LightningModule, data module, injection report, the adapted text encoder) for a VQA config."""
    from omegaconf import OmegaConf
    from transformers import AutoTokenizer

    from rankmix.adapters import inject
    from rankmix.backbones import build_encoder, not_loadable, resolve_name
    from rankmix.data.loading import prepared_datamodule

    dm = prepared_datamodule(cfg)
    text_spec = cfg.backbone.text
    name = resolve_name("backbone.text.name_or_path", text_spec.get("tokenizer") or text_spec.name_or_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError) as e:
        raise not_loadable("backbone.text.name_or_path", str(name), e) from None
    dm.set_tokenizer(tokenizer)
    vision = build_encoder("backbone.vision", cfg.backbone.vision)
    text = build_encoder("backbone.text", text_spec)
    report = inject(text, OmegaConf.to_container(cfg.method, resolve=True))
    ans2label = json.loads(dm.ans2label_path().read_text())
    label2ans = [a for a, _ in sorted(ans2label.items(), key=lambda kv: kv[1])]
    model = VisionPrefixClassifier(vision, text, len(label2ans), x_r=cfg.task.x_r)
    module = VQAModule(model, label2ans, OmegaConf.to_container(cfg.optimizer, resolve=True),
                       predictions_path=str(run_dir / "predictions.jsonl"))
    return module, dm, report, text
