"""Activation memory measured on this machine: what autograd keeps for backward, per layer of a real architecture.

A model of the paper architecture at its full width (its real config, ``standins.real_config``) is built with one
and with two layers (the vocabulary cut to ``VOCAB``: the embedding table is a weight, not an activation, and the
logits are counted apart, ``projection``), the row's method injected (``rankmix.adapters.inject``), its
checkpointing switched on as a run switches it on (``rankmix.backbones.enable_activation_checkpointing``), and
one forward pass run in training mode with the row's precision (``torch.autocast`` for the mixed ones) and
transformers' default attention (SDPA). Every tensor autograd saves for backward is seen by
``torch.autograd.graph.saved_tensors_hooks`` and counted once per storage (``untyped_storage().data_ptr()`` and
``nbytes()``); the model's parameters and buffers are weights, not activations, and are left out.

Two layers minus one layer is the cost of a layer; one layer minus that is the fixed cost (embeddings' output,
rotary tables, final norm). Both are measured at micro batch 1 and two short lengths (``TOKENS``; ``IMAGES`` for a
vision tower, whose sequence is fixed) and fitted as bytes per unit plus a constant (adapter weights cast for
autocast do not grow with the tokens); the two-layer model is measured at a third length and ``check`` is its
count over the fit's prediction (1.0: linear, so the fit scales to the row's micro batch × cutoff). With
checkpointing, ``kept`` is what a checkpointed layer keeps (its inputs: reentrant ``torch.utils.checkpoint`` saves
them through autograd; the non-reentrant variant keeps the same inputs in its own frames, so it is measured as
reentrant).

Measurements are kept in ``results/rehearse/activation-bytes/``, one JSON per architecture and settings
(``measure``): committed beside the report they feed, so a projection can be checked against what was measured,
and a rehearsal on a new machine measures only what is not there yet.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from pathlib import Path

import torch

from rankmix.locations import SOURCE

CACHE = SOURCE / "results" / "rehearse" / "activation-bytes"  # committed with the repository
VOCAB = 1024          # the measured models' vocabulary (every special token id of the paper models' inputs is lower)
TOKENS = (256, 512, 1024)   # measured lengths of a language model (micro batch 1): two fitted, one checked
IMAGES = (1, 2, 4)          # measured micro batches of a vision tower: two fitted, one checked
AUTOCAST = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


def saved_bytes(run: Callable[[], object], exclude: Iterable[int] = ()) -> tuple[int, int, object]:
    """``(bytes, storages, output)``: what autograd saves for backward while ``run()`` runs, each storage once,
    storages whose ``data_ptr`` is in ``exclude`` left out. Keep ``output`` alive while reading the count: the
    graph it holds keeps the saved tensors, and with them their addresses."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = run()
    skip = set(exclude)
    kept = {p: n for p, n in seen.items() if p not in skip and n}
    return sum(kept.values()), len(kept), out


def _model(hub: str, layers: int, dtype: torch.dtype, method: dict, checkpointing: str) -> torch.nn.Module:
    """``hub``'s base model (no LM head) at full width with ``layers`` layers, ``method`` injected."""
    from transformers import AutoModel

    from rankmix.adapters import inject
    from rankmix.backbones import enable_activation_checkpointing
    from rankmix.rehearsal.standins import STANDINS, real_config

    config = real_config(hub)
    for key in STANDINS[hub].layers:
        setattr(config, key, layers)
    if hasattr(config, "vocab_size"):
        config.vocab_size = VOCAB
    torch.manual_seed(0)
    model = AutoModel.from_config(config, dtype=dtype)
    inject(model, method)
    if checkpointing != "none":
        enable_activation_checkpointing(model, "reentrant")
    return model.train()


def _inputs(model: torch.nn.Module, units: int) -> dict:
    """A micro batch: ``units`` tokens of one sequence, or ``units`` images for a vision tower."""
    config = model.config
    if config.model_type.endswith("vision_model") or config.model_type == "vit":
        size = config.image_size
        return {"pixel_values": torch.randn(units, config.num_channels, size, size, dtype=model.dtype)}
    ids = torch.randint(3, VOCAB, (1, units))
    return {"input_ids": ids, **({"decoder_input_ids": ids} if config.is_encoder_decoder else {})}


