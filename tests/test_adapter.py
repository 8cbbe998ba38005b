"""Bottleneck adapters: sequential (Houlsby) and parallel formulas, init, activations; multi_adapter's per-task
selection and per-task routing; injection; config errors; the method configs."""

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn
from transformers import RobertaConfig, RobertaModel
from transformers.pytorch_utils import Conv1D

import rankmix.adapters.adapter  # noqa: F401  (registers "adapter", "parallel_adapter")
import rankmix.adapters.multi_adapter  # noqa: F401  (registers "multi_adapter")
import rankmix.adapters.routing  # noqa: F401  (registers "routing")
from conftest import REPO, randomize
from rankmix.adapters import adapter_context, build, inject, method_options
from rankmix.errors import ConfigError, NotMergeableError

TASKS = ["vqa", "gqa", "nlvr", "caption"]


def adapter_out(h, down, up, act=F.gelu):
    """up(act(down(h))) written with the weights."""
    return act(h @ down.weight.T + down.bias) @ up.weight.T + up.bias


@pytest.mark.parametrize("make_base", [lambda: nn.Linear(16, 12), lambda: Conv1D(12, 16)])
def test_sequential_adapter_reads_the_layer_output(make_base):
    torch.manual_seed(0)
    base = make_base()
    layer = randomize(build("adapter", base, r=4))
    x = torch.randn(2, 5, 16)
    h = base(x)
    assert layer.adapter_down.weight.shape == (4, 12) and layer.adapter_up.weight.shape == (12, 4)
    torch.testing.assert_close(layer(x), h + adapter_out(h, layer.adapter_down, layer.adapter_up))
    torch.testing.assert_close(layer.delta(x), adapter_out(h, layer.adapter_down, layer.adapter_up))


def test_parallel_adapter_reads_the_layer_input():
    torch.manual_seed(1)
    base = nn.Linear(16, 12)
    layer = randomize(build("parallel_adapter", base, r=4, scale=0.5))
    x = torch.randn(2, 5, 16)
    assert layer.adapter_down.weight.shape == (4, 16) and layer.adapter_up.weight.shape == (12, 4)
    torch.testing.assert_close(layer(x), base(x) + 0.5 * adapter_out(x, layer.adapter_down, layer.adapter_up))


@pytest.mark.parametrize(("name", "act"), [("relu", F.relu), ("swish", F.silu), ("silu", F.silu),
                                           ("gelu_new", lambda v: F.gelu(v, approximate="tanh"))])
def test_activations(name, act):
    torch.manual_seed(2)
    base = nn.Linear(8, 8)
    layer = randomize(build("parallel_adapter", base, r=4, activation=name))
    x = torch.randn(3, 8) * 3
    torch.testing.assert_close(layer(x), base(x) + adapter_out(x, layer.adapter_down, layer.adapter_up, act))


@pytest.mark.parametrize("name", ["adapter", "parallel_adapter"])
def test_starts_equal_to_base_and_names(name):
    base = nn.Linear(16, 12)
    layer = build(name, base, r=4)
    x = torch.randn(3, 16)
    torch.testing.assert_close(layer(x), base(x))
    assert {n for n, p in layer.named_parameters() if p.requires_grad} == {
        "adapter_down.weight", "adapter_down.bias", "adapter_up.weight", "adapter_up.bias"}
    assert not layer.adapter_up.weight.any() and not layer.adapter_up.bias.any()
    assert layer.adapter_down.weight.any()
    with pytest.raises(NotMergeableError):
        layer.merge()


def test_default_init_keeps_linear_init():
    layer = build("adapter", nn.Linear(16, 16), r=4, init="default")
    assert layer.adapter_up.weight.any() and layer.adapter_up.bias.any()


def test_dropout_only_in_training():
    torch.manual_seed(3)
    layer = randomize(build("adapter", nn.Linear(8, 8), r=4, dropout=0.5))
    x = torch.randn(8, 8)
    layer.eval()
    torch.testing.assert_close(layer(x), layer(x))
    layer.train()
    assert not torch.allclose(layer(x), layer(x))


# -- multi_adapter ---------------------------------------------------------------------------------------------
def multi(fns=None, **cfg):
    torch.manual_seed(4)
    base = nn.Linear(16, 12)
    return base, randomize(build("multi_adapter", base, tasks=TASKS, r=4, fns=fns, **{"activation": "gelu", **cfg}))


def per_example(layer, base, x, ids, x_r=None):
    """Each example through its own task's adapter, one at a time."""
    rows = []
    for b, t in enumerate(ids.tolist()):
        task = layer.adapters[TASKS[t]]
        h = base(x[b])
        down, up = task.adapter_down, task.adapter_up
        xt = h @ down.weight.T + down.bias
        fn = layer.fns[TASKS[t]]
        if fn != "none":
            xv = (x_r[b] @ down.weight.T + down.bias).mean(0)
            xt = {"mul": xt * xv, "add": xt + xv, "proj": (xt @ xv)[:, None] * xv, "matmul": xt.sum(-1, keepdim=True) * xv}[fn]
        rows.append(h + F.gelu(xt) @ up.weight.T + up.bias)
    return torch.stack(rows)


