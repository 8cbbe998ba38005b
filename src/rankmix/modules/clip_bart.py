"""CLIP-BART for the multitask benchmark (routing functions §5 on VL-Adapter's VL-BART; Tab. 7, 8, C15).

The encoder reads the prompt and question tokens followed by the visual tokens: CLIP grid features (36 per
image, 72 for an NLVR2 pair) mapped by the trainable visual embedding, Linear(C → d) + LayerNorm plus an
image-order embedding (VL-T5's ``VisualEmbedding`` with all-zero boxes, whose box term reduces to a bias). The
decoder generates the answer, "true"/"false" or the caption.

x_R of the routing layers: the encoder's layers read the visual tokens (pooled by the routing function's mean
after W_down); the decoder's layers read ``x_r_decoder``: ``encoder_mean`` (the masked mean of the last encoder
hidden states, the official ``pool_bart``) or ``visual`` (the mean visual token). The encoder's layers also get
the token layout: ``attention_mask`` (text padding) and ``modality_masks`` {text: the real text tokens, vision:
the visual tokens}, which SMoLA's blocks route by (``smola`` variant ``o``). The encoder runs once, under
its context, and the decoder (training, generation, NLVR2's first step) under its own. ``task_ids`` (the index of
the batch's task in ``tasks``) reach per-task adapters (``multi_adapter``).

Evaluation (VL-Adapter): VQA and GQA greedy, at most 10 new tokens, scored by the official VQA accuracy and GQA
exact match; NLVR2 by the first decoder step's logit of "true" against "false"; captions by beam search
(``caption_beams``, at most ``caption_max_tokens`` new tokens) and CIDEr (all five COCO metrics at test).
``average`` is the mean accuracy of VQA, GQA and NLVR2 (Tab. 7's "Avg.").
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from rankmix.adapters import adapter_context
from rankmix.checked import choice
from rankmix.errors import ConfigError
from rankmix.metrics.captioning import FIVE, score_captions
from rankmix.metrics.vl_tasks import gqa_accuracy, nlvr_accuracy, nlvr_predictions
from rankmix.metrics.vqa import score_vqa
from rankmix.modules.base import AdapterModule
from rankmix.modules.builder import builds
from rankmix.uncertainty import combine, prefixed

X_R_DECODER = ("encoder_mean", "visual")
ACCURACY_TASKS = ("vqa", "gqa", "nlvr")


class VisualEmbedding(nn.Module):
    def __init__(self, feat_dim: int, d_model: int, n_images: int = 2):
        super().__init__()
        self.feat = nn.Linear(feat_dim, d_model)
        self.norm = nn.LayerNorm(d_model)
        self.order = nn.Embedding(n_images, d_model)

    def forward(self, feats: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
        return self.norm(self.feat(feats)) + self.order(order)


class CLIPBart(nn.Module):
    def __init__(self, bart: nn.Module, feat_dim: int, tasks: tuple[str, ...], x_r_decoder: str = "encoder_mean"):
        super().__init__()
        self.bart = bart
        self.visual_embedding = VisualEmbedding(feat_dim, bart.config.d_model)
        self.tasks = tuple(tasks)
        self.x_r_decoder = choice("task.x_r_decoder", x_r_decoder, X_R_DECODER)

    def _task_ids(self, batch) -> torch.Tensor:
        return torch.full((batch["input_ids"].shape[0],), self.tasks.index(batch["task"]), dtype=torch.long,
                          device=batch["input_ids"].device)

    def encode(self, batch):
        """(encoder outputs, the joint attention mask, the decoder's x_R)."""
        encoder = self.bart.get_encoder()
        text = encoder.embed_tokens(batch["input_ids"])
        vis = self.visual_embedding(batch["visual"], batch["visual_order"]).to(text.dtype)
        text_mask = batch["attention_mask"]
        mask = torch.cat([text_mask, text_mask.new_ones(vis.shape[:2])], dim=1)
        modality = {"text": torch.cat([text_mask, text_mask.new_zeros(vis.shape[:2])], dim=1).bool(),
                    "vision": torch.cat([torch.zeros_like(text_mask), text_mask.new_ones(vis.shape[:2])], dim=1).bool()}
        with adapter_context(encoder, x_r=vis, task_ids=self._task_ids(batch), attention_mask=mask,
                             modality_masks=modality):
            enc = encoder(inputs_embeds=torch.cat([text, vis], dim=1), attention_mask=mask)
        if self.x_r_decoder == "visual":
            x_r = vis.mean(1)
        else:
            m = mask.unsqueeze(-1).to(enc.last_hidden_state.dtype)
            x_r = (enc.last_hidden_state * m).sum(1) / m.sum(1).clamp_min(1.0)
        return enc, mask, x_r

    def loss(self, batch) -> torch.Tensor:
        enc, mask, x_r = self.encode(batch)
        with adapter_context(self.bart.get_decoder(), x_r=x_r, task_ids=self._task_ids(batch)):
            return self.bart(encoder_outputs=enc, attention_mask=mask, labels=batch["labels"]).loss

    @torch.no_grad()
    def generate(self, batch, max_new_tokens: int, num_beams: int) -> torch.Tensor:
        enc, mask, x_r = self.encode(batch)
        ids = self._task_ids(batch)
        with adapter_context(self.bart.get_decoder(), x_r=x_r.repeat_interleave(num_beams, 0),
                             task_ids=ids.repeat_interleave(num_beams, 0)):
            return self.bart.generate(encoder_outputs=enc, attention_mask=mask, max_new_tokens=max_new_tokens,
                                      num_beams=num_beams, do_sample=False)

    @torch.no_grad()
    def first_step_logits(self, batch, prefix: list[int]) -> torch.Tensor:
        """Logits (B, vocab) of the first answer token: the decoder fed ``prefix`` (its start token, and BART's
        <s> where targets begin with it)."""
        enc, mask, x_r = self.encode(batch)
        start = torch.tensor([prefix] * mask.shape[0], device=mask.device)
        with adapter_context(self.bart.get_decoder(), x_r=x_r, task_ids=self._task_ids(batch)):
            return self.bart(encoder_outputs=enc, attention_mask=mask, decoder_input_ids=start).logits[:, -1]


class VLMultitaskModule(AdapterModule):
    def __init__(self, model: CLIPBart, tokenizer, optimizer: Mapping, answer_max_tokens: int = 10,
                 caption_beams: int = 5, caption_max_tokens: int = 20, predictions_path: str | None = None):
        super().__init__(model, optimizer, predictions_path)
        self.tokenizer = tokenizer
        self.answer_max_tokens, self.caption_beams, self.caption_max_tokens = answer_max_tokens, caption_beams, caption_max_tokens
        (self.true_id, self.false_id), self.answer_prefix = _answer_tokens(tokenizer, model.bart.config)

    def training_step(self, batch, batch_idx):
        loss = self.model.loss(batch)
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=batch["input_ids"].shape[0])
        return loss

    def param_groups(self) -> list:
        decay, no_decay = [], []  # VL-Adapter: no weight decay on biases and LayerNorm weights
        for n, p in self.trainer.model.named_parameters():
            if p.requires_grad:
                (no_decay if n.endswith("bias") or "norm" in n.lower() else decay).append(p)
        return [{"params": decay, "weight_decay": self.optimizer_settings.weight_decay},
                {"params": no_decay, "weight_decay": 0.0}]

    def _eval_step(self, batch, stage):
        task = batch["task"]
        with self.timed_inference():
            if task == "nlvr":
                logits = self.model.first_step_logits(batch, self.answer_prefix)
                outputs = nlvr_predictions(logits, self.true_id, self.false_id)
            else:
                caption = task == "caption"
                ids = self.model.generate(batch, self.caption_max_tokens if caption else self.answer_max_tokens,
                                          self.caption_beams if caption else 1)
                outputs = [t.strip() for t in self.tokenizer.batch_decode(ids, skip_special_tokens=True)]
        for i, out in enumerate(outputs):
            rec = {"idx": batch["idx"][i], "task": task, "prediction": out}
            for k in ("label", "answers", "answer_type", "question_type", "question_id", "references", "image_id"):
                if k in batch:
                    rec[k] = batch[k][i]
            self._records.append(rec)

    def score(self, records: list[dict], stage: str) -> dict[str, float]:
        by_task: dict[str, list[dict]] = {}
        for r in records:
            by_task.setdefault(r["task"], []).append(r)
        out = {}
        if "vqa" in by_task:
            with prefixed("vqa/"):  # per-item scores under the names logged here (rankmix.uncertainty)
                out["vqa/accuracy"] = score_vqa(by_task["vqa"])["accuracy"]
        if "gqa" in by_task:
            out["gqa/accuracy"] = gqa_accuracy(by_task["gqa"])
        if "nlvr" in by_task:
            out["nlvr/accuracy"] = nlvr_accuracy(by_task["nlvr"])
        if "caption" in by_task:
            test = stage == "test"
            with prefixed("caption/"):
                scores, notes = score_captions(by_task["caption"], FIVE if test else ("CIDEr",), java_tokenizer=test)
            out.update({f"caption/{k}": v for k, v in scores.items()})
            if test:
                self.evaluation_notes = {**notes, "missing": {f"caption/{k}": v for k, v in notes["missing"].items()}}
        accs = [out[f"{t}/accuracy"] for t in ACCURACY_TASKS if f"{t}/accuracy" in out]
        if accs:
            out["average"] = sum(accs) / len(accs)
            combine("average", {f"{t}/accuracy": 1.0 / len(accs) for t in ACCURACY_TASKS if f"{t}/accuracy" in out})
        return out