def _count(model: torch.nn.Module, units: int, precision: str) -> int:
    weights = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    inputs = _inputs(model, units)
    dtype = AUTOCAST.get(precision)
    with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        n, _, out = saved_bytes(lambda: model(**inputs)[0], weights)
    del out
    return n


def key(hub: str, dtype: str, precision: str, method: dict, checkpointing: str) -> str:
    """The cache key of a measurement: architecture and every setting that changes what is saved."""
    blob = json.dumps([hub, dtype, precision, method, checkpointing != "none", torch.__version__], sort_keys=True,
                      default=str)
    return f"{hub.replace('/', '--')}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"


def _fit(at: dict[int, float]) -> list[float]:
    """``[bytes per unit, constant bytes]`` through the counts ``{units: bytes}`` at two lengths."""
    (u1, c1), (u2, c2) = sorted(at.items())
    slope = (c2 - c1) / (u2 - u1)
    return [slope, c1 - slope * u1]


def _layers(hub: str, dtype: torch.dtype, method: dict, checkpointing: str, units: tuple[int, ...],
            precision: str) -> dict[int, dict[int, int]]:
    """``{layers: {units: bytes}}`` for the one- and two-layer models at each of ``units`` (the third, if any,
    on the two-layer model only)."""
    out = {}
    for n in (1, 2):
        model = _model(hub, n, dtype, method, checkpointing)
        out[n] = {u: _count(model, u, precision) for u in (units if n == 2 else units[:2])}
        del model
    return out


def measure(hub: str, dtype: str, precision: str, method: dict, checkpointing: str = "none",
            cache: Path | None = CACHE) -> dict:
    """What ``hub`` at full width with ``method`` (a method config) keeps for backward under ``precision``, the
    frozen weights in ``dtype``, as ``[bytes per unit, constant bytes]`` (a unit: a token; an image for a vision
    tower): ``layer`` (one layer without checkpointing, also one layer's recompute peak with it), ``kept`` (a
    checkpointed layer; None without checkpointing) and ``fixed`` (outside the layers); fitted through two lengths
    (``units``), with ``check``: the two-layer count at a third length over the fit's prediction (1.0: linear).
    Cached in ``cache`` (None: not cached)."""
    path = cache / f"{key(hub, dtype, precision, method, checkpointing)}.json" if cache else None
    if path and path.is_file():
        return json.loads(path.read_text())
    torch_dtype = getattr(torch, dtype)
    probe = _model(hub, 1, torch_dtype, method, "none")
    vision = "pixel_values" in _inputs(probe, 1)
    del probe
    units = IMAGES if vision else TOKENS
    plain = _layers(hub, torch_dtype, method, "none", units, precision)
    layer = _fit({u: plain[2][u] - plain[1][u] for u in units[:2]})
    fixed = _fit({u: 2 * plain[1][u] - plain[2][u] for u in units[:2]})
    u3 = units[2]
    check = plain[2][u3] / (fixed[0] * u3 + fixed[1] + 2 * (layer[0] * u3 + layer[1]))
    out = {"hub": hub, "dtype": dtype, "precision": precision, "method": method["name"],
           "checkpointing": checkpointing, "unit": "image" if vision else "token", "units": list(units),
           "layer": layer, "fixed": fixed, "kept": None, "check": check}
    if checkpointing != "none":
        kept = _layers(hub, torch_dtype, method, checkpointing, units[:2], precision)
        out["kept"] = _fit({u: kept[2][u] - kept[1][u] for u in units[:2]})
        out["fixed"] = _fit({u: 2 * kept[1][u] - kept[2][u] for u in units[:2]})
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(out, indent=1) + "\n")
    return out


def at(fit: list[float], units: int) -> float:
    """A fitted ``[bytes per unit, constant bytes]`` at ``units`` units."""
    return fit[0] * units + fit[1]