def test_multi_adapter_routes_each_example_to_its_task():
    base, layer = multi()
    x, ids = torch.randn(5, 3, 16), torch.tensor([0, 1, 2, 0, 3])
    with adapter_context(layer, task_ids=ids):
        out = layer(x)
        torch.testing.assert_close(out, per_example(layer, base, x, ids))
        with torch.no_grad():
            layer.adapters["gqa"].adapter_up.weight.add_(1.0)  # task 1 = gqa: only example 1 may change
        changed = (layer(x) - out).abs().flatten(1).amax(1) > 1e-6
    assert changed.tolist() == [False, True, False, False, False]


def test_multi_adapter_gradients_stay_in_the_batch_tasks():
    _, layer = multi()
    with adapter_context(layer, task_ids=torch.tensor([2, 0, 2])):
        layer(torch.randn(3, 16)).sum().backward()
    for task, adapter in layer.adapters.items():
        moved = adapter.adapter_up.weight.grad is not None and adapter.adapter_up.weight.grad.abs().sum() > 0
        assert moved == (task in ("vqa", "nlvr")), task


def test_multi_adapter_per_task_routing():
    """Tab. 8 comb-style: a routing function per task, x_R pooled after that task's down-projection."""
    base, layer = multi(fns={"vqa": "mul", "gqa": "add", "nlvr": "proj", "caption": "matmul"})
    x, x_r, ids = torch.randn(4, 3, 16), torch.randn(4, 2, 12), torch.tensor([3, 2, 1, 0])
    with adapter_context(layer, task_ids=ids, x_r=x_r):
        torch.testing.assert_close(layer(x), per_example(layer, base, x, ids, x_r))


def test_multi_adapter_parameter_names():
    _, layer = multi()
    names = {n for n, p in layer.named_parameters() if p.requires_grad}
    assert names == {f"adapters.{t}.adapter_{p}.{w}" for t in TASKS for p in ("down", "up") for w in ("weight", "bias")}
    assert dict(layer.named_parameters())["adapters.vqa.adapter_down.weight"].shape == (4, 12)


def test_multi_adapter_needs_task_ids_and_x_r():
    _, layer = multi(fns={"vqa": "mul"})
    x = torch.randn(2, 16)
    with pytest.raises(RuntimeError, match=r"adapter_context\(model, task_ids="):
        layer(x)
    with adapter_context(layer, task_ids=torch.tensor([0, 1])), pytest.raises(RuntimeError, match="x_r="):
        layer(x)
    with adapter_context(layer, task_ids=torch.tensor([0, 4]), x_r=torch.randn(2, 12)):
        with pytest.raises(RuntimeError, match=r"integers in \[0, 4\)"):
            layer(x)


def test_multi_adapter_in_roberta():
    torch.manual_seed(5)
    model = RobertaModel(RobertaConfig(vocab_size=40, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                       intermediate_size=64, max_position_embeddings=40))
    report = inject(model, {"name": "multi_adapter", "tasks": TASKS, "r": 4, "fns": {"caption": "proj"},
                            "target_modules": ["output.dense"]})
    assert len(report.wrapped) == 4  # attention.output.dense and output.dense of 2 layers
    assert all(".adapters." in n for n, p in model.named_parameters() if p.requires_grad)
    randomize(model)
    ids = torch.randint(0, 40, (2, 6))
    with adapter_context(model, task_ids=torch.tensor([3, 0]), x_r=torch.randn(2, 32)):
        model(input_ids=ids).last_hidden_state.sum().backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert all(g is not None and g.abs().sum() > 0 for n, g in grads.items() if ".vqa." in n or ".caption." in n)


@pytest.mark.parametrize(("name", "cfg", "key"), [
    ("adapter", {"r": 0}, "method.r"), ("adapter", {"activation": "tanh"}, "method.activation"),
    ("adapter", {"init": "zero"}, "method.init"), ("adapter", {"dropout": -0.1}, "method.dropout"),
    ("parallel_adapter", {"scale": "half"}, "method.scale"), ("adapter", {"scale": 1.0}, "method.scale"),
    ("multi_adapter", {"tasks": []}, "method.tasks"), ("multi_adapter", {"tasks": ["vqa", "vqa"]}, "method.tasks"),
    ("multi_adapter", {"tasks": ["a.b"]}, "method.tasks"),
    ("multi_adapter", {"fns": {"ocr": "mul"}}, "method.fns"),
    ("multi_adapter", {"fns": {"vqa": "cross_attention"}}, "method.fns.vqa"),
])
def test_bad_options_name_the_key(name, cfg, key):
    with pytest.raises(ConfigError) as e:
        build(name, nn.Linear(8, 8), **cfg)
    assert e.value.key == key


@pytest.mark.parametrize("name", ["routing", "adapter", "parallel_adapter", "multi_adapter"])
def test_method_config_builds(name):
    cfg = OmegaConf.to_container(OmegaConf.load(REPO / "conf" / "method" / f"{name}.yaml"))
    assert cfg.pop("name") == name
    cfg.pop("target_modules")
    assert set(cfg) <= set(method_options(name))
    build(name, nn.Linear(8, 8), **cfg)
