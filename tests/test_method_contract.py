"""The contract every registered method keeps, one matrix over ``method_names()`` (a new method is picked up by
registering its class and adding its yaml): its yaml mirrors the options its class declares; with those defaults,
on a tiny non-causal encoder (which every method may wrap), it starts as the base model, gradients reach exactly
its trainable parameters, its router reports statistics if and only if it routes, it merges and unmerges
exactly where it declares itself mergeable (and refuses otherwise), its saved adapter loads back exactly, and it
exports to peft and loads back exactly where it declares a ``peft_export`` (and refuses otherwise); and one CPU
training step on a tiny backbone of each family (Llama, GPT-2, BART, ViT, RoBERTa) wherever it accepts the
architecture's default layers."""

from __future__ import annotations

import pytest
import torch
import yaml
from transformers import (
    BartConfig,
    BartForConditionalGeneration,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    RobertaConfig,
    RobertaModel,
    ViTConfig,
    ViTModel,
)

from conftest import REPO
from rankmix.adapters import (
    adapter_context,
    adapter_layers,
    adapter_state_dict,
    export_peft,
    get_method,
    inject,
    load_adapter,
    merge_adapters,
    merge_and_unload,
    method_names,
    save_adapter,
    unmerge_adapters,
)
from rankmix.adapters.base import AdapterLayer
from rankmix.adapters.inject import INJECTION_KEYS
from rankmix.adapters.registry import FROZEN, method_defaults
from rankmix.errors import ConfigError, NotMergeableError, RankmixError

HIDDEN, VOCAB, BATCH, LENGTH = 16, 40, 4, 6
SMALL = dict(hidden_size=HIDDEN, num_hidden_layers=1, num_attention_heads=2, intermediate_size=24)
METHODS = method_names()
LAYERED = [n for n in METHODS if n != FROZEN and issubclass(get_method(n), AdapterLayer)]


def encoder() -> RobertaModel:
    torch.manual_seed(0)
    return RobertaModel(RobertaConfig(vocab_size=VOCAB, max_position_embeddings=LENGTH + 4, **SMALL)).eval()


def context() -> dict:
    """Every per-call input a method may read (``required_context``): padding in one row, the visual vector x_R,
    one task per example (all four of multi_adapter's default tasks), the modality masks."""
    g = torch.Generator().manual_seed(1)
    mask = torch.ones(BATCH, LENGTH, dtype=torch.long)
    mask[0, -2:] = 0
    vision = torch.zeros(BATCH, LENGTH, dtype=torch.bool)
    vision[:, 1:3] = True
    return {"attention_mask": mask, "x_r": torch.randn(BATCH, HIDDEN, generator=g), "task_ids": torch.arange(BATCH),
            "modality_masks": {"vision": vision, "text": ~vision}}


IDS = torch.randint(3, VOCAB, (BATCH, LENGTH), generator=torch.Generator().manual_seed(2))


def outputs(model) -> torch.Tensor:
    ctx = context()
    with adapter_context(model, **ctx):
        return model(input_ids=IDS, attention_mask=ctx["attention_mask"]).last_hidden_state


def injected(name: str):
    """The encoder with ``name`` injected at its declared defaults on the architecture's default layers."""
    model = encoder()
    inject(model, {"name": name, "target_modules": []})
    return model.eval()   # the new layers too: no dropout, top-1 routing by argmax, no balancing-bias updates


def move_off_init(model) -> None:
    """Every trainable weight and floating adapter buffer away from its init (zero up-projections hide a lot)."""
    torch.manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.3 * torch.randn_like(p))
        for layer in adapter_layers(model).values():
            for name, b in layer.named_buffers():
                if name in layer.adapter_state_dict() and b.is_floating_point():
                    b.add_(0.01 * torch.randn_like(b))


def test_every_method_has_a_yaml_mirroring_its_declared_defaults():
    """Each default is written once, in the class, and the yaml (what ``--cfg job`` shows) holds the same value; an
    option the yaml leaves out defaults to unset (None)."""
    for name in METHODS:
        declared = yaml.safe_load((REPO / "conf" / "method" / f"{name}.yaml").read_text())
        assert declared["name"] == name
        options = {k: v for k, v in declared.items() if k not in INJECTION_KEYS}
        defaults = method_defaults(name)
        for key, value in options.items():
            default = defaults[key]
            default = list(default) if isinstance(default, tuple) else ({} if default is None and value == {} else default)
            assert default == value, f"{name}.{key}: declared {defaults[key]!r}, yaml {value!r}"
        assert all(defaults[k] is None for k in set(defaults) - set(options)), name


