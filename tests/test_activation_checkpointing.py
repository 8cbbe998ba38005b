"""Activation checkpointing from the backbone's own library on every backbone family, the official setting per
row, and FSDP's wrap classes from each paper backbone's own transformer blocks."""

from __future__ import annotations

import copy

import pytest
import torch
from omegaconf import OmegaConf

from conftest import REPO, compose
from rankmix.adapters import inject
from rankmix.backbones import block_classes, enable_activation_checkpointing
from rankmix.errors import ConfigError

BACKBONES = sorted(p.stem for p in (REPO / "conf" / "backbone").glob("*.yaml"))


@pytest.mark.parametrize("backbone", BACKBONES)
def test_fsdp_wraps_the_backbones_own_blocks(backbone):
    from hydra.utils import instantiate

    from rankmix.rehearsal.run import pretrained_parts
    from rankmix.rehearsal.standins import part_models

    cfg = compose(f"backbone={backbone}", "scale=paper", "trainer=fsdp")
    parts = pretrained_parts(OmegaConf.to_container(cfg.backbone, resolve=True))
    own = sorted({c for m in part_models(parts).values() for c in block_classes(m)})
    assert own and list(cfg.backbone.fsdp_blocks) == own
    strategy = instantiate(cfg.trainer.strategy, _convert_="all")
    names = {f"{c.__module__}.{c.__qualname__}" for c in strategy.kwargs["auto_wrap_policy"]._module_classes}
    assert names == set(own)


@pytest.mark.parametrize(("row", "setting"), [
    ("smora-1/lora_64", "reentrant"), ("smora-1/smora_64_8_13b", "reentrant"), ("smora-4/smora_64_8", "reentrant"),
    ("smora-2/smora_64_8", "reentrant"), ("moslora-5/moslora_kaiming", "reentrant"), ("moslora-5/qlora", "reentrant"),
    ("moslora-1/lora_16", "none"), ("moslora-6/lora", "none"), ("routing-1/adapter_128_add", "none"),
    ("routing-7/adapter_add", "none"), ("smola-a1/lora_128", "none"),
])
def test_each_row_has_its_official_setting(row, setting):
    assert compose(f"experiment={row}", "scale=paper").backbone.activation_checkpointing == setting
    assert compose(f"experiment={row}").backbone.activation_checkpointing == "none"   # tiny: as before


def _llama(model_type: str):
    from transformers import AutoConfig, AutoModelForCausalLM

    import rankmix.internlm2  # noqa: F401

    config = AutoConfig.for_model(model_type, vocab_size=40, hidden_size=16, intermediate_size=24,
                                  num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2, use_cache=False)
    return AutoModelForCausalLM.from_config(config), lambda g: {"input_ids": torch.randint(0, 40, (2, 5), generator=g)}


def _llava():
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    vision = CLIPVisionConfig(hidden_size=16, intermediate_size=24, num_hidden_layers=2, num_attention_heads=2,
                              image_size=8, patch_size=4, projection_dim=16)
    text = LlamaConfig(vocab_size=40, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                       num_attention_heads=2, num_key_value_heads=2, use_cache=False)
    model = LlavaForConditionalGeneration(LlavaConfig(vision_config=vision, text_config=text, image_token_id=39,
                                                      vision_feature_layer=-1, image_seq_length=4))

    def inputs(g):
        ids = torch.randint(0, 38, (2, 9), generator=g)
        ids[:, 1:5] = 39
        return {"input_ids": ids, "pixel_values": torch.randn(2, 3, 8, 8, generator=g)}
    return model, inputs


def _encoder(kind: str):
    from transformers import AutoConfig, AutoModel

    sizes = {"hidden_size": 16, "intermediate_size": 24, "num_hidden_layers": 2, "num_attention_heads": 2}
    if kind == "vit":
        model = AutoModel.from_config(AutoConfig.for_model("vit", image_size=8, patch_size=4, **sizes))
        return model, lambda g: {"pixel_values": torch.randn(2, 3, 8, 8, generator=g)}
    model = AutoModel.from_config(AutoConfig.for_model("roberta", vocab_size=40, **sizes))
    return model, lambda g: {"input_ids": torch.randint(3, 40, (2, 5), generator=g)}


def _gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(vocab_size=40, n_embd=16, n_layer=2, n_head=2, n_positions=16, use_cache=False))
    return model, lambda g: {"input_ids": torch.randint(0, 40, (2, 5), generator=g)}


def _bart():
    from transformers import BartConfig, BartForConditionalGeneration

    model = BartForConditionalGeneration(BartConfig(
        vocab_size=40, d_model=16, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=24, decoder_ffn_dim=24, max_position_embeddings=16, use_cache=False))
    return model, lambda g: {"input_ids": torch.randint(3, 40, (2, 5), generator=g),
                             "decoder_input_ids": torch.randint(3, 40, (2, 4), generator=g)}


def _unet():
    from diffusers import UNet2DConditionModel

    model = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16),
                                 down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), layers_per_block=1,
                                 cross_attention_dim=8, attention_head_dim=2, norm_num_groups=4)
    return model, lambda g: {"sample": torch.randn(2, 4, 8, 8, generator=g), "timestep": 3,
                             "encoder_hidden_states": torch.randn(2, 3, 8, generator=g)}


FAMILIES = {
    "llama": (lambda: _llama("llama"), ["q_proj", "v_proj"]),
    "internlm2": (lambda: _llama("internlm2"), ["wqkv", "wo"]),
    "llava": (_llava, ["q_proj", "v_proj"]),
    "vit": (lambda: _encoder("vit"), ["q_proj", "v_proj"]),
    "roberta": (lambda: _encoder("roberta"), ["query", "value"]),
    "gpt2": (_gpt2, ["c_attn"]),
    "bart": (_bart, ["q_proj", "v_proj"]),
    "sdxl_unet": (_unet, ["to_q", "to_v"]),
}


def _gradients(model, inputs) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)   # the backbone's own dropout
    out = model(**inputs(g))
    first = out[0] if isinstance(out, tuple) else next(iter(out.values()))
    (first.double() ** 2).mean().backward()
    grads = [p.grad.clone() for p in model.parameters() if p.requires_grad]
    model.zero_grad()
    return grads


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_checkpointing_works_on_every_backbone_family(family):
    build, targets = FAMILIES[family]
    torch.manual_seed(0)
    model, inputs = build()
    inject(model, {"name": "lora", "r": 2, "target_modules": targets})
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn_like(p))
    model.train()
    plain = _gradients(model, inputs)
    for mode in ("non_reentrant",) if family == "sdxl_unet" else ("reentrant", "non_reentrant"):
        ckpt = copy.deepcopy(model)
        assert enable_activation_checkpointing(ckpt, mode) == [type(model).__name__]
        for a, b in zip(_gradients(ckpt, inputs), plain, strict=True):
            assert b.abs().sum() > 0
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_a_unet_checkpoints_without_reentry():
    model, _ = _unet()
    with pytest.raises(ConfigError, match="non_reentrant"):
        enable_activation_checkpointing(model, "reentrant")


def test_a_frozen_model_is_left_alone_and_unknown_settings_are_refused():
    model, _ = _encoder("vit")
    model.requires_grad_(False)
    with pytest.raises(ConfigError, match="no model with its own activation checkpointing"):
        enable_activation_checkpointing(model, "reentrant")
    assert enable_activation_checkpointing(model, "none") == []
    with pytest.raises(ConfigError, match="backbone.activation_checkpointing"):
        enable_activation_checkpointing(model, "always")
