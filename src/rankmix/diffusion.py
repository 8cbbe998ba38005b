"""SDXL pipelines (MoSLoRA Tab. 6) from a backbone config, through ``diffusers``.

- ``source: pretrained``: ``StableDiffusionXLPipeline.from_pretrained(name_or_path)`` (hub id or local folder) with
  the VAE of ``vae`` (MoSLoRA's training script: ``madebyollin/sdxl-vae-fp16-fix``) in ``dtype``;
- ``source: config``: the same pipeline class on components built from ``config`` (random init from ``init_seed``):
  a UNet with SDXL's text-time conditioning, a VAE and two CLIP text encoders, each a few blocks wide, with one
  word-level tokenizer over the task's prompts for both encoders (the tiny scale: no download).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from rankmix.errors import ConfigError


def build_sdxl(spec: Mapping, prompts: list[str], out_dir: Path):
    from diffusers import StableDiffusionXLPipeline

    dtype = getattr(torch, spec.get("dtype", "float32"))
    if spec.get("source") == "pretrained":
        from diffusers import AutoencoderKL

        from rankmix.backbones import not_loadable

        try:
            extra = {"vae": AutoencoderKL.from_pretrained(spec["vae"], torch_dtype=dtype)} if spec.get("vae") else {}
            return StableDiffusionXLPipeline.from_pretrained(spec["name_or_path"], torch_dtype=dtype, **extra)
        except (OSError, ValueError) as e:
            key = "backbone.vae" if spec.get("vae") and spec["vae"] in str(e) else "backbone.name_or_path"
            raise not_loadable(key, spec.get("vae") if key == "backbone.vae" else spec["name_or_path"], e) from None
    if spec.get("source") == "config":
        pipe = _tiny_sdxl(spec, prompts, out_dir)
        return pipe if dtype == torch.float32 else pipe.to(dtype)
    raise ConfigError("backbone.source", spec.get("source"), "must be config or pretrained")


def _tiny_sdxl(spec: Mapping, prompts: list[str], out_dir: Path):
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from rankmix.backbones import word_level_tokenizer

    cfg = {k: dict(v) for k, v in spec["config"].items()}
    tokenizer = word_level_tokenizer(prompts, out_dir / "tokenizer")
    tokenizer.model_max_length = int(spec.get("max_prompt_tokens", 16))
    text = CLIPTextConfig(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                          bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                          max_position_embeddings=tokenizer.model_max_length, **cfg["text_encoder"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(spec.get("init_seed", 0)))
        unet = UNet2DConditionModel(**{k: tuple(v) if isinstance(v, list) else v for k, v in cfg["unet"].items()})
        vae = AutoencoderKL(**cfg["vae"])
        encoder, encoder_2 = CLIPTextModel(text), CLIPTextModelWithProjection(text)
    scheduler = EulerDiscreteScheduler(**cfg["scheduler"])
    return StableDiffusionXLPipeline(vae=vae, text_encoder=encoder, text_encoder_2=encoder_2, tokenizer=tokenizer,
                                     tokenizer_2=tokenizer, unet=unet, scheduler=scheduler, add_watermarker=False)