@pytest.mark.parametrize("name", METHODS)
def test_starts_as_the_base_and_trains_exactly_its_own_parameters(name):
    base = outputs(encoder())
    model = injected(name)
    torch.testing.assert_close(outputs(model), base)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable <= set(adapter_state_dict(model))
    if name == FROZEN:
        assert not trainable
        return
    move_off_init(model)
    model.train()
    outputs(model).pow(2).mean().backward()
    got = {n for n, p in model.named_parameters() if p.grad is not None}
    assert got == trainable
    assert any(p.grad.abs().sum() > 0 for n, p in model.named_parameters() if n in got)


@pytest.mark.parametrize("name", LAYERED)
def test_reports_routing_statistics_exactly_when_it_routes(name):
    model = injected(name)
    outputs(model)
    layers = adapter_layers(model).values()
    assert layers and all(bool(layer.routing_stats()) == get_method(name).routes() for layer in layers)


@pytest.mark.parametrize("name", LAYERED)
def test_merges_exactly_when_mergeable(name):
    model = injected(name)
    move_off_init(model)
    before, weights = outputs(model), {k: v.clone() for k, v in model.state_dict().items()}
    if not all(layer.mergeable for layer in adapter_layers(model).values()):
        with pytest.raises(NotMergeableError):
            merge_and_unload(model)
        assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())
        return
    merge_adapters(model)
    torch.testing.assert_close(outputs(model), before)
    unmerge_adapters(model)
    assert all(torch.allclose(v, weights[k], atol=1e-6) for k, v in model.state_dict().items())
    merge_and_unload(model)
    assert not adapter_layers(model)
    torch.testing.assert_close(outputs(model), before)


@pytest.mark.parametrize("name", METHODS)
def test_saved_adapter_loads_back_exactly(tmp_path, name):
    model = injected(name)
    move_off_init(model)
    save_adapter(model, tmp_path, {"name": name, "target_modules": []})
    again = injected(name)
    load_adapter(again, tmp_path)
    torch.testing.assert_close(outputs(again), outputs(model), rtol=0, atol=0)


@pytest.mark.parametrize("name", [n for n in METHODS if n != FROZEN])
def test_peft_export_loads_back_exactly_where_declared(tmp_path, name):
    import rankmix.peft

    model = injected(name)
    move_off_init(model)
    if get_method(name).peft_export is None:
        with pytest.raises(RankmixError, match="peft export supports"):
            export_peft(model, tmp_path)
        return
    export_peft(model, tmp_path)
    loaded = rankmix.peft.from_pretrained(encoder(), tmp_path)
    torch.testing.assert_close(outputs(loaded), outputs(model))


def llama():
    """Every layer HIDDEN wide in and out (x_R fits each layer a routing method wraps: the default is all of them)."""
    return LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, num_key_value_heads=2, max_position_embeddings=16,
                                        **{**SMALL, "intermediate_size": HIDDEN}))


def gpt2():
    return GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_positions=16, n_embd=HIDDEN, n_layer=1, n_head=2))


def bart():
    return BartForConditionalGeneration(BartConfig(
        vocab_size=VOCAB, d_model=HIDDEN, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=24, decoder_ffn_dim=24, max_position_embeddings=16))


def vit():
    return ViTModel(ViTConfig(image_size=8, patch_size=4, num_channels=3, **SMALL))


def loss(model, family: str) -> torch.Tensor:
    ctx = context()
    with adapter_context(model, **{**ctx, "attention_mask": None} if family == "vit" else ctx):  # no padding in images
        if family == "vit":
            return model(pixel_values=torch.randn(BATCH, 3, 8, 8)).last_hidden_state.pow(2).mean()
        if family == "roberta":
            return model(input_ids=IDS, attention_mask=ctx["attention_mask"]).last_hidden_state.pow(2).mean()
        return model(input_ids=IDS, attention_mask=ctx["attention_mask"], labels=IDS).loss


FAMILIES = {"llama": llama, "gpt2": gpt2, "bart": bart, "vit": vit, "roberta": encoder}


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("name", [n for n in METHODS if n != FROZEN])
def test_one_training_step_on_each_family(name, family):
    torch.manual_seed(0)
    model = FAMILIES[family]().train()
    try:
        inject(model, {"name": name, "target_modules": []})
    except (ConfigError, TypeError) as e:   # refused: SMoLA in a causal decoder, peft's LoHa/LoKr on GPT-2's Conv1D
        assert "allow_causal" in str(e) or "Conv1D'> not supported" in str(e)
        pytest.skip(str(e))
    move_off_init(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-2)
    value = loss(model, family)
    value.backward()
    optimizer.step()
    assert torch.isfinite(value)
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and changed <= {n for n, p in model.named_parameters() if p.requires_grad}
