"""A row's cost at the true size, from the real configs: parameters, tokens per epoch, memory per GPU.

- Parameters: the real model of each part built on the ``meta`` device (no memory) from its real config
  (``standins.real_config``) with the part's method injected by ``rankmix.adapters.inject`` (``method``, and
  ``vision_method`` on a LLaVA vision tower): total, trainable and activated per token, exact for the backbone and
  the adapters. Frozen vision encoders count in the total. Task heads and visual projections (the VQA answer MLP,
  CLIP-BART's visual embedding, LLaVA's projector) are left out.
- Tokens per epoch: the real training set's records (``TRAIN_RECORDS``) × the row's cutoff (an upper bound).
- Memory per GPU (one GPU holding the whole model, as DDP does), the sum of:
  - weights: frozen parameters in the backbone's dtype; a 4-bit (QLoRA) base's decoder-layer linear weights at
    ``NF4_DQ_BITS``;
  - optimizer: 16 bytes per trainable parameter (fp32 weight, gradient and AdamW's two moments);
  - activations, measured (``rankmix.rehearsal.memory``): bytes per token of one layer and of the fixed part of each
    trained part at full width with the row's method, precision and checkpointing, × the row's micro batch ×
    cutoff, × depth; with checkpointing, depth × what a checkpointed layer keeps plus one layer's recompute peak;
  - logits: micro batch × cutoff × vocabulary × 8 bytes (fp32 for the loss, and its gradient).
- ``python -m rankmix.rehearsal --reproject results/rehearse/<device>.md`` (``rankmix.rehearsal.run.reproject``):
  the projection of every row of that report recomputed from the rows' paper configs, the rehearsal's own columns
  kept.
"""

from __future__ import annotations

import sys

import torch

from rankmix.modules.builder import facts_of

# Training records per epoch of the real files (the dataset notes in docs/protocol.md).
TRAIN_RECORDS = {
    "commonsense": 170_420,       # commonsense_170k.json (before the 120 held out)
    "vqa": 605_102,               # VL-T5 karpathy_train.json questions
    "coco_caption": 113_287 * 5,  # Karpathy train + restval images, 5 captions each (≈)
    # VQA + GQA train/valid (≈ 943k + 132k balanced) + NLVR2 train 86,373 + COCO captions (≈)
    "vl_multitask": 605_102 + 1_075_062 + 86_373 + 113_287 * 5,
    "visual_instruction": 665_298,   # llava_v1_5_mix665k.json
}
FLAN_TASKS = 48   # SMoRA's combined_test.json
# NF4 with double quantisation (QLoRA §3): 4 bits a weight, an 8-bit absmax per block of 64, an fp32 constant per
# 256 of those blocks.
NF4_DQ_BITS = 4 + 8 / 64 + 32 / (64 * 256)
OPTIMIZER_BYTES = 16   # fp32 weight, gradient, AdamW's two moments
LOGIT_BYTES = 8        # fp32 logits for the loss and their gradient
CARDS_GIB = (80, 40, 24)


def _records(config: dict) -> int | None:
    task = config["task"]
    source = (task.get("datamodule") or {}).get("source") or {}
    if task["name"] == "flan":
        return int(source.get("n_train", 0)) * FLAN_TASKS
    if task["name"] == "commonsense":
        return TRAIN_RECORDS["commonsense"] - int(source.get("n_validation", 0))
    return TRAIN_RECORDS.get(task["name"])


