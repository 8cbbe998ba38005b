"""SDXL pipelines (MoSLoRA Tab. 6) from a backbone config, through ``diffusers``.

- ``source: pretrained``: ``StableDiffusionXLPipeline.from_pretrained(name_or_path)`` (hub id or local folder) with
  the VAE of ``vae`` (MoSLoRA's training script: ``madebyollin/sdxl-vae-fp16-fix``) in ``dtype``; before they load,
  the UNet's ``unet/config.json`` is checked against ``architecture`` and the VAE's ``config.json`` against
  ``vae_architecture`` (``rankmix.backbones.check_architecture``; the keys to set: ``path_key``, ``vae_path_key``);
- ``source: config``: the same pipeline class on components built from ``config`` (random init from ``init_seed``):
  a UNet with SDXL's text-time conditioning, a VAE and two CLIP text encoders, each a few blocks wide, with one
  word-level tokenizer over the task's prompts for both encoders (the tiny scale: no download).

MoSLoRA's own inference (``subject_driven_generation/infer.py``; ``task.inference: official``) is
``official_pipeline``: a fresh pipeline of the same weights in fp16 with its own VAE (not the training script's
fp16-fix VAE), the adapters saved as the official training script saves them (``save_official_lora``: peft's state
dict through diffusers' ``convert_state_dict_to_diffusers``, the mixer under its official name ``lora_AB``, which
becomes ``lora.downB``) and read back by diffusers' ``load_lora_weights``, which builds a plain LoRA (no
``lora_use_mixer``) and so leaves the mixer out: a MoSLoRA UNet generates with B A, not B M A.
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

        from rankmix.backbones import UNET, VAE, check_architecture, not_loadable, vae_spec

        check_architecture("backbone.name_or_path", spec["name_or_path"], spec, spec.get("paper_label"), *UNET)
        if spec.get("vae"):
            check_architecture("backbone.vae", spec["vae"], vae_spec(spec), spec.get("paper_label"), *VAE)
        try:
            extra = {"vae": AutoencoderKL.from_pretrained(spec["vae"], torch_dtype=dtype)} if spec.get("vae") else {}
            return StableDiffusionXLPipeline.from_pretrained(spec["name_or_path"], torch_dtype=dtype, **extra)
        except (OSError, ValueError) as e:
            vae = bool(spec.get("vae")) and spec["vae"] in str(e)
            raise not_loadable("backbone.vae" if vae else "backbone.name_or_path",
                               spec["vae"] if vae else spec["name_or_path"], e,
                               spec.get("vae_path_key" if vae else "path_key")) from None
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


def official_lora_state(unet) -> dict[str, torch.Tensor]:
    """The UNet's LoRA/MoSLoRA adapters as MoSLoRA's training script writes them: peft's state dict
    (``get_peft_model_state_dict``: ``<layer>.lora_A.weight``, ``<layer>.lora_B.weight`` and, with the mixer, the
    official layer's ``<layer>.lora_AB.weight``) through diffusers' ``convert_state_dict_to_diffusers``. The scaling
    α/r goes into B (the script's α = r: B unchanged)."""
    from diffusers.utils import convert_state_dict_to_diffusers

    from rankmix.adapters import adapter_layers
    from rankmix.errors import RankmixError

    state = {}
    for name, layer in adapter_layers(unet).items():
        if layer.method not in ("lora", "moslora"):
            raise RankmixError(f"the official LoRA file holds LoRA or MoSLoRA adapters; {name} is {layer.method}")
        state[f"{name}.lora_A.weight"] = layer.lora_A.weight.detach().float().cpu().contiguous()
        state[f"{name}.lora_B.weight"] = (layer.lora_B.weight * layer.scaling).detach().float().cpu().contiguous()
        if hasattr(layer, "lora_mixer"):
            state[f"{name}.lora_AB.weight"] = layer.lora_mixer.weight.detach().float().cpu().contiguous()
    return convert_state_dict_to_diffusers(state)


def save_official_lora(unet, directory: Path) -> Path:
    """``official_lora_state`` written by ``StableDiffusionXLPipeline.save_lora_weights``, as the script's end."""
    from diffusers import StableDiffusionXLPipeline

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    StableDiffusionXLPipeline.save_lora_weights(save_directory=str(directory), unet_lora_layers=official_lora_state(unet))
    return directory


def official_pipeline(spec: Mapping, prompts: list[str], out_dir: Path, lora_dir: Path, device) -> tuple:
    """infer.py's pipeline: ``from_pretrained(model, torch_dtype=float16)`` with the model's own VAE, then
    ``load_lora_weights(lora_dir)``; on a CPU (no fp16 kernels) in fp32. Returns (pipeline, notes)."""
    import logging

    device = torch.device(device)
    dtype = "float16" if device.type == "cuda" else "float32"
    spec = {k: v for k, v in spec.items() if k != "vae"} | {"dtype": dtype}
    pipe = build_sdxl(spec, prompts, out_dir)
    dropped = []

    class Catch(logging.Handler):  # what diffusers says it left out of the file (the mixer's keys)
        def emit(self, record):
            dropped.append(record.getMessage())

    logger, handler = logging.getLogger("diffusers"), Catch(logging.WARNING)
    logger.addHandler(handler)
    try:
        pipe.load_lora_weights(str(lora_dir))
    finally:
        logger.removeHandler(handler)
    pipe.set_progress_bar_config(disable=True)
    notes = {"dtype": dtype, "vae": "the pipeline's own", "generator": "none: torch's global RNG, seeded once",
             "loader": "diffusers load_lora_weights",
             "dropped_by_loader": sum(m.count("lora_AB") for m in dropped if "unexpected keys" in m)}
    return pipe.to(device), notes
