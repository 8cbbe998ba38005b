"""Omni-SMoLA layer: Fig. 5 pseudo-code, padding, modality blocks, causal refusal, gradients, config errors."""

import pytest
import torch
from torch import nn

import rankmix.adapters.smola  # noqa: F401  (registers "smola")
from rankmix.adapters import adapter_context, build, inject
from rankmix.errors import ConfigError, NotMergeableError

BLOCK_PARAMS = ("routing_mat", "routing_scale", "smola_left", "smola_right")


def normalize(v, dim):
    return v * torch.rsqrt((v * v).sum(dim, keepdim=True) + 1e-6)


def reference(x, routing_mat, routing_scale, smola_left, smola_right):
    """Fig. 5 of Omni-SMoLA, unmasked, for x (B, L, d_in)."""
    routing = normalize(routing_mat, 0) * routing_scale
    logits = torch.einsum("BLd,dE->BLE", normalize(x, -1), routing)
    dispatcher, combiner = logits.softmax(dim=1), logits.softmax(dim=2)
    routed_input = torch.einsum("BLd,BLE->BEd", x, dispatcher)
    lowrank = torch.einsum("BEd,dEr->BEr", routed_input, smola_left)
    routed_output = torch.einsum("BEr,Erd->BEd", lowrank, smola_right)
    return torch.einsum("BEd,BLE->BLd", routed_output, combiner)


def block_weights(module):
    return [getattr(module, n) for n in BLOCK_PARAMS]


def reference_on_subset(x, mask, module):
    """The block on each sequence's selected tokens alone, scattered back; zero elsewhere."""
    out = torch.zeros(*x.shape[:2], module.smola_right.shape[-1])
    for b in range(x.shape[0]):
        if mask[b].any():
            out[b, mask[b]] = reference(x[b : b + 1, mask[b]], *block_weights(module))[0]
    return out


def trained(layer):
    """Non-zero smola_right (and a non-unit routing scale) in every block, as after some training."""
    with torch.no_grad():
        for name, p in layer.named_parameters():
            if name.endswith("smola_right"):
                p.normal_()
            elif name.endswith("routing_scale"):
                p.fill_(3.0)
    return layer


def test_parameter_names_shapes_and_init():
    layer = build("smola", nn.Linear(16, 12), num_experts=3, r=2)
    shapes = {n: tuple(p.shape) for n, p in layer.named_parameters() if p.requires_grad}
    assert shapes == {"routing_mat": (16, 3), "routing_scale": (1,), "smola_left": (16, 3, 2), "smola_right": (3, 2, 12)}
    assert layer.routing_scale.item() == 1.0 and not layer.smola_right.any()
    assert 0.15 < layer.smola_left.std().item() < 0.35  # ≈ 1/sqrt(16)
    assert layer.activated_parameters() == layer.trainable_parameters() == 16 * 3 + 1 + 16 * 3 * 2 + 3 * 2 * 12
    assert "variant=mm, num_experts=3, r=2" in repr(layer)
    with pytest.raises(NotMergeableError):
        layer.merge()


def test_output_matches_pseudo_code():
    torch.manual_seed(0)
    base = nn.Linear(16, 12)
    layer = trained(build("smola", base, num_experts=3, r=2))
    x = torch.randn(2, 7, 16)
    expected = base(x) + reference(x, *block_weights(layer))
    torch.testing.assert_close(layer(x), expected)
    torch.testing.assert_close(layer(x[0]), expected[0])  # (L, d_in) is one sequence


def test_starts_equal_to_base_layer():
    base = nn.Linear(16, 12)
    layer = build("smola", base, variant="o")
    x = torch.randn(2, 5, 16)
    masks = {"text": torch.ones(2, 5, dtype=torch.bool), "vision": torch.zeros(2, 5, dtype=torch.bool)}
    with adapter_context(layer, modality_masks=masks):
        torch.testing.assert_close(layer(x), base(x))


def test_padding_is_left_out():
    torch.manual_seed(1)
    layer = trained(build("smola", nn.Linear(16, 12), num_experts=4, r=3))
    lengths = [6, 3, 0]
    mask = torch.arange(6) < torch.tensor(lengths)[:, None]
    x = torch.randn(3, 6, 16)
    x_other = torch.where(mask[..., None], x, 100 * torch.randn_like(x))  # new values at padded positions only
    with adapter_context(layer, attention_mask=mask.long()):
        delta, delta_other = layer.delta(x), layer.delta(x_other)
    assert torch.isfinite(delta).all()
    assert (delta[~mask] == 0).all()
    torch.testing.assert_close(delta_other, delta)
    torch.testing.assert_close(delta, reference_on_subset(x, mask, layer))
    torch.testing.assert_close(layer.last_routing["mm"]["combine_mass"].sum(), torch.tensor(1.0))


