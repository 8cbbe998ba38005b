"""Routing functions (Qu et al., ECCV 2024): each formula, x_v pooling and broadcast, the LoRA/Adapter bases,
separate mapping, the cross-attention baseline, the x_r context, injection into GPT-2 and RoBERTa, config errors."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel, RobertaConfig, RobertaModel

import rankmix.adapters.routing  # noqa: F401  (registers "routing")
from conftest import randomize
from rankmix.adapters import adapter_context, build, inject
from rankmix.adapters.routing import routing_context
from rankmix.errors import ConfigError, NotMergeableError

FNS = ("mul", "add", "proj", "matmul", "proj_relu")


def paper_route(fn, xt, xv):
    """§3 and Tab. 6 in matrix form: xt (B, L, r), xv (B, 1, r) the pooled visual token."""
    r = xt.shape[-1]
    if fn == "mul":
        return xt * xv  # x_t ∘ x_v', x_v' = 1ᵀ x_v repeats x_v for every token
    if fn == "add":
        return xt + xv
    if fn == "proj":
        return xt @ xv.transpose(1, 2) @ xv
    if fn == "matmul":
        return xt @ (torch.ones(r, 1) @ xv)  # x_v'': the r×r matrix whose rows are all x_v
    if fn == "proj_relu":
        return xt.relu() @ xv.relu().transpose(1, 2) @ xv
    raise AssertionError(fn)


def run(layer, x, x_r):
    with adapter_context(layer, x_r=x_r):
        return layer(x)


@pytest.mark.parametrize("fn", FNS)
@pytest.mark.parametrize("lv", [None, 1, 3])
def test_lora_base_matches_formula(fn, lv):
    torch.manual_seed(0)
    base = nn.Linear(16, 12)
    layer = randomize(build("routing", base, fn=fn, r=4, alpha=8))
    x = torch.randn(2, 5, 16)
    x_r = torch.randn(2, 16) if lv is None else torch.randn(2, lv, 16)
    A, B = layer.lora_A.weight, layer.lora_B.weight
    xt = x @ A.T
    xv = (x_r.reshape(2, -1, 16) @ A.T).mean(1, keepdim=True)  # several tokens: mean after A
    expected = base(x) + (8 / 4) * paper_route(fn, xt, xv) @ B.T
    torch.testing.assert_close(run(layer, x, x_r), expected)


def test_hand_computed_values():
    """r=2 with A = B = I: x_t = x, x_v = x_R, Δ = route(x, x_R)."""
    base = nn.Linear(2, 2)
    nn.init.zeros_(base.weight)
    nn.init.zeros_(base.bias)
    x, x_r = torch.tensor([[1.0, -2.0]]), torch.tensor([[3.0, 5.0]])
    expected = {"mul": [3.0, -10.0], "add": [4.0, 3.0], "proj": [-21.0, -35.0],  # x·x_v = 3 − 10 = −7
                "matmul": [-3.0, -5.0],  # (1 − 2) · x_v: the sum of x_t's entries times x_v
                "proj_relu": [9.0, 15.0]}  # ReLU(x_t)·ReLU(x_v) = 1·3 + 0·5 = 3
    for fn, want in expected.items():
        layer = build("routing", base, fn=fn, r=2)
        with torch.no_grad():
            layer.lora_A.weight.copy_(torch.eye(2))
            layer.lora_B.weight.copy_(torch.eye(2))
        torch.testing.assert_close(run(layer, x, x_r), torch.tensor([want]), msg=fn)


def test_matmul_broadcasts_x_v_over_rows_not_a_reshape():
    torch.manual_seed(1)
    layer = randomize(build("routing", nn.Linear(8, 8), fn="matmul", r=4))
    x, x_r = torch.randn(3, 2, 8), torch.randn(3, 8)
    delta = run(layer, x, x_r) - layer.base_layer(x)
    xt, xv = x @ layer.lora_A.weight.T, (x_r @ layer.lora_A.weight.T).unsqueeze(1)
    routed = xt.sum(-1, keepdim=True) * xv  # each token: x_v scaled by the sum of its own features
    torch.testing.assert_close(delta, routed @ layer.lora_B.weight.T)
    # every token's routed vector is parallel to x_v
    torch.testing.assert_close(F.cosine_similarity(routed, xv, dim=-1).abs(), torch.ones(3, 2))


def test_none_is_plain_lora_and_merges():
    torch.manual_seed(2)
    base = nn.Linear(16, 12)
    layer = randomize(build("routing", base, fn="none", r=4, alpha=4))
    x = torch.randn(3, 16)
    expected = base(x) + x @ layer.lora_A.weight.T @ layer.lora_B.weight.T
    torch.testing.assert_close(layer(x), expected)  # no x_r needed
    layer.merge()
    torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("cfg", [{"fn": "proj"}, {"fn": "none", "base": "adapter"}])
def test_routed_or_adapter_layers_do_not_merge(cfg):
    with pytest.raises(NotMergeableError):
        build("routing", nn.Linear(8, 8), r=4, **cfg).merge()


@pytest.mark.parametrize("fn", [*FNS, "cross_attention"])
@pytest.mark.parametrize("base", ["lora", "adapter", "parallel_adapter"])
def test_starts_equal_to_base(fn, base):
    torch.manual_seed(3)
    lin = nn.Linear(8, 8)
    layer = build("routing", lin, fn=fn, base=base, r=4)
    x, x_r = torch.randn(2, 3, 8), torch.randn(2, 4, 8)
    torch.testing.assert_close(run(layer, x, x_r), lin(x))


def test_lora_parameters_and_init():
    layer = build("routing", nn.Linear(16, 12), fn="proj", r=4)
    assert {n for n, p in layer.named_parameters() if p.requires_grad} == {"lora_A.weight", "lora_B.weight"}
    assert layer.lora_A.weight.shape == (4, 16) and layer.lora_B.weight.shape == (12, 4)
    assert not layer.lora_B.weight.any() and layer.lora_A.weight.abs().max() <= 1 / math.sqrt(16)
    assert layer.scaling == 1.0  # alpha defaults to r


def test_missing_x_r_is_a_clear_error():
    layer = build("routing", nn.Linear(8, 8), fn="mul", r=4)
    with pytest.raises(RuntimeError, match=r"rankmix\.adapters\.adapter_context\(model, x_r="):
        layer(torch.randn(2, 8))


def test_x_r_of_wrong_shape_is_a_clear_error():
    layer = build("routing", nn.Linear(8, 8), fn="mul", r=4)
    with pytest.raises(RuntimeError, match=r"x_r has shape \(3, 8\).*B=2 and d=8"):
        run(layer, torch.randn(2, 5, 8), torch.randn(3, 8))


def test_routing_context_sets_and_restores_x_r():
    torch.manual_seed(4)
    model = nn.Sequential(build("routing", nn.Linear(8, 8), fn="add", r=4))
    randomize(model[0])
    x, x_r = torch.randn(2, 8), torch.randn(2, 8)
    with routing_context(model, x_r):
        out = model(x)
    assert "x_r" not in model[0].context
    torch.testing.assert_close(out, run(model[0], x, x_r))


@pytest.mark.parametrize("fn", ["mul", "proj"])
def test_adapter_base_matches_formula(fn):
    torch.manual_seed(5)
    base = nn.Linear(16, 8)
    layer = randomize(build("routing", base, fn=fn, base="adapter", r=4, activation="relu"))
    x, x_r = torch.randn(2, 3, 16), torch.randn(2, 4, 8)  # x_R has the width of the adapter input h = W0 x
    h = base(x)
    down, up = layer.adapter_down, layer.adapter_up
    xv = down(x_r).mean(1, keepdim=True)
    expected = h + up(torch.relu(paper_route(fn, down(h), xv)))
    torch.testing.assert_close(run(layer, x, x_r), expected)


def test_parallel_adapter_base_matches_formula():
    torch.manual_seed(6)
    base = nn.Linear(16, 8)
    layer = randomize(build("routing", base, fn="matmul", base="parallel_adapter", r=4, scale=0.5))
    x, x_r = torch.randn(2, 3, 16), torch.randn(2, 16)
    down, up = layer.adapter_down, layer.adapter_up
    expected = base(x) + 0.5 * up(F.gelu(paper_route("matmul", down(x), down(x_r).unsqueeze(1))))
    torch.testing.assert_close(run(layer, x, x_r), expected)


def test_separate_mapping_lora():
    """App. A, Fig. A7 (d): x_H and x_R get their own d → r/4 maps, then r/4 → r → d."""
    torch.manual_seed(7)
    base = nn.Linear(16, 12)
    layer = randomize(build("routing", base, fn="proj", r=8, separate_mapping=True))
    shapes = {n: tuple(p.shape) for n, p in layer.named_parameters() if p.requires_grad}
    assert shapes == {"lora_A.weight": (2, 16), "route_down.weight": (2, 16), "route_up.weight": (8, 2),
                      "lora_B.weight": (12, 8)}
    x, x_r = torch.randn(2, 3, 16), torch.randn(2, 5, 16)
    xt = x @ layer.lora_A.weight.T
    xv = (x_r @ layer.route_down.weight.T).mean(1, keepdim=True)
    expected = base(x) + paper_route("proj", xt, xv) @ layer.route_up.weight.T @ layer.lora_B.weight.T
    torch.testing.assert_close(run(layer, x, x_r), expected)


@pytest.mark.parametrize("separate", [False, True])
def test_cross_attention_baseline(separate):
    """App. B: softmax(W_Q x_H (W_K x_R)ᵀ / √m) W_V x_R over the unpooled visual tokens."""
    torch.manual_seed(8)
    base = nn.Linear(16, 12)
    layer = randomize(build("routing", base, fn="cross_attention", r=8, separate_mapping=separate))
    x, x_r = torch.randn(2, 3, 16), torch.randn(2, 5, 16)
    q, k, v = x @ layer.lora_A.weight.T, layer.xattn_key(x_r), layer.xattn_value(x_r)
    m = q.shape[-1]
    assert m == (2 if separate else 8)
    z = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(m), dim=-1) @ v
    if separate:
        z = z @ layer.route_up.weight.T
    torch.testing.assert_close(run(layer, x, x_r), base(x) + z @ layer.lora_B.weight.T)
    # not pooled: the visual tokens are attended separately (pooling them first gives another result)
    assert not torch.allclose(run(layer, x, x_r), run(layer, x, x_r.mean(1)))


def tiny_gpt2():
    torch.manual_seed(9)
    return GPT2LMHeadModel(GPT2Config(vocab_size=40, n_positions=16, n_embd=32, n_layer=2, n_head=4))


def tiny_roberta():
    torch.manual_seed(10)
    return RobertaModel(RobertaConfig(vocab_size=40, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                      intermediate_size=64, max_position_embeddings=40))


def check_training_step(model, targets, method_cfg, names, output_of):
    """Inject, run inside adapter_context(x_r=...), backprop: only adapter weights train and all get gradients."""
    report = inject(model, {"name": "routing", "target_modules": targets, **method_cfg})
    assert len(report.wrapped) == 2 * len(targets)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(n.rsplit(".", 2)[-2] in names for n in trainable)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(0, 0.1)
    ids = torch.randint(0, 40, (2, 6))
    with adapter_context(model, x_r=torch.randn(2, 3, 32)):
        out = output_of(model(input_ids=ids))
    (out * torch.randn_like(out)).sum().backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert all(g is not None and g.abs().sum() > 0 for g in grads.values())
    assert all(p.grad is None for p in model.parameters() if not p.requires_grad)
    with torch.no_grad(), adapter_context(model, x_r=torch.randn(2, 3, 32)):
        assert not torch.allclose(output_of(model(input_ids=ids)), out)  # the output depends on x_R


def test_inject_into_gpt2_conv1d():
    check_training_step(tiny_gpt2(), ["c_attn"], {"fn": "proj", "r": 4}, {"lora_A", "lora_B"},
                        lambda out: out.logits)


def test_inject_into_roberta():
    check_training_step(tiny_roberta(), ["query", "value"], {"fn": "proj", "r": 4}, {"lora_A", "lora_B"},
                        lambda out: out.last_hidden_state)


def test_adapter_base_on_gpt2_sublayer_outputs():
    check_training_step(tiny_gpt2(), ["attn.c_proj", "mlp.c_proj"],
                        {"fn": "matmul", "base": "adapter", "r": 4, "activation": "gelu_new"},
                        {"adapter_down", "adapter_up"}, lambda out: out.logits)


@pytest.mark.parametrize(("cfg", "key"), [
    ({"fn": "dot"}, "method.fn"), ({"fn": "mul", "base": "prefix"}, "method.base"),
    ({"fn": "mul", "r": 0}, "method.r"), ({"fn": "mul", "r": 2.5}, "method.r"),
    ({"fn": "mul", "separate_mapping": True, "r": 6}, "method.r"),
    ({"fn": "mul", "separate_mapping": "yes"}, "method.separate_mapping"),
    ({"fn": "none", "separate_mapping": True}, "method.separate_mapping"),
    ({"fn": "mul", "base": "adapter", "activation": "tanh"}, "method.activation"),
    ({"fn": "mul", "activation": "tanh"}, "method.activation"), ({"fn": "mul", "init": "zeros"}, "method.init"),
    ({"fn": "mul", "base": "adapter", "init": "zeros"}, "method.init"),
    ({"fn": "mul", "dropout": 1.5}, "method.dropout"), ({"fn": "mul", "alpha": "big"}, "method.alpha"),
    ({"fn": "mul", "base": "parallel_adapter", "scale": None}, "method.scale"),
    ({"fn": "mul", "rank": 4}, "method.rank"),
])
def test_bad_options_name_the_key(cfg, key):
    with pytest.raises(ConfigError) as e:
        build("routing", nn.Linear(8, 8), **cfg)
    assert e.value.key == key


def test_unknown_fn_lists_the_allowed_ones():
    with pytest.raises(ConfigError, match="none, mul, add, proj, matmul, proj_relu, cross_attention"):
        build("routing", nn.Linear(8, 8), fn="dot")
