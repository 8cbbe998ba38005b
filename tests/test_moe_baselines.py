"""LoRA-MoE (top-1 / top-k / soft), SMEAR and HydraLoRA against their formulas (SMoRA App. E)."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rankmix.adapters import build
from rankmix.errors import ConfigError


def _trained(layer, attr="experts_B"):
    with torch.no_grad():
        getattr(layer, attr).normal_()
    return layer


def _expert_outputs(layer, x):
    """B_e A_e x for every expert, T × E × d_out, written out."""
    return torch.stack([x @ layer.experts_A[e].T @ layer.experts_B[e].T for e in range(layer.num_experts)], 1)


def test_top1_eval_takes_the_argmax_expert_with_weight_one():
    torch.manual_seed(0)
    layer = _trained(build("lora_moe", nn.Linear(16, 12), num_experts=4, r=2, alpha=4, routing="top1")).eval()
    x = torch.randn(6, 16)
    best = layer.router(x).argmax(-1)
    expected = layer.base_layer(x) + 2.0 * _expert_outputs(layer, x)[torch.arange(6), best]
    torch.testing.assert_close(layer(x), expected)


def test_top1_training_is_a_dense_soft_mixture():
    torch.manual_seed(1)
    layer = build("lora_moe", nn.Linear(16, 12), num_experts=4, r=2, routing="top1").train()
    w = layer.gate_weights(torch.randn(50, 16), torch.randn(50, 16))
    torch.testing.assert_close(w.sum(-1), torch.ones(50))
    assert ((w > 0) & (w < 1)).any()


@pytest.mark.parametrize(("routing", "k"), [("top2", 2), ("topk", 3)])
def test_topk_is_softmax_topk_renormalised(routing, k):
    torch.manual_seed(2)
    layer = _trained(build("lora_moe", nn.Linear(16, 12), num_experts=5, r=2, alpha=2, routing=routing, k=k))
    x = torch.randn(7, 16)
    probs = F.softmax(x @ layer.router.weight.T, -1)
    top, idx = probs.topk(k, -1)
    g = top / top.sum(-1, keepdim=True)
    outs = _expert_outputs(layer, x)
    expected = torch.stack([sum(g[t, j] * outs[t, idx[t, j]] for j in range(k)) for t in range(7)])
    torch.testing.assert_close(layer(x), layer.base_layer(x) + expected, atol=1e-5, rtol=1e-5)


def test_soft_is_the_dense_softmax_mixture():
    torch.manual_seed(3)
    layer = _trained(build("lora_moe", nn.Linear(16, 12), num_experts=3, r=2, alpha=2, routing="soft"))
    x = torch.randn(4, 16)
    g = F.softmax(x @ layer.router.weight.T, -1)
    expected = (g.unsqueeze(-1) * _expert_outputs(layer, x)).sum(1)
    torch.testing.assert_close(layer(x), layer.base_layer(x) + expected, atol=1e-5, rtol=1e-5)


def test_smear_merges_parameters_per_token():
    torch.manual_seed(4)
    layer = _trained(build("smear", nn.Linear(16, 12), num_experts=3, r=2, alpha=2))
    x = torch.randn(5, 16)
    g = F.softmax(x @ layer.router.weight.T, -1)
    expected = []
    for t in range(5):
        A = torch.einsum("e,erd->rd", g[t], layer.experts_A)
        B = torch.einsum("e,eor->or", g[t], layer.experts_B)
        expected.append(B @ A @ x[t])
    torch.testing.assert_close(layer(x), layer.base_layer(x) + torch.stack(expected), atol=1e-5, rtol=1e-5)


def test_hydralora_heads_share_a():
    torch.manual_seed(5)
    layer = _trained(build("hydralora", nn.Linear(16, 12), r=4, num_experts=3, alpha=8), "lora_B")
    x = torch.randn(2, 5, 16)
    g = F.softmax(x @ layer.router.weight.T, -1)
    h = x @ layer.lora_A.weight.T
    expected = 2.0 * sum(g[..., i:i + 1] * (h @ layer.lora_B[i].T) for i in range(3))
    torch.testing.assert_close(layer(x), layer.base_layer(x) + expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["lora_moe", "smear", "hydralora"])
def test_start_equal_to_base(name):
    base = nn.Linear(16, 12)
    x = torch.randn(3, 16)
    torch.testing.assert_close(build(name, base).eval()(x), base(x))


def test_lora_moe_bad_config():
    with pytest.raises(ConfigError, match="routing='top3'"):
        build("lora_moe", nn.Linear(4, 4), routing="top3")
    with pytest.raises(ConfigError) as e:
        build("lora_moe", nn.Linear(4, 4), num_experts=2, routing="topk", k=3)
    assert e.value.key == "method.k"
