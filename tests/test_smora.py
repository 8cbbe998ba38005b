"""SMoRA against its equations (SMoRA Eq. 4-7), its backends, Property 1.1 and loss-free balancing."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rankmix.adapters import adapter_context, build
from rankmix.errors import ConfigError, NotMergeableError


def _smora(r=8, k=2, seed=0, **kw):
    torch.manual_seed(seed)
    layer = build("smora", nn.Linear(16, 12), r=r, k=k, alpha=16, **kw)
    with torch.no_grad():
        layer.lora_B.weight.normal_()
        layer.router_bias.normal_(std=0.05)
    return layer


def _reference(layer, x, gate):
    """Eq. 4 token by token, written out: y = W0 x + s Σ_{i ∈ top-k} g_i B[:, i] (A_i · x)."""
    A, B, Wg, b = layer.lora_A.weight, layer.lora_B.weight, layer.router.weight, layer.router_bias
    out = []
    for t in x:
        if gate == "sigmoid":
            s = torch.sigmoid(Wg @ t) + b
            top, idx = s.topk(layer.k)
            g, scale = top / top.sum() * layer.k, 16 / layer.k
        else:
            top, idx = (Wg @ t + b).topk(layer.k)
            g, scale = F.softmax(top, -1), 16 / layer.r
        out.append(scale * sum(g[j] * B[:, i] * (A[i] @ t) for j, i in enumerate(idx)))
    return layer.base_layer(x) + torch.stack(out)


@pytest.mark.parametrize("gate", ["sigmoid", "softmax"])
def test_matches_equations(gate):
    layer = _smora(gate=gate, bias_update="none").eval()
    x = torch.randn(9, 16)
    torch.testing.assert_close(layer(x), _reference(layer, x, gate), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("gate", ["sigmoid", "softmax"])
@pytest.mark.parametrize("rank_partition", [1, 2])
def test_backends_agree_in_values_and_gradients(gate, rank_partition):
    x = torch.randn(3, 7, 16)
    results = {}
    for backend in ("dense_masked", "gather"):
        layer = _smora(r=8, k=4, gate=gate, rank_partition=rank_partition, backend=backend, bias_update="none")
        xi = x.clone().requires_grad_(True)
        y = layer(xi)
        y.pow(2).sum().backward()
        results[backend] = (y, xi.grad, layer.lora_A.weight.grad, layer.lora_B.weight.grad, layer.router.weight.grad)
    for a, b in zip(*results.values(), strict=True):  # same math, different summation order
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    assert results["gather"][4].abs().sum() > 0  # the router learns through the gates


def test_block_experts_reproduce_lora_moe_topk():
    """Property 1.1: SMoRA with rank blocks and the softmax gate is LoRA-MoE with top-k routing."""
    p, E, k_e = 4, 4, 2
    torch.manual_seed(5)
    base = nn.Linear(16, 12)
    smora = build("smora", base, r=p * E, k=p * k_e, alpha=p * E, gate="softmax", rank_partition=p,
                  bias_update="none")
    moe = build("lora_moe", base, num_experts=E, r=p, alpha=p, routing="topk", k=k_e)  # both scalings = 1
    with torch.no_grad():
        smora.lora_B.weight.normal_()
        moe.router.weight.copy_(smora.router.weight)
        moe.experts_A.copy_(smora.lora_A.weight.view(E, p, 16))
        moe.experts_B.copy_(smora.lora_B.weight.view(12, E, p).permute(1, 0, 2))
    x = torch.randn(2, 6, 16)
    torch.testing.assert_close(smora.eval()(x), moe.eval()(x), atol=1e-5, rtol=1e-5)


def _skewed_stream(n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    direction = torch.randn(16, generator=g)
    return [direction + 0.1 * torch.randn(32, 16, generator=g) for _ in range(n)]


def test_bias_update_lowers_maxvio_on_a_skewed_stream():
    stream = _skewed_stream()
    vio = {}
    for update in ("none", "per_forward"):
        layer = _smora(r=8, k=2, bias_update=update, bias_update_rate=0.02).train()
        with torch.no_grad():
            layer.router_bias.zero_()
        for x in stream[:30]:  # let the bias adapt
            layer(x)
        layer.reset_routing_stats()
        for x in stream[30:]:
            layer(x)
        vio[update] = layer.routing_stats()["maxvio"]
    assert vio["none"] > 2.0  # the same two ranks take every token: (T·k − T·k/r)/(T·k/r) = 3
    assert vio["per_forward"] < vio["none"] / 2


def test_per_step_update_waits_for_the_optimizer_step():
    layer = _smora(bias_update="per_step", bias_update_rate=0.01).train()
    with torch.no_grad():
        layer.router_bias.zero_()
    for x in _skewed_stream(3):
        layer(x)
    assert torch.count_nonzero(layer.router_bias) == 0
    layer.on_optimizer_step()
    assert torch.count_nonzero(layer.router_bias) > 0
    assert layer.pending_counts.sum() == 0


def test_eval_does_not_update_the_bias():
    layer = _smora(bias_update="per_forward").eval()
    before = layer.router_bias.clone()
    layer(torch.randn(4, 16))
    assert torch.equal(layer.router_bias, before)


@pytest.mark.parametrize(("count_padding", "expected"), [(False, 3 * 2), (True, 8 * 2)])
def test_padding_left_out_of_counts(count_padding, expected):
    layer = _smora(r=8, k=2, count_padding=count_padding, bias_update="none")
    mask = torch.tensor([[1, 1, 1, 0, 0, 0, 0, 0]])
    with adapter_context(layer, attention_mask=mask):
        layer(torch.randn(1, 8, 16))
    assert layer.load_counts.sum() == expected


@pytest.mark.parametrize(("cfg", "key"), [
    ({"r": 8, "k": 9}, "method.k"), ({"r": 8, "k": 0}, "method.k"), ({"r": 8, "k": 2, "rank_partition": 3}, "method.rank_partition"),
    ({"r": 8, "k": 3, "rank_partition": 2}, "method.k"), ({"gate": "relu"}, "method.gate"),
    ({"backend": "cuda"}, "method.backend"), ({"bias_update": "sometimes"}, "method.bias_update"),
])
def test_bad_config(cfg, key):
    with pytest.raises(ConfigError) as e:
        build("smora", nn.Linear(16, 12), **cfg)
    assert e.value.key == key


def test_not_mergeable_and_parameter_accounting():
    layer = _smora(r=64, k=8)
    with pytest.raises(NotMergeableError):
        layer.merge()
    assert layer.activated_parameters() == 8 * (16 + 12) + 64 * 16
    assert layer.router_parameters() == 64 * 16
    assert layer.trainable_parameters() == 64 * 16 + 12 * 64 + 64 * 16
    assert "router_bias" in layer.adapter_state_dict() and not layer.router_bias.requires_grad


def test_gate_entropy_is_tracked():
    layer = _smora(r=8, k=4, gate="softmax", bias_update="none")
    assert layer.routing_stats()["gate_entropy"] is None
    layer(torch.randn(6, 16))
    h = layer.routing_stats()["gate_entropy"]
    assert 0.0 < h <= torch.log(torch.tensor(4.0)).item() + 1e-6


def test_checkpoints_keep_the_balancing_bias():
    """Every task's module (rankmix.modules.base.AdapterModule) saves trainable weights and every adapter buffer:
    a resumed SMoRA run keeps its router_bias; a checkpoint without an adapter tensor is refused."""
    from rankmix.adapters import inject
    from rankmix.errors import RankmixError
    from rankmix.modules.base import AdapterModule

    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 2))
    inject(model, {"name": "smora", "r": 4, "k": 2, "target_modules": ["0"]})
    model[1].requires_grad_(True)  # a trainable head beside the adapter
    m = AdapterModule(model, {"lr": 1e-3})
    m.model[0].router_bias.fill_(0.25)
    checkpoint = {"state_dict": m.state_dict()}
    m.on_save_checkpoint(checkpoint)
    saved = checkpoint["state_dict"]
    assert saved["model.0.router_bias"].eq(0.25).all()
    with pytest.raises(RankmixError, match="checkpoint lacks 1 adapter tensors .first: model.0.router_bias"):
        m.on_load_checkpoint({"state_dict": {k: v for k, v in saved.items() if "router_bias" not in k}})
    assert "model.0.base_layer.weight" not in saved and "model.1.weight" in saved and "model.0.lora_B.weight" in saved