def _answer_tokens(tokenizer, config) -> tuple[tuple[int, int], list[int]]:
    """(ids of the first tokens of "true" and "false", the decoder prefix before them): the decoder start token,
    plus <s> when the tokenizer starts targets with it (BART's)."""
    ids = [tokenizer(w, add_special_tokens=True)["input_ids"] for w in ("true", "false")]
    bos = tokenizer.bos_token_id is not None and ids[0][0] == tokenizer.bos_token_id
    first = [x[1] if bos else x[0] for x in ids]
    return (first[0], first[1]), [config.decoder_start_token_id] + ([tokenizer.bos_token_id] if bos else [])


UNFREEZE = ("bias", "layer_norm")
ADAPTER_METHODS = ("adapter", "parallel_adapter", "multi_adapter")


def unfreeze_parts(policy, method) -> list[str]:
    """``backbone.unfreeze`` as a list of parts: a list of ``UNFREEZE`` names, or ``vl_adapter``: VL-Adapter's
    trainable set beside the method's own weights (its ``trainer_base.py``): every bias with LoRA-style methods,
    every LayerNorm (weight and bias) with adapters (``--unfreeze_layer_norms``), nothing with ``none``."""
    if policy == "vl_adapter":
        name = method.get("name")
        if name == "none":
            return []
        adapter = name in ADAPTER_METHODS or (name == "routing" and method.get("base", "lora") != "lora")
        return ["layer_norm"] if adapter else ["bias"]
    parts = [policy] if isinstance(policy, str) else list(policy)
    for part in parts:
        if part not in UNFREEZE:
            raise ConfigError("backbone.unfreeze", policy, f"use vl_adapter or a list of {', '.join(UNFREEZE)}")
    return parts


