"""A row's cost at the true size, from the real configs: parameters, tokens per epoch, memory per GPU.

- Parameters: the real language model built on the ``meta`` device (no memory) from its real config
  (``standins.real_config``) with the row's method injected by ``rankmix.adapters.inject``: total, trainable
  and activated per token, exact for the backbone and the adapters. Frozen vision encoders count in the total.
  Task heads and visual projections (the VQA answer MLP, CLIP-BART's visual embedding) are left out.
- Tokens per epoch: the real training set's records (``TRAIN_RECORDS``) × the row's cutoff (an upper bound).
- Memory per GPU (upper-bound estimate): frozen weights in the backbone's dtype, 16 bytes per trainable
  parameter (fp32 weight, gradient, two Adam moments), activations of every layer for the backward pass at the
  full cutoff and the row's micro batch without recomputation, s·b·h·(34 + 5·a·s/h) bytes per layer in 16-bit
  precision and twice that in fp32 (Korthikanti et al., 2022, Eq. 1), and the logits in fp32 with their gradient.
"""

from __future__ import annotations

import torch

# Training records per epoch of the real files (the dataset notes in docs/protocol.md).
TRAIN_RECORDS = {
    "commonsense": 170_420,       # commonsense_170k.json (before the 120 held out)
    "vqa": 605_102,               # VL-T5 karpathy_train.json questions
    "coco_caption": 113_287 * 5,  # Karpathy train + restval images, 5 captions each (≈)
    # VQA + GQA train/valid (≈ 943k + 132k balanced) + NLVR2 train 86,373 + COCO captions (≈)
    "vl_multitask": 605_102 + 1_075_062 + 86_373 + 113_287 * 5,
}
FLAN_TASKS = 48   # SMoRA's combined_test.json


def _auto_class(kind: str):
    from transformers import AutoModel, AutoModelForCausalLM, AutoModelForSeq2SeqLM

    return {"vqa": AutoModel, "vl_multitask": AutoModelForSeq2SeqLM}.get(kind, AutoModelForCausalLM)


def _language_key(kind: str) -> str:
    return {"vqa": "text.name_or_path", "caption": "language.name_or_path",
            "vl_multitask": "language.name_or_path"}.get(kind, "name_or_path")


def _records(config: dict) -> int | None:
    task = config["task"]
    source = (task.get("datamodule") or {}).get("source") or {}
    if task["name"] == "flan":
        return int(source.get("n_train", 0)) * FLAN_TASKS
    if task["name"] == "commonsense":
        return TRAIN_RECORDS["commonsense"] - int(source.get("n_validation", 0))
    return TRAIN_RECORDS.get(task["name"])


def _seq_len(config: dict) -> int:
    dm = config["task"].get("datamodule") or {}
    if config["task"]["name"] == "vl_multitask":  # question tokens + the visual tokens of an NLVR2 pair
        return int(dm.get("max_text_length", 20)) + 2 * int(dm.get("n_boxes", 36))
    extra = 1 if config["task"].get("kind") in ("vqa", "caption") else 0   # the image's [CLS] prefix
    return int(dm.get("max_length", 0)) + extra


def _dims(cfg) -> tuple[int, int, int, int]:
    """(layers, hidden, heads, vocab) of a transformers config of any of the paper architectures."""
    layers = getattr(cfg, "num_hidden_layers", None) or (cfg.encoder_layers + cfg.decoder_layers)
    hidden = getattr(cfg, "hidden_size", None) or getattr(cfg, "n_embd", None) or cfg.d_model
    heads = getattr(cfg, "num_attention_heads", None) or getattr(cfg, "n_head", None) or cfg.encoder_attention_heads
    return int(layers), int(hidden), int(heads), int(cfg.vocab_size)


def project(config: dict, parts: dict[str, str]) -> dict:
    """The projection for a row's resolved ``config``; ``parts``: ``{key of name_or_path: hub id}``."""
    from rankmix.adapters import adapter_layers, inject
    from rankmix.rehearsal.standins import real_config

    kind = config["task"].get("kind", "causal_lm")
    hub = parts.get(_language_key(kind))
    if hub is None:
        return {"notes": [f"{config['task']['name']}: no hub backbone to project"]}
    from rankmix.rehearsal.pipelines import PIPELINES

    if hub in PIPELINES:
        return {"notes": [f"{config['task']['name']}: a diffusers pipeline ({hub}), not projected"]}
    real = real_config(hub)
    with torch.device("meta"):
        model = _auto_class(kind).from_config(real)
        report = inject(model, dict(config["method"]))
        layers = list(adapter_layers(model).values())
        frozen_other = sum(sum(p.numel() for p in _auto_class("vqa").from_config(real_config(h)).parameters())
                           for k, h in parts.items() if k != _language_key(kind))
    trainable = report.trainable_parameters
    activated = sum(layer.activated_parameters() for layer in layers) if layers else trainable
    key = _language_key(kind)
    part = config["backbone"] if key == "name_or_path" else config["backbone"][key.split(".")[0]]
    dtype = getattr(torch, part.get("dtype") or "float32")
    weight_bytes = (report.total_parameters - trainable) * torch.finfo(dtype).bits // 8 + frozen_other * 4
    n_layers, hidden, heads, vocab = _dims(real)
    s, b = _seq_len(config), int(config["task"]["datamodule"].get("batch_size") or 1)
    half = str(config["trainer"].get("precision", "32")).startswith(("bf16", "16"))
    activations = n_layers * s * b * hidden * (34 + 5 * heads * s / hidden) * (1 if half else 2)
    logits = b * s * vocab * 4 * 2 if kind != "vqa" else 0
    records = _records(config)
    return {
        "total": report.total_parameters + frozen_other,
        "trainable": trainable,
        "activated": activated,
        "tokens_per_epoch": records * s if records else None,
        "memory_gib": (weight_bytes + 16 * trainable + activations + logits) / 2**30,
        "notes": ["task heads and visual projections are not in the projected parameter counts",
                  "memory: one GPU holding the whole model (DDP); FSDP/DeepSpeed shard the weights and optimizer "
                  "states over the GPUs"],
    }


def fmt_count(n) -> str:
    if n is None:
        return "—"
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(n)


def fmt_gib(x) -> str:
    return "—" if x is None else f"{x:.1f}"
