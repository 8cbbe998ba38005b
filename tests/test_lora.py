"""LoRA layer: the formula, initialisation, merge/unmerge, GPT-2 Conv1D, config errors."""

import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from rankmix.adapters import build
from rankmix.errors import ConfigError


def _trained(layer):
    """Give B non-zero values, as after some training."""
    with torch.no_grad():
        layer.lora_B.weight.normal_()
    return layer


def test_starts_equal_to_base_layer():
    base = nn.Linear(16, 12)
    layer = build("lora", base, r=4, alpha=8)
    x = torch.randn(3, 5, 16)
    torch.testing.assert_close(layer(x), base(x))


def test_output_matches_formula():
    torch.manual_seed(0)
    base = nn.Linear(16, 12)
    layer = _trained(build("lora", base, r=4, alpha=8))
    x = torch.randn(2, 7, 16)
    expected = x @ base.weight.T + base.bias + (8 / 4) * (x @ layer.lora_A.weight.T @ layer.lora_B.weight.T)
    torch.testing.assert_close(layer(x), expected)


def test_parameter_names_and_shapes():
    layer = build("lora", nn.Linear(16, 12), r=4)
    assert layer.lora_A.weight.shape == (4, 16)
    assert layer.lora_B.weight.shape == (12, 4)
    trainable = {n for n, p in layer.named_parameters() if p.requires_grad}
    assert trainable == {"lora_A.weight", "lora_B.weight"}
    assert layer.trainable_parameters() == 4 * 16 + 12 * 4


@pytest.mark.parametrize("make_base", [lambda: nn.Linear(16, 12), lambda: Conv1D(12, 16)])
def test_merge_unmerge_round_trip(make_base):
    torch.manual_seed(1)
    base = make_base()
    original = base.weight.detach().clone()
    layer = _trained(build("lora", base, r=4, alpha=16))
    x = torch.randn(4, 16)
    before = layer(x)
    layer.merge()
    torch.testing.assert_close(layer(x), before, atol=1e-6, rtol=1e-6)
    layer.unmerge()
    torch.testing.assert_close(base.weight, original, atol=1e-6, rtol=0)
    torch.testing.assert_close(layer(x), before, atol=1e-6, rtol=1e-6)


def test_conv1d_delta_uses_transposed_weight():
    torch.manual_seed(2)
    base = Conv1D(12, 16)  # GPT-2 style: weight is (in, out)
    layer = _trained(build("lora", base, r=2, alpha=2))
    x = torch.randn(3, 16)
    expected = x @ base.weight + base.bias + x @ layer.delta_weight().T
    torch.testing.assert_close(layer(x), expected)


def test_dropout_only_in_training():
    torch.manual_seed(3)
    layer = _trained(build("lora", nn.Linear(16, 12), r=4, dropout=0.5))
    x = torch.randn(8, 16)
    layer.eval()
    torch.testing.assert_close(layer(x), layer(x))
    layer.train()
    assert not torch.allclose(layer(x), layer(x))


@pytest.mark.parametrize(("cfg", "key"), [({"r": 0}, "method.r"), ({"r": -2}, "method.r"), ({"r": 2.5}, "method.r"),
                                          ({"dropout": 1.5}, "method.dropout"), ({"rank": 4}, "method.rank")])
def test_bad_options_name_the_key(cfg, key):
    with pytest.raises(ConfigError) as e:
        build("lora", nn.Linear(4, 4), **cfg)
    assert e.value.key == key


def test_unknown_method_lists_registered():
    with pytest.raises(ConfigError, match="registered: .*lora"):
        build("nope", nn.Linear(4, 4))


def test_refuses_non_linear_layers():
    with pytest.raises(TypeError, match="nn.Linear or transformers Conv1D"):
        build("lora", nn.Conv2d(3, 3, 1))
