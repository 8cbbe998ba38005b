"""Injection into tiny Llama, RoBERTa, GPT-2, BART and ViT (random init, no download)."""

import pytest
import torch
from transformers import (
    BartConfig,
    BartForConditionalGeneration,
    GPT2Config,
    GPT2LMHeadModel,
    RobertaConfig,
    RobertaModel,
    ViTConfig,
    ViTModel,
)

from rankmix.adapters import DEFAULT_TARGETS, adapter_layers, inject

SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)


def roberta():
    return RobertaModel(RobertaConfig(vocab_size=50, max_position_embeddings=40, **SMALL))


def gpt2():
    return GPT2LMHeadModel(GPT2Config(vocab_size=50, n_positions=40, n_embd=32, n_layer=2, n_head=4,
                                      bos_token_id=0, eos_token_id=0))


def bart():
    return BartForConditionalGeneration(BartConfig(
        vocab_size=50, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=40))


def vit():
    return ViTModel(ViTConfig(image_size=16, patch_size=8, num_channels=3, **SMALL))


def run(model, kind):
    torch.manual_seed(0)
    if kind == "vit":
        return model(pixel_values=torch.randn(2, 3, 16, 16)).last_hidden_state
    ids = torch.randint(3, 50, (2, 7))
    if kind == "bart":
        return model(input_ids=ids, decoder_input_ids=ids).logits
    out = model(input_ids=ids)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


@pytest.mark.parametrize(("make", "kind", "n_wrapped"), [
    (roberta, "roberta", 4), (gpt2, "gpt2", 2), (bart, "bart", 12), (vit, "vit", 4)])
@pytest.mark.parametrize("method", ["lora", "moslora", "smora"])
def test_default_targets_wrap_and_train(make, kind, n_wrapped, method):
    torch.manual_seed(0)
    model = make()
    before = run(model, kind)
    cfg = {"name": method, "r": 4, "target_modules": None, **({"k": 2} if method == "smora" else {})}
    report = inject(model, cfg)
    assert len(report.wrapped) == n_wrapped
    leaf_names = {n.rsplit(".", 1)[-1] for n in report.wrapped}
    defaults = set(DEFAULT_TARGETS[model.config.model_type])
    assert leaf_names <= defaults and len(leaf_names) == min(2, len(defaults))
    torch.testing.assert_close(run(model, kind), before)  # B = 0: starts as the base model
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".base_layer." not in n and any(s in n for s in ("lora_", "router")) for n in trainable)
    run(model, kind).pow(2).mean().backward()
    assert all(layer.lora_B.weight.grad is not None for layer in adapter_layers(model).values())


def test_gpt2_fused_qkv_conv1d_is_wrapped_correctly():
    model = gpt2().eval()
    inject(model, {"name": "lora", "r": 2, "alpha": 2, "target_modules": ["c_attn"]})
    layer = model.transformer.h[0].attn.c_attn
    with torch.no_grad():
        layer.lora_B.weight.normal_()
    x = torch.randn(3, 32)
    w = layer.base_layer.weight  # Conv1D: (in, out)
    expected = x @ w + layer.base_layer.bias + x @ layer.lora_A.weight.T @ layer.lora_B.weight.T
    torch.testing.assert_close(layer(x), expected)
    assert layer.out_features == 96  # q, k and v fused
