"""Injection into a Hugging Face model: what gets wrapped, what trains, what a checkpoint holds."""

import pytest
import torch

from rankmix.adapters import adapter_layers, adapter_state_dict, inject, merge_adapters, unmerge_adapters
from rankmix.errors import ConfigError


def test_only_adapter_parameters_train(tiny_llama):
    report = inject(tiny_llama, {"name": "lora", "r": 4, "target_modules": ["q_proj", "v_proj"]})
    assert sorted(report.wrapped) == sorted(
        f"model.layers.{i}.self_attn.{p}" for i in range(2) for p in ("q_proj", "v_proj"))
    trainable = [n for n, p in tiny_llama.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    assert report.trainable_parameters == sum(p.numel() for p in tiny_llama.parameters() if p.requires_grad)
    assert "lora: wrapped 4 layers" in str(report)


def test_default_targets_by_model_type(tiny_llama):
    report = inject(tiny_llama, {"name": "lora", "r": 2, "target_modules": None})
    assert {n.rsplit(".", 1)[-1] for n in report.wrapped} == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                              "up_proj", "down_proj"}  # every linear of the block


def test_regex_targets_and_excludes(tiny_llama):
    report = inject(tiny_llama, {"name": "lora", "r": 2, "target_modules": [r"re:model\.layers\.1\..*_proj"],
                                 "exclude_modules": ["o_proj"]})
    assert all(n.startswith("model.layers.1.") for n in report.wrapped)
    assert not any(n.endswith("o_proj") for n in report.wrapped)
    assert len(report.wrapped) == 6


def test_target_matching_nothing_lists_candidates(tiny_llama):
    with pytest.raises(ConfigError) as e:
        inject(tiny_llama, {"name": "lora", "r": 2, "target_modules": ["qproj"]})
    msg = str(e.value)
    assert e.value.key == "method.target_modules"
    for name in ("q_proj", "k_proj", "down_proj", "lm_head"):
        assert name in msg


def test_adapter_state_dict_excludes_base(tiny_llama):
    inject(tiny_llama, {"name": "lora", "r": 2, "target_modules": ["q_proj"]})
    keys = adapter_state_dict(tiny_llama)
    assert len(keys) == 4 and all(k.endswith(("lora_A.weight", "lora_B.weight")) for k in keys)
    assert all(k in tiny_llama.state_dict() for k in keys)


def test_merged_model_gives_same_logits(tiny_llama):
    inject(tiny_llama, {"name": "lora", "r": 4, "target_modules": ["q_proj", "v_proj", "down_proj"]})
    for layer in adapter_layers(tiny_llama).values():
        torch.nn.init.normal_(layer.lora_B.weight, std=0.1)
    ids = torch.randint(0, 32, (2, 9))
    before = tiny_llama(ids).logits
    merge_adapters(tiny_llama)
    torch.testing.assert_close(tiny_llama(ids).logits, before, atol=1e-5, rtol=1e-5)
    unmerge_adapters(tiny_llama)
    torch.testing.assert_close(tiny_llama(ids).logits, before, atol=1e-5, rtol=1e-5)


def test_the_methods_with_a_router_say_so_and_the_others_report_no_routing():
    from rankmix.adapters import METHODS, build

    routed = {n for n, cls in METHODS.items() if cls.routes()}
    assert {"smora", "smola", "lora_moe", "smear"} <= routed
    assert not routed & {"lora", "moslora", "ts_mixing", "flora", "adapter", "routing"}
    assert build("lora", torch.nn.Linear(8, 8), r=2).routing_stats() == {}
