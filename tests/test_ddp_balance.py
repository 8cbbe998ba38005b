"""SMoRA and LoRA-MoE on two CPU processes (gloo): under DDP and FSDP every rank keeps the same balancing bias,
routing statistics and adapter weights, equal to one process trained on the same global batch (Eq. 7 over the
global batch)."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from conftest import float64_llama
from rankmix.adapters import adapter_layers
from rankmix.distributed import data_parallel_sum

VOCAB, BATCH, LENGTH, STEPS, WORLD = 32, 4, 6, 3, 2
METHODS = {
    "smora": {"name": "smora", "r": 8, "k": 2, "bias_update_rate": 0.05,
              "target_modules": ["q_proj", "v_proj", "down_proj"]},
    "smora_per_step": {"name": "smora", "r": 8, "k": 4, "gate": "softmax", "bias_update": "per_step",
                       "bias_update_rate": 0.05, "target_modules": ["q_proj", "v_proj", "down_proj"]},
    "lora_moe": {"name": "lora_moe", "num_experts": 4, "r": 2, "routing": "top2", "target_modules": ["q_proj"]},
}
STRATEGIES = ("ddp", "fsdp")


def global_batches():
    g = torch.Generator().manual_seed(1)
    return [torch.randint(0, VOCAB, (BATCH, LENGTH), generator=g) for _ in range(STEPS)]


def train(model, wrapped, rows: slice) -> None:
    """STEPS SGD steps on ``rows`` of each global batch (no padding: every row has the same number of labels, so
    the data-parallel mean of the per-rank losses is the global batch's loss)."""
    opt = torch.optim.SGD([p for p in wrapped.parameters() if p.requires_grad], lr=0.5)
    for ids in global_batches():
        wrapped(input_ids=ids[rows], labels=ids[rows]).loss.backward()
        opt.step()
        for layer in adapter_layers(model).values():
            layer.on_optimizer_step()
        opt.zero_grad()


def adapter_state(model) -> dict[str, torch.Tensor]:
    """Trainable weights, the balancing bias and every routing statistic (buffers included)."""
    named = [*model.named_parameters(), *model.named_buffers()]
    return {n.replace("_fsdp_wrapped_module.", "").replace("module.", ""): t.detach().clone()
            for n, t in named if (getattr(t, "requires_grad", False) or n.split(".")[-1] in BUFFERS)}


BUFFERS = {"router_bias", "load_counts", "pending_counts", "entropy_sum", "token_count", "expert_load"}


def wrap(model, strategy: str):
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model)
    from torch.distributed.fsdp import FullyShardedDataParallel, ShardingStrategy
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer

    return FullyShardedDataParallel(model, auto_wrap_policy=ModuleWrapPolicy({LlamaDecoderLayer}),
                                    sharding_strategy=ShardingStrategy.FULL_SHARD, use_orig_params=True,
                                    device_id=torch.device("cpu"))


def full_state(model, wrapped, strategy: str) -> dict[str, torch.Tensor]:
    if strategy == "ddp":
        return adapter_state(model)
    from torch.distributed.fsdp import FullyShardedDataParallel

    with FullyShardedDataParallel.summon_full_params(wrapped):
        return adapter_state(model)


def worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        results = {}
        rows = slice(rank * BATCH // WORLD, (rank + 1) * BATCH // WORLD)
        for method in METHODS:
            for strategy in STRATEGIES:
                model = float64_llama(METHODS[method], VOCAB)
                wrapped = wrap(model, strategy)
                train(model, wrapped, rows)
                results[method, strategy] = full_state(model, wrapped, strategy)
        torch.save(results, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("ddp") / "state")
    mp.spawn(worker, args=(free_port(), out), nprocs=WORLD, join=True)
    return [torch.load(f"{out}.{rank}") for rank in range(WORLD)]


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("method", sorted(METHODS))
def test_ranks_agree_with_one_process_on_the_global_batch(two_ranks, method, strategy):
    model = float64_llama(METHODS[method], VOCAB)
    train(model, model, slice(None))
    single = adapter_state(model)
    assert any(n.endswith(("router_bias", "expert_load")) for n in single)
    for rank, states in enumerate(two_ranks):
        state = states[method, strategy]
        assert state.keys() == single.keys()
        for name, value in single.items():
            torch.testing.assert_close(state[name], value, rtol=0, atol=1e-10,
                                       msg=f"{strategy} rank {rank}: {name}")
    if method.startswith("smora"):
        biases = [v for n, v in single.items() if n.endswith("router_bias")]
        assert all(b.abs().sum() > 0 for b in biases)   # the bias moved: the equality above says something


def test_one_process_sum_is_the_tensor():
    t = torch.arange(3.0)
    assert data_parallel_sum(t) is t and t.tolist() == [0.0, 1.0, 2.0]