def unfreeze(bart: nn.Module, policy, method) -> int:
    """Make the backbone parts of ``policy`` trainable (``unfreeze_parts``); returns how many weights that adds."""
    parts = unfreeze_parts(policy, method)
    chosen = {}
    for module_name, module in bart.named_modules():
        for name, p in module.named_parameters(recurse=False):
            full = f"{module_name}.{name}" if module_name else name
            if ("bias" in parts and name == "bias") or ("layer_norm" in parts and isinstance(module, nn.LayerNorm)):
                chosen[full] = p
    added = sum(p.numel() for p in chosen.values() if not p.requires_grad)
    for p in chosen.values():
        p.requires_grad_(True)
    return added


@builds(language="language.name_or_path", auto_class="AutoModelForSeq2SeqLM", decoder=False)
def build_vl_multitask(cfg, run_dir: Path):
    """(LightningModule, data module, injection report, the adapted BART) for a CLIP-BART multitask config."""
    from omegaconf import OmegaConf

    from rankmix.adapters import inject
    from rankmix.backbones import build_seq2seq, text_tokenizer
    from rankmix.data.loading import prepared_datamodule
    from rankmix.modules.warm_start import caption_warm_start, multitask_warm_start, warm_start

    dm = prepared_datamodule(cfg)
    spec, texts = cfg.backbone.language, dm.texts()
    tokenizer = text_tokenizer(spec.tokenizer, texts, run_dir / "tokenizer")
    dm.set_tokenizer(tokenizer)
    bart = build_seq2seq(spec, tokenizer)
    if spec.get("warm_start"):
        bart = warm_start(bart, tokenizer, texts, spec.warm_start, Path(cfg.paths.cache_dir))
    model = CLIPBart(bart, feat_dim=cfg.backbone.feature_dim, tasks=tuple(cfg.task.datamodule.tasks),
                     x_r_decoder=cfg.task.x_r_decoder)
    if cfg.backbone.get("caption_warm_start"):
        caption_warm_start(model, dm, cfg.backbone.caption_warm_start, Path(cfg.paths.cache_dir))
    if cfg.backbone.get("multitask_warm_start"):
        multitask_warm_start(model, dm, cfg.backbone.multitask_warm_start, Path(cfg.paths.cache_dir))
    report = inject(bart, OmegaConf.to_container(cfg.method, resolve=True))
    report.trainable_parameters += unfreeze(bart, cfg.backbone.get("unfreeze") or [], cfg.method)
    report.trainable_parameters += sum(p.numel() for p in model.visual_embedding.parameters())
    report.total_parameters += sum(p.numel() for p in model.visual_embedding.parameters())
    module = VLMultitaskModule(model, tokenizer, OmegaConf.to_container(cfg.optimizer, resolve=True),
                               answer_max_tokens=cfg.task.answer_max_tokens, caption_beams=cfg.task.caption_beams,
                               caption_max_tokens=cfg.task.caption_max_tokens,
                               predictions_path=str(run_dir / "predictions.jsonl"))
    return module, dm, report, bart
