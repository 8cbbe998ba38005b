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


def t5():
    from transformers import T5Config, T5ForConditionalGeneration

    return T5ForConditionalGeneration(T5Config(vocab_size=50, d_model=32, d_kv=8, d_ff=64, num_layers=2,
                                               num_heads=4, decoder_start_token_id=0))


def qwen2():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    return Qwen2ForCausalLM(Qwen2Config(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2))


@pytest.mark.parametrize("method", ["lora", "smora"])
def test_t5_and_qwen2_have_default_targets_and_t5_feed_forward_reads_the_wrapped_weight(method):
    torch.manual_seed(0)
    t = t5()
    # T5's feed-forward reads ``wo.weight.dtype``: an adapter on it must answer like the layer it wraps
    report = inject(t, {"name": method, "r": 4, "target_modules": ["q", "v", "wo"]})
    assert len(report.wrapped) == 16   # q and v of the 6 attentions (2 encoder, 2 + 2 decoder), wo of the 4 blocks
    wo = t.encoder.block[0].layer[1].DenseReluDense.wo
    assert wo.weight is wo.base_layer.weight and wo.bias is None
    ids = torch.randint(3, 50, (2, 5))
    t(input_ids=ids, decoder_input_ids=ids).logits.sum().backward()
    q = qwen2()
    assert len(inject(q, {"name": method, "r": 4}).wrapped) == 14   # by default every linear layer of its 2 blocks
    assert torch.isfinite(run(q, "llama")).all()


def test_merge_and_unload_gives_back_the_plain_model_with_the_update_folded_in(tmp_path):
    from transformers import AutoModelForCausalLM

    from rankmix.adapters import merge_and_unload
    from rankmix.errors import NotMergeableError

    torch.manual_seed(0)
    model = gpt2()
    inject(model, {"name": "moslora", "r": 4})
    for p in model.parameters():
        if p.requires_grad:
            torch.nn.init.normal_(p, std=0.1)   # a trained-looking update, not the zero init
    model.eval()
    before = run(model, "gpt2")
    merged = merge_and_unload(model)
    assert adapter_layers(merged) == {} and type(merged.transformer.h[0].attn.c_attn).__name__ == "Conv1D"
    torch.testing.assert_close(run(merged, "gpt2"), before, atol=1e-5, rtol=1e-4)
    merged.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()   # plain transformers, nothing re-initialised
    torch.testing.assert_close(run(reloaded, "gpt2"), before, atol=1e-5, rtol=1e-4)
    routed = gpt2()
    inject(routed, {"name": "smora", "r": 8, "k": 2})
    with pytest.raises(NotMergeableError, match="smora cannot be merged"):
        merge_and_unload(routed)
    assert adapter_layers(routed)   # refused before anything changed


@pytest.mark.parametrize("method", [
    {"name": "routing", "fn": "add", "base": "lora", "r": 4},
    {"name": "multi_adapter", "tasks": ["a", "b"], "r": 4, "fns": {"a": "mul"}, "target_modules": ["c_proj"]}])
def test_beam_search_expands_the_per_example_context_as_generate_expands_the_inputs(method):
    from rankmix.adapters import adapter_context

    torch.manual_seed(0)
    model = gpt2()
    inject(model, method)
    for p in model.parameters():
        if p.requires_grad:
            torch.nn.init.normal_(p, std=0.2)
    model.eval()
    ids = torch.randint(3, 50, (2, 4))
    ctx = {"x_r": torch.randn(2, 32), "task_ids": torch.tensor([0, 1])}
    with adapter_context(model, **ctx):
        beams = model.generate(ids, num_beams=3, max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert beams.shape == (2, 8)
    for i in range(2):   # each example's beams used its own context: the same as generating it alone
        with adapter_context(model, **{k: v[i:i + 1] for k, v in ctx.items()}):
            alone = model.generate(ids[i:i + 1], num_beams=3, max_new_tokens=4, do_sample=False, pad_token_id=0)
        assert torch.equal(beams[i:i + 1], alone)


def test_merging_lora_on_a_tied_lm_head_unties_it_and_leaves_the_embeddings_alone(tmp_path):
    from transformers import AutoModelForCausalLM

    from rankmix.adapters import merge_and_unload

    torch.manual_seed(0)
    model = gpt2()
    embeddings = model.transformer.wte.weight.detach().clone()
    inject(model, {"name": "lora", "r": 4, "target_modules": ["c_attn", "lm_head"]})
    for p in model.parameters():
        if p.requires_grad:
            torch.nn.init.normal_(p, std=0.1)
    model.eval()
    before = run(model, "gpt2")
    merged = merge_and_unload(model)
    assert torch.equal(merged.transformer.wte.weight, embeddings) and not merged.config.tie_word_embeddings
    torch.testing.assert_close(run(merged, "gpt2"), before, atol=1e-5, rtol=1e-4)
    merged.save_pretrained(tmp_path)
    torch.testing.assert_close(run(AutoModelForCausalLM.from_pretrained(tmp_path).eval(), "gpt2"), before,
                               atol=1e-5, rtol=1e-4)


def test_llama_targets_on_roberta_are_refused_naming_its_default_targets():
    from rankmix.errors import ConfigError

    with pytest.raises(ConfigError, match=r"default targets are query, value \(method.target_modules=\[\] uses them\)"):
        inject(roberta(), {"name": "smora", "r": 8, "k": 2, "target_modules": ["q_proj", "v_proj"]})
    assert len(inject(roberta(), {"name": "smora", "r": 8, "k": 2, "target_modules": []}).wrapped) == 4
