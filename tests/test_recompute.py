"""Every registered adapter method under transformers' activation checkpointing, in float64: outputs, gradients,
parameters and every buffer after several optimizer steps equal to the run without it (reentrant and not)."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import LlamaForCausalLM

from conftest import float64_llama
from rankmix.adapters import METHODS, AdapterLayer, adapter_context, adapter_layers

HIDDEN, VOCAB, BATCH, LENGTH, STEPS = 16, 32, 3, 7, 4
ATTENTION = ["q_proj", "v_proj"]
ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

# name: (method config, the per-call inputs it reads). Routed methods move their routing far per step here
# (SMoRA's bias rate 0.05, not 1e-5), so a recomputation that routed differently would show.
CASES = {
    "lora": ({"name": "lora", "r": 4, "dropout": 0.1, "target_modules": ALL_LINEAR}, ()),
    "moslora": ({"name": "moslora", "r": 4, "target_modules": ALL_LINEAR}, ()),
    "ts_mixing": ({"name": "ts_mixing", "r": 4, "target_modules": ATTENTION}, ()),
    "flora": ({"name": "flora", "r": 4, "target_modules": ATTENTION}, ()),
    "hydralora": ({"name": "hydralora", "r": 4, "num_experts": 3, "dropout": 0.1, "target_modules": ALL_LINEAR}, ()),
    "lora_moe_top1": ({"name": "lora_moe", "num_experts": 4, "r": 2, "routing": "top1", "dropout": 0.1,
                       "target_modules": ALL_LINEAR}, ()),
    "lora_moe_top2": ({"name": "lora_moe", "num_experts": 4, "r": 2, "routing": "top2",
                       "target_modules": ALL_LINEAR}, ()),
    "lora_moe_soft": ({"name": "lora_moe", "num_experts": 4, "r": 2, "routing": "soft",
                       "target_modules": ATTENTION}, ()),
    "smear": ({"name": "smear", "num_experts": 4, "r": 2, "target_modules": ALL_LINEAR}, ()),
    "smora_sigmoid": ({"name": "smora", "r": 8, "k": 2, "dropout": 0.1, "bias_update_rate": 0.05,
                       "target_modules": ALL_LINEAR}, ("attention_mask",)),
    "smora_softmax": ({"name": "smora", "r": 8, "k": 4, "gate": "softmax", "bias_update_rate": 0.05,
                       "count_padding": True, "target_modules": ALL_LINEAR}, ()),
    "smora_blocks_per_step": ({"name": "smora", "r": 8, "k": 4, "rank_partition": 2, "bias_update": "per_step",
                               "bias_update_rate": 0.05, "target_modules": ALL_LINEAR}, ("attention_mask",)),
    "smora_gather": ({"name": "smora", "r": 8, "k": 2, "backend": "gather", "bias_update_rate": 0.05,
                      "target_modules": ATTENTION}, ()),
    "smola_mm": ({"name": "smola", "num_experts": 3, "r": 2, "allow_causal": True, "target_modules": ATTENTION},
                 ("attention_mask",)),
    "smola_o": ({"name": "smola", "num_experts": 3, "r": 2, "variant": "o", "allow_causal": True,
                 "target_modules": ATTENTION}, ("attention_mask", "modality_masks")),
    "adapter": ({"name": "adapter", "r": 4, "dropout": 0.1, "target_modules": ["o_proj", "down_proj"]}, ()),
    "parallel_adapter": ({"name": "parallel_adapter", "r": 4, "scale": 2.0, "target_modules": ATTENTION}, ()),
    "routing_lora_proj": ({"name": "routing", "fn": "proj", "r": 4, "dropout": 0.1, "target_modules": ATTENTION},
                          ("x_r",)),
    "routing_adapter_mul": ({"name": "routing", "fn": "mul", "base": "adapter", "r": 4,
                             "target_modules": ["o_proj"]}, ("x_r",)),
    "routing_cross_attention": ({"name": "routing", "fn": "cross_attention", "r": 4, "separate_mapping": True,
                                 "target_modules": ATTENTION}, ("x_r",)),
    "multi_adapter": ({"name": "multi_adapter", "tasks": ["a", "b"], "r": 4, "fns": {"b": "add"},
                       "target_modules": ["o_proj"]}, ("task_ids", "x_r")),
}


def test_every_registered_method_has_a_case():
    assert {cfg["name"] for cfg, _ in CASES.values()} == {n for n, cls in METHODS.items() if issubclass(cls, AdapterLayer)}


def batches():
    g = torch.Generator().manual_seed(1)
    for _ in range(STEPS):
        ids = torch.randint(0, VOCAB, (BATCH, LENGTH), generator=g)
        mask = torch.ones(BATCH, LENGTH, dtype=torch.long)
        mask[0, -2:] = 0   # padding at the end of one row
        vision = torch.zeros(BATCH, LENGTH, dtype=torch.bool)
        vision[:, 2:4] = True
        yield ids, mask, {"attention_mask": mask, "x_r": torch.randn(BATCH, HIDDEN, generator=g, dtype=torch.float64),
                          "task_ids": torch.tensor([0, 1, 1]),
                          "modality_masks": {"vision": vision, "text": ~vision}}


def train(model: LlamaForCausalLM, case: str, checkpointing: str | None) -> dict:
    """STEPS SGD steps; per step the logits and gradients, then every parameter, buffer and routing statistic."""
    if checkpointing:
        model.activation_checkpointing_enable({"use_reentrant": checkpointing == "reentrant"})
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.5)
    reads = CASES[case][1]
    out = {"logits": [], "grads": []}
    for ids, mask, context in batches():
        torch.manual_seed(len(out["logits"]))   # dropout and Gumbel noise: checkpointing restores the RNG itself
        with adapter_context(model, **{k: context[k] for k in reads}):
            result = model(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100))
        result.loss.backward()   # outside the context, as Lightning's backward: the recomputation runs here
        out["logits"].append(result.logits.detach())
        out["grads"].append([p.grad.clone() for p in params])
        opt.step()
        for layer in adapter_layers(model).values():
            layer.on_optimizer_step()
        opt.zero_grad()
    out["state"] = {n: t.detach().clone() for n, t in [*model.named_parameters(), *model.named_buffers()]}
    out["stats"] = {n: layer.routing_stats() for n, layer in adapter_layers(model).items()}
    return out


@pytest.mark.parametrize("case", sorted(CASES))
def test_checkpointing_changes_nothing(case):
    model = float64_llama(CASES[case][0], VOCAB)
    plain = train(copy.deepcopy(model), case, None)
    for mode in ("reentrant", "non_reentrant"):
        ckpt = train(copy.deepcopy(model), case, mode)
        for step in range(STEPS):
            equal(ckpt["logits"][step], plain["logits"][step], f"{mode}: logits of step {step}")
            for a, b in zip(ckpt["grads"][step], plain["grads"][step], strict=True):
                equal(a, b, f"{mode}: gradients of step {step}")
        assert ckpt["state"].keys() == plain["state"].keys()
        for name, value in plain["state"].items():
            equal(ckpt["state"][name], value, f"{mode}: {name}")
        equal(ckpt["stats"], plain["stats"], f"{mode}: routing statistics")


def equal(actual, expected, what: str) -> None:
    """Equal to float64 rounding (sums over many tokens may round differently, the routing may not differ)."""
    torch.testing.assert_close(actual, expected, rtol=1e-10, atol=1e-12, equal_nan=True, msg=lambda m: f"{what}: {m}")


def test_smora_counts_every_token_once_and_moves_its_bias():
    """The checks above see a change: the routed layers' counts are one per token and active rank, the bias moved."""
    case = "smora_softmax"
    result = train(float64_llama(CASES[case][0], VOCAB), case, "reentrant")
    cfg = CASES[case][0]
    for name, stats in result["stats"].items():
        assert sum(stats["load"]) == STEPS * BATCH * LENGTH * cfg["k"], name
    assert sum(result["state"][f"{name}.router_bias"].abs().sum() for name in result["stats"]) > 0
