"""Stand-ins of the paper's diffusers checkpoints (MoSLoRA Tab. 6): SDXL base 1.0 and the fp16-fix SDXL VAE.

Each keeps its real configs (diffusers' ``config.json`` of every part, the scheduler, both CLIP tokenizers' ids and
lengths) with the widths divided by ``WIDTH_DIVISOR`` and at most ``LAYERS`` transformer blocks per level, as the
model stand-ins do (``rankmix.rehearsal.standins``). Two values change with the widths because the widths would
break them otherwise: the group count of the group norms (32 does not divide the reduced channels) and the UNet's
``projection_class_embeddings_input_dim``, the text-embedding width plus six time ids of ``addition_time_embed_dim``.
Weights are random (seed ``SEED``) in fp32, as the repos' default files. Each declares what it stands in for, as
the model stand-ins do: ``rankmix.backbones.STANDIN_DIR`` holds the real ``unet/config.json`` (SDXL) or
``config.json`` (the VAE), which the architecture check reads. The tokenizers are CLIP's byte-level BPE
(lower case, ``</w>`` word ends) trained on the stand-ins' corpus, with ``<|startoftext|>`` 49406 and
``<|endoftext|>`` 49407 and 77 positions; the second pads with ``!`` (id 0), as the SDXL repo's ``tokenizer_2``.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch

from rankmix.backbones import STANDIN_DIR
from rankmix.config import digest
from rankmix.rehearsal.standin_basics import (
    LAYERS,
    SEED,
    WIDTH_DIVISOR,
    WIDTHS,
    build_once,
    corpus,
    layout_vocab,
    train_bpe,
)

NORM_GROUPS = 4  # the reduced widths' group norms (the real 32 does not divide them)

# SDXL base 1.0's unet/config.json (the values it sets)
_SDXL_UNET = {"act_fn": "silu", "addition_embed_type": "text_time", "addition_time_embed_dim": 256,
              "attention_head_dim": [5, 10, 20], "block_out_channels": [320, 640, 1280], "center_input_sample": False,
              "cross_attention_dim": 2048, "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D",
                                                                 "CrossAttnDownBlock2D"],
              "downsample_padding": 1, "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 4,
              "layers_per_block": 2, "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32,
              "out_channels": 4, "projection_class_embeddings_input_dim": 2816, "sample_size": 128,
              "transformer_layers_per_block": [1, 2, 10], "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D",
                                                                            "UpBlock2D"],
              "upcast_attention": False, "use_linear_projection": True}
# its vae/config.json, and madebyollin/sdxl-vae-fp16-fix's (the same architecture; the fp16 fix is in the weights)
_SDXL_VAE = {"act_fn": "silu", "block_out_channels": [128, 256, 512, 512],
             "down_block_types": ["DownEncoderBlock2D"] * 4, "in_channels": 3, "latent_channels": 4,
             "layers_per_block": 2, "norm_num_groups": 32, "out_channels": 3, "sample_size": 1024,
             "scaling_factor": 0.13025, "up_block_types": ["UpDecoderBlock2D"] * 4, "force_upcast": True}
# text_encoder (CLIP ViT-L/14's text tower) and text_encoder_2 (OpenCLIP ViT-bigG/14's, with its projection)
_TEXT = {"hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12, "num_hidden_layers": 12,
         "projection_dim": 768, "hidden_act": "quick_gelu", "max_position_embeddings": 77, "vocab_size": 49408,
         "layer_norm_eps": 1e-05, "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1}
_TEXT_2 = {**_TEXT, "hidden_size": 1280, "intermediate_size": 5120, "num_attention_heads": 20, "num_hidden_layers": 32,
           "projection_dim": 1280, "hidden_act": "gelu"}
_SCHEDULER = {"beta_end": 0.012, "beta_schedule": "scaled_linear", "beta_start": 0.00085, "clip_sample": False,
              "interpolation_type": "linear", "num_train_timesteps": 1000, "prediction_type": "epsilon",
              "sample_max_value": 1.0, "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1,
              "timestep_spacing": "leading", "trained_betas": None, "use_karras_sigmas": False}
CLIP_SPECIALS = {49406: "<|startoftext|>", 49407: "<|endoftext|>"}

PIPELINES = {"stabilityai/stable-diffusion-xl-base-1.0": "sdxl", "madebyollin/sdxl-vae-fp16-fix": "vae"}


def _reduced(values: dict, width: str, keys: tuple[str, ...]) -> dict:
    out = copy.deepcopy(values)
    if width == "reduced":
        for k in keys:
            out[k] = [v // WIDTH_DIVISOR for v in out[k]] if isinstance(out[k], list) else out[k] // WIDTH_DIVISOR
        if "norm_num_groups" in out:
            out["norm_num_groups"] = NORM_GROUPS
    return out


def unet_config(width: str = "reduced") -> dict:
    text = text_configs(width)
    unet = _reduced(_SDXL_UNET, width, ("block_out_channels", "cross_attention_dim", "addition_time_embed_dim"))
    unet["transformer_layers_per_block"] = [min(n, LAYERS) for n in unet["transformer_layers_per_block"]]
    unet["projection_class_embeddings_input_dim"] = text[1]["projection_dim"] + 6 * unet["addition_time_embed_dim"]
    assert unet["cross_attention_dim"] == text[0]["hidden_size"] + text[1]["hidden_size"]
    return unet


def vae_config(width: str = "reduced") -> dict:
    return _reduced(_SDXL_VAE, width, ("block_out_channels",))


def text_configs(width: str = "reduced") -> tuple[dict, dict]:
    keys = ("hidden_size", "intermediate_size", "projection_dim")
    return tuple({**_reduced(t, width, keys), "num_hidden_layers": LAYERS} for t in (_TEXT, _TEXT_2))


def _byte_chars() -> list[str]:
    """The byte-level BPE characters of bytes 0-255 in the byte order of GPT-2's and CLIP's vocabularies: the
    printable bytes stand for themselves, the others for code points from 256 up."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return [chr(b) for b in printable] + [chr(256 + i) for i in range(len(others))]


