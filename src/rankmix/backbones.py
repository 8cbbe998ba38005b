"""Backbones and tokenizers, loaded through ``transformers`` by hub id, local path, or built from a config.

A backbone config (after the scale is applied) has ``source``:

- ``config``: ``AutoModelForCausalLM.from_config`` on the ``config`` mapping, random init from ``init_seed``
  (the tiny scale: CPU-sized, no download);
- ``pretrained``: ``AutoModelForCausalLM.from_pretrained(name_or_path)`` (hub id or local directory).

The tokenizer is either ``pretrained`` (same loading rules) or ``word_level``: a whitespace word-level
tokenizer built with ``tokenizers`` from the training files, saved next to the data and loaded back with
``AutoTokenizer.from_pretrained`` like any other.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

from rankmix.errors import ConfigError

SPECIAL_TOKENS = {"pad_token": "<pad>", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}


def _not_loadable(key: str, name: str, err: Exception) -> ConfigError:
    reason = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
    return ConfigError(
        key, name,
        "could not be loaded: no local directory of that name and the hub is unreachable or has no such "
        f"repo ({reason}); download it where the hub is reachable (`hf download {name} --local-dir DIR`) "
        "and pass the directory",
    )


def build_word_level_tokenizer(corpus_files: Iterable[Path], out_dir: Path,
                               extra_text: str = "") -> PreTrainedTokenizerFast:
    """Word-level tokenizer over every whitespace-separated word of the records' text fields (and of
    ``extra_text``: the words a prompt wrapper adds around them)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    words: set[str] = set(extra_text.split())
    for path in corpus_files:
        with open(path, encoding="utf-8") as f:
            for line in f:
                rec = json.loads(line)
                words.update(rec["inputs"].split())
                words.update(rec["targets"].split())
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS.values())}
    for w in sorted(words):
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=SPECIAL_TOKENS["unk_token"]))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIAL_TOKENS)
    out_dir.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(out_dir)
    return AutoTokenizer.from_pretrained(out_dir)


def load_tokenizer(spec: Mapping, corpus_files: Iterable[Path], cache_dir: Path, extra_text: str = ""):
    kind = spec.get("source")
    if kind == "word_level":
        tok = build_word_level_tokenizer(corpus_files, cache_dir, extra_text)
    elif kind == "pretrained":
        name = spec["name_or_path"]
        try:
            tok = AutoTokenizer.from_pretrained(name)
        except (OSError, ValueError) as e:
            raise _not_loadable("backbone.tokenizer.name_or_path", name, e) from None
    else:
        raise ConfigError("backbone.tokenizer.source", kind, "must be word_level or pretrained")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def build_backbone(spec: Mapping, tokenizer) -> torch.nn.Module:
    """The causal LM described by ``spec`` (see module docstring), in ``spec.dtype``."""
    dtype = getattr(torch, spec.get("dtype", "float32"))
    source = spec.get("source")
    if source == "config":
        cfg = dict(spec["config"])
        model_type = cfg.pop("model_type")
        cfg.update(
            vocab_size=len(tokenizer),
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        config = AutoConfig.for_model(model_type, **cfg)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(spec.get("init_seed", 0)))
            model = AutoModelForCausalLM.from_config(config)
        model = model.to(dtype)
    elif source == "pretrained":
        name = spec["name_or_path"]
        try:
            model = AutoModelForCausalLM.from_pretrained(name, dtype=dtype)
        except (OSError, ValueError) as e:
            raise _not_loadable("backbone.name_or_path", name, e) from None
    else:
        raise ConfigError("backbone.source", source, "must be config or pretrained")
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model