def test_o_variant_sums_three_modality_blocks():
    torch.manual_seed(2)
    layer = trained(build("smola", nn.Linear(16, 12), num_experts=2, r=2, variant="o"))
    assert {n for n, _ in layer.named_parameters() if not n.startswith("base_layer.")} == {
        f"{prefix}{n}" for prefix in ("", "text.", "vision.") for n in BLOCK_PARAMS}
    x = torch.randn(2, 8, 16)
    real = torch.tensor([[1] * 8, [1] * 5 + [0] * 3], dtype=torch.bool)
    text = torch.tensor([[1, 1, 1, 0, 0, 0, 0, 1], [0, 0, 1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    vision = ~text
    expected = (reference_on_subset(x, real & text, layer.text) + reference_on_subset(x, real & vision, layer.vision)
                + reference_on_subset(x, real, layer))
    with adapter_context(layer, attention_mask=real, modality_masks={"text": text, "vision": vision.int()}):
        torch.testing.assert_close(layer.delta(x), expected)
    assert set(layer.last_routing) == {"text", "vision", "mm"}
    assert layer.activated_parameters() == 2 * layer.trainable_parameters() // 3
    with pytest.raises(RuntimeError, match=r"adapter_context\(model, modality_masks="):
        layer(x)


def test_phi_gram_is_cosine_similarity_of_experts():
    layer = build("smola", nn.Linear(16, 12), num_experts=3)
    with torch.no_grad():
        layer.routing_mat.copy_(torch.eye(16)[:, :3] * torch.tensor([2.0, 5.0, 7.0]))
        layer.routing_mat[0, 1] = 5.0
    gram = layer.phi_gram()
    expected = torch.tensor([[1, 0.5 ** 0.5, 0], [0.5 ** 0.5, 1, 0], [0, 0, 1]])
    torch.testing.assert_close(gram, expected, atol=1e-6, rtol=0)


def test_refuses_causal_decoder_unless_allowed(tiny_llama):
    with pytest.raises(ConfigError, match="future tokens") as e:
        inject(tiny_llama, {"name": "smola", "target_modules": ["q_proj"]})
    assert e.value.key == "method.allow_causal"
    report = inject(tiny_llama, {"name": "smola", "target_modules": ["q_proj"], "allow_causal": True})
    assert len(report.wrapped) == 2
    assert tiny_llama(torch.randint(0, 32, (2, 5))).logits.shape == (2, 5, 32)


def test_refuses_decoder_of_encoder_decoder():
    model = nn.Module()
    model.encoder, model.decoder = nn.Module(), nn.Module()
    model.encoder.q_proj, model.decoder.q_proj = nn.Linear(8, 8), nn.Linear(8, 8)
    with pytest.raises(ConfigError, match="decoder.q_proj is in a causal decoder"):
        inject(model, {"name": "smola", "target_modules": ["q_proj"]})
    assert inject(model, {"name": "smola", "target_modules": ["encoder.q_proj"]}).wrapped == ["encoder.q_proj"]


def test_injects_into_roberta_encoder():
    from transformers import RobertaConfig, RobertaModel

    torch.manual_seed(3)
    model = RobertaModel(RobertaConfig(vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                       intermediate_size=32, max_position_embeddings=24)).eval()
    report = inject(model, {"name": "smola", "target_modules": ["query", "value"], "num_experts": 2, "r": 2})
    assert len(report.wrapped) == 4
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert len(trainable) == 4 * 4 and all(n.rsplit(".", 1)[-1] in BLOCK_PARAMS for n in trainable)
    ids, mask = torch.randint(3, 40, (2, 6)), torch.tensor([[1] * 6, [1] * 4 + [0] * 2])
    with adapter_context(model, attention_mask=mask):
        assert model(input_ids=ids, attention_mask=mask).last_hidden_state.shape == (2, 6, 16)


@pytest.mark.parametrize("variant", ["mm", "o"])
def test_gradients_reach_every_parameter(variant):
    torch.manual_seed(4)
    layer = trained(build("smola", nn.Linear(16, 12), num_experts=3, r=2, variant=variant))
    x = torch.randn(2, 6, 16)
    text = torch.tensor([[1, 1, 0, 0, 1, 0]] * 2, dtype=torch.bool)
    with adapter_context(layer, modality_masks={"text": text, "vision": ~text}):
        layer(x).pow(2).sum().backward()
    grads = {n: p.grad for n, p in layer.named_parameters() if p.requires_grad}
    assert len(grads) == (4 if variant == "mm" else 12)
    for name, grad in grads.items():
        assert grad is not None and grad.abs().sum() > 0, name


@pytest.mark.parametrize(("cfg", "key"), [
    ({"num_experts": 0}, "method.num_experts"), ({"num_experts": 2.5}, "method.num_experts"),
    ({"r": -1}, "method.r"), ({"r": True}, "method.r"), ({"variant": "text"}, "method.variant"),
    ({"allow_causal": "yes"}, "method.allow_causal"), ({"experts": 4}, "method.experts"),
])
def test_bad_options_name_the_key(cfg, key):
    with pytest.raises(ConfigError) as e:
        build("smola", nn.Linear(4, 4), **cfg)
    assert e.value.key == key
    if key == "method.variant":
        assert "mm, o" in str(e.value)


def test_routing_stats_are_plain_lists():
    import torch
    from torch import nn

    from rankmix.adapters import build

    layer = build("smola", nn.Linear(8, 6), num_experts=3, r=2)
    layer(torch.randn(2, 5, 8))
    stats = layer.routing_stats()["mm"]
    assert len(stats["phi_gram"]) == 3 and abs(sum(stats["combine_mass"]) - 1.0) < 1e-5
    layer.reset_routing_stats()
    assert "combine_mass" not in layer.routing_stats()["mm"]