def _seq_len(config: dict, parts: dict[str, str], image: str | None) -> int:
    """Tokens per sequence at the row's full length; ``image``: how an image enters it (``ModelFacts.image``)."""
    from rankmix.rehearsal.standins import real_config

    dm = config["task"].get("datamodule") or {}
    if config["task"]["name"] == "vl_multitask":  # question tokens + the visual tokens of an NLVR2 pair
        return int(dm.get("max_text_length", 20)) + 2 * int(dm.get("n_boxes", 36))
    if image == "patches":   # the image, counted as one text token, is its patches
        vision = real_config(parts["vision.name_or_path"])
        return int(dm["max_length"]) - 1 + (vision.image_size // vision.patch_size) ** 2
    extra = 1 if image == "prefix" else 0   # the image's [CLS] prefix
    return int(dm.get("max_length", 0)) + extra


def _dtype(backbone: dict, key: str) -> str:
    part = backbone if key == "name_or_path" else backbone[key.split(".")[0]]
    return part.get("dtype") or backbone.get("dtype") or "float32"


def _depth(hub: str) -> int:
    from rankmix.rehearsal.standins import STANDINS

    return int(STANDINS[hub].config[STANDINS[hub].layers[0]])


def _trained(config: dict, key: str, language: str) -> dict | None:
    """The method config of the part under ``key`` (None: the part is frozen)."""
    if key == language:
        return dict(config["method"])
    if key == "vision.name_or_path" and config.get("vision_method"):
        return dict(config["vision_method"])
    return None


def _parameters(hub: str, auto_class: str, method: dict | None, quantized: bool) -> dict:
    """Parameter counts of one part at its true size (meta device, made by transformers' ``auto_class``),
    ``method`` injected where it is trained."""
    import transformers

    from rankmix.adapters import adapter_layers, inject
    from rankmix.rehearsal.standins import real_config

    with torch.device("meta"):
        model = getattr(transformers, auto_class).from_config(real_config(hub))
        if method is None:
            model.requires_grad_(False)
            total = sum(p.numel() for p in model.parameters())
            return {"total": total, "trainable": 0, "activated": 0, "quantized": 0}
        report = inject(model, method)
        layers = list(adapter_layers(model).values())
    frozen = [(n, p) for n, p in model.named_parameters() if not p.requires_grad]
    quant = sum(p.numel() for n, p in frozen if ".layers." in n and p.ndim == 2) if quantized else 0
    trainable = report.trainable_parameters
    return {"total": report.total_parameters, "trainable": trainable, "quantized": quant,
            "activated": sum(layer.activated_parameters() for layer in layers) if layers else trainable}


def project(config: dict, parts: dict[str, str]) -> dict:
    """The projection for a row's resolved ``config``; ``parts``: ``{key of name_or_path: hub id}``."""
    from rankmix.rehearsal.memory import at, measure
    from rankmix.rehearsal.pipelines import PIPELINES

    facts = facts_of(config["task"])
    language = facts.language
    hub = parts.get(language)
    if hub is None:
        return {"notes": [f"{config['task']['name']}: no hub backbone to project"]}
    if hub in PIPELINES:
        return {"notes": [f"{config['task']['name']}: a diffusers pipeline ({hub}), not projected"]}
    backbone, trainer = config["backbone"], config["trainer"]
    precision = str(trainer.get("precision", "32-true"))
    checkpointing = str(backbone.get("activation_checkpointing") or "none")
    quantized = bool((backbone.get("llm") or {}).get("quantization"))
    micro, seq = int(config["task"]["datamodule"].get("batch_size") or 1), _seq_len(config, parts, facts.image)
    # memory is measured where the trained model is a decoder LM (alone or as LLaVA's LLM); the routing functions'
    # and SMoLA's encoder-decoder rows need per-call inputs (visual features, task ids) the measurement does not
    # build, and they fit any card by a wide margin (their models are under 1B parameters)
    measured_kind = facts.decoder
    weights = optimizer = activations = 0.0
    counts, measured = {"total": 0, "trainable": 0, "activated": 0}, []
    for key, part in parts.items():
        if key.endswith("projector.name_or_path") or part in PIPELINES:
            continue
        method = _trained(config, key, language)
        n = _parameters(part, facts.auto_class if key == language else "AutoModel", method,
                        quantized and key == language)
        for k in counts:
            counts[k] += n[k] if k != "activated" or key == language else 0
        dtype = _dtype(backbone, key)
        frozen = n["total"] - n["trainable"] - n["quantized"]
        weights += frozen * torch.finfo(getattr(torch, dtype)).bits / 8 + n["quantized"] * NF4_DQ_BITS / 8
        optimizer += OPTIMIZER_BYTES * n["trainable"]
        if method is None or not measured_kind:
            continue   # a frozen part keeps nothing for backward
        m = measure(part, dtype, precision, method, checkpointing)
        units = micro * seq if m["unit"] == "token" else micro
        kept = m["kept"] or m["layer"]   # with checkpointing, depth × kept + one layer's recompute peak
        activations += at(m["fixed"], units) + _depth(part) * at(kept, units) + (at(m["layer"], units)
                                                                                  if m["kept"] else 0)
        measured.append({**m, "depth": _depth(part), "units_per_micro_batch": units})
    records = _records(config)
    if not measured_kind:
        return {**counts, "tokens_per_epoch": records * seq if records else None, "micro_batch": micro, "seq": seq,
                "checkpointing": checkpointing, "precision": precision, "quantized": quantized,
                "notes": [f"{config['task']['name']}: memory not measured (per-call inputs of its methods are not built by "
                          "rankmix.rehearsal.memory); parameter counts only"]}
    from rankmix.rehearsal.standins import real_config

    logits = LOGIT_BYTES * micro * seq * real_config(hub).vocab_size
    breakdown = {k: v / 2**30 for k, v in (("weights", weights), ("optimizer", optimizer),
                                            ("activations", activations), ("logits", logits))}
    total = sum(breakdown.values())
    return {
        **counts,
        "tokens_per_epoch": records * seq if records else None,
        "memory_gib": total, "memory": breakdown, "fits": [c for c in CARDS_GIB if total <= c],
        "micro_batch": micro, "seq": seq, "checkpointing": checkpointing, "precision": precision,
        "quantized": quantized, "measured": measured,
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


def fmt_fits(p: dict) -> str:
    """The cards a projection fits on, e.g. ``80, 40``; ``none`` where it fits on none of ``CARDS_GIB``."""
    if "fits" not in p:
        return "—"
    return ", ".join(str(c) for c in p["fits"]) or "none"


def main(argv: list[str] | None = None) -> int:
    """The recomputation of a report's projections moved to the rehearsal's own command."""
    print("rankmix: error: `python -m rankmix.rehearsal.projection --report R [--tables ...]` is now "
          "`python -m rankmix.rehearsal --reproject R [--tables ...]`", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
