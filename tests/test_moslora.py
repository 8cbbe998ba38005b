"""MoSLoRA and two-subspace mixing, against the paper's equations (MoSLoRA Eq. 3, 5, 6, 7)."""

import pytest
import torch
from torch import nn

from rankmix.adapters import build
from rankmix.adapters.moslora import butterfly_mixer
from rankmix.errors import ConfigError


def _layers(r=8, **kw):
    torch.manual_seed(0)
    base = nn.Linear(16, 12)
    lora = build("lora", base, r=r, alpha=2 * r)
    mos = build("moslora", base, r=r, alpha=2 * r, **kw)
    with torch.no_grad():
        lora.lora_B.weight.normal_()
        mos.lora_A.weight.copy_(lora.lora_A.weight)
        mos.lora_B.weight.copy_(lora.lora_B.weight)
    return base, lora, mos


def test_identity_mixer_equals_lora():
    _, lora, mos = _layers(mixer_init="identity")
    x = torch.randn(3, 4, 16)
    torch.testing.assert_close(mos(x), lora(x))


def test_output_matches_eq7():
    base, _, mos = _layers(mixer_init="kaiming")
    x = torch.randn(5, 16)
    A, B, M = mos.lora_A.weight, mos.lora_B.weight, mos.lora_mixer.weight
    torch.testing.assert_close(mos(x), base(x) + (16 / 8) * (x @ A.T @ M.T @ B.T))


def test_ts_mixing_equals_lora_on_reparameterised_weights():
    """Eq. 3/6: x(A1 + A2)(B1 + B2), a LoRA of rank r/2 on the summed halves (same α/r scaling)."""
    torch.manual_seed(1)
    base = nn.Linear(16, 12)
    ts = build("ts_mixing", base, r=8, alpha=16)
    with torch.no_grad():
        ts.lora_B.weight.normal_()
    A, B = ts.lora_A.weight, ts.lora_B.weight
    half = build("lora", base, r=4, alpha=8)  # alpha/r = 2, as ts_mixing's 16/8
    with torch.no_grad():
        half.lora_A.weight.copy_(A[:4] + A[4:])
        half.lora_B.weight.copy_(B[:, :4] + B[:, 4:])
    x = torch.randn(6, 16)
    torch.testing.assert_close(ts(x), half(x))
    torch.testing.assert_close(ts.lora_mixer.weight, butterfly_mixer(8))


def test_ts_mixing_mixer_is_fixed():
    ts = build("ts_mixing", nn.Linear(16, 12), r=4)
    assert not ts.lora_mixer.weight.requires_grad
    assert ts.trainable_parameters() == 4 * 16 + 12 * 4
    with pytest.raises(ConfigError, match="r must be even"):
        build("ts_mixing", nn.Linear(16, 12), r=5)


def test_zero_mixer_and_zero_b_give_zero_gradients():
    """The paper's 'does not converge': with M = 0 and B = 0 no parameter of A, B, M gets a gradient."""
    mos = build("moslora", nn.Linear(16, 12), r=8, mixer_init="zero")
    mos(torch.randn(4, 16)).pow(2).sum().backward()
    for p in (mos.lora_A.weight, mos.lora_B.weight, mos.lora_mixer.weight):
        assert p.grad is not None and torch.count_nonzero(p.grad) == 0
    kai = build("moslora", nn.Linear(16, 12), r=8, mixer_init="kaiming")
    kai(torch.randn(4, 16)).pow(2).sum().backward()
    assert torch.count_nonzero(kai.lora_B.weight.grad) > 0


@pytest.mark.parametrize("init", ["kaiming", "orthogonal", "identity", "normal", "zero"])
def test_mixer_inits(init):
    torch.manual_seed(2)
    m = build("moslora", nn.Linear(16, 12), r=8, mixer_init=init).lora_mixer.weight.detach()
    if init == "orthogonal":
        torch.testing.assert_close(m @ m.T, torch.eye(8), atol=1e-5, rtol=0)
    elif init == "identity":
        assert torch.equal(m, torch.eye(8))
    elif init == "zero":
        assert torch.count_nonzero(m) == 0
    else:
        assert torch.count_nonzero(m) == 64 and m.abs().max() < 3


def test_unknown_mixer_init():
    with pytest.raises(ConfigError, match="mixer_init='eye': must be one of kaiming, orthogonal"):
        build("moslora", nn.Linear(4, 4), mixer_init="eye")


@pytest.mark.parametrize("name", ["moslora", "ts_mixing"])
def test_merge_round_trip_and_absorbed_a(name):
    torch.manual_seed(3)
    base = nn.Linear(16, 12)
    w0 = base.weight.detach().clone()
    layer = build(name, base, r=8, alpha=4)
    with torch.no_grad():
        layer.lora_B.weight.normal_()
    x = torch.randn(7, 16)
    before = layer(x)
    torch.testing.assert_close(layer.lora_B.weight @ layer.absorbed_A() * layer.scaling, layer.delta_weight())
    layer.merge()
    torch.testing.assert_close(layer(x), before, atol=1e-6, rtol=1e-6)
    layer.unmerge()
    torch.testing.assert_close(base.weight, w0, atol=1e-6, rtol=0)


def test_flora_starts_at_base_and_trains_its_core_first():
    torch.manual_seed(4)
    base = nn.Linear(16, 12)
    layer = build("flora", base, r=4, alpha=4)
    x = torch.randn(5, 16)
    torch.testing.assert_close(layer(x), base(x))
    A, B = layer.lora_A.weight, layer.lora_B.weight
    torch.testing.assert_close(A @ A.T, torch.eye(4), atol=1e-5, rtol=0)
    torch.testing.assert_close(B.T @ B, torch.eye(4), atol=1e-5, rtol=0)
    layer(x).pow(2).sum().backward()
    assert layer.lora_mixer.weight.grad.abs().sum() > 0
    assert layer.lora_A.weight.grad.abs().sum() == 0  # G = 0 blocks A's gradient at step 0