def _clip_tokenizer(pad_token: str):
    """CLIP's tokenizer layout (module docstring) with BPE merges trained on ``corpus()``."""
    from tokenizers import pre_tokenizers
    from transformers import CLIPTokenizer

    clip = CLIPTokenizer().backend_tokenizer   # its normaliser and pre-tokeniser, to train the merges with
    tokens, merges = train_bpe(clip.pre_tokenizer, pre_tokenizers.ByteLevel.alphabet(), clip.normalizer,
                                end_of_word_suffix="</w>")
    chars = _byte_chars()   # CLIP's first ids: the 256 byte characters, then each as a word end
    base = [*chars, *(c + "</w>" for c in chars)]
    vocab = layout_vocab(CLIP_SPECIALS, [*base, *(t for t in tokens if t not in set(base))], _TEXT["vocab_size"])
    return CLIPTokenizer(vocab=vocab, merges=merges, pad_token=pad_token,
                         model_max_length=_TEXT["max_position_embeddings"])


def _sdxl(out: Path, width: str) -> None:
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    text, text_2 = (CLIPTextConfig(**t) for t in text_configs(width))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        unet = UNet2DConditionModel(**unet_config(width))
        vae = AutoencoderKL(**vae_config(width))
        encoder, encoder_2 = CLIPTextModel(text), CLIPTextModelWithProjection(text_2)
    pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=encoder, text_encoder_2=encoder_2,
                                     tokenizer=_clip_tokenizer("<|endoftext|>"), tokenizer_2=_clip_tokenizer("!"),
                                     unet=unet, scheduler=EulerDiscreteScheduler.from_config(_SCHEDULER),
                                     force_zeros_for_empty_prompt=True, add_watermarker=False)
    pipe.save_pretrained(out)
    _declare(out / STANDIN_DIR / "unet", "UNet2DConditionModel", _SDXL_UNET)


def _vae(out: Path, width: str) -> None:
    from diffusers import AutoencoderKL

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED + 1)
        AutoencoderKL(**vae_config(width)).save_pretrained(out)
    _declare(out / STANDIN_DIR, "AutoencoderKL", _SDXL_VAE)


def _declare(folder: Path, model_class: str, values: dict) -> None:
    """The real model's config.json in ``folder`` (what a stand-in stands in for), in diffusers' layout."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"_class_name": model_class, **values}, indent=2) + "\n")


def build_pipeline_standin(hub_id: str, cache_dir: Path, width: str = "reduced") -> Path:
    """The directory of ``hub_id``'s stand-in, built once and reused when present."""
    if width not in WIDTHS:
        raise ValueError(f"stand-in width {width!r}: must be one of {', '.join(WIDTHS)}")
    kind = PIPELINES[hub_id]
    key = digest({"kind": kind, "unet": unet_config(width), "vae": vae_config(width), "text": text_configs(width),
                  "scheduler": _SCHEDULER, "seed": SEED, "corpus": corpus(), "declares": STANDIN_DIR}, 10)
    path = Path(cache_dir) / "models" / f"{hub_id.replace('/', '--')}-{width}-{key}"
    return build_once(path, lambda tmp: {"sdxl": _sdxl, "vae": _vae}[kind](tmp, width))
