"""Memory measured, not guessed: what autograd saves (de-duplicated by storage), a tiny Llama's layer costs with
and without checkpointing, the measurement cache, and the GPU pre-flight check (free memory faked)."""

import pytest
import torch

from rankmix.errors import RankmixError
from rankmix.rehearsal import memory, preflight
from rankmix.rehearsal import projection as proj
from rankmix.rehearsal.standins import STANDINS, _llama2

TINY = "tiny/llama"
LORA = {"name": "lora", "r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}


@pytest.fixture
def tiny(monkeypatch):
    monkeypatch.setitem(STANDINS, TINY, _llama2(hidden=64, intermediate=128, layers=2, heads=4))
    monkeypatch.setattr(memory, "VOCAB", 64)


def test_a_single_linear_saves_its_input_and_weights_are_left_out():
    lin = torch.nn.Linear(4, 3)
    x = torch.randn(2, 4, requires_grad=True)
    n, storages, _out = memory.saved_bytes(lambda: lin(x), {lin.weight.untyped_storage().data_ptr()})
    assert (n, storages) == (2 * 4 * 4, 1)   # x, 2 × 4 fp32; the weight (saved for x's gradient) left out
    n, storages, _out = memory.saved_bytes(lambda: lin(x))
    assert (n, storages) == (2 * 4 * 4 + 3 * 4 * 4, 2)


def test_a_storage_saved_twice_is_counted_once():
    x = torch.randn(8, requires_grad=True)
    n, storages, _out = memory.saved_bytes(lambda: x * x[None, :])   # x and a view of it: one storage
    assert (n, storages) == (8 * 4, 1)


def test_a_checkpointed_layer_keeps_its_input_only(tiny, tmp_path):
    plain = memory.measure(TINY, "float32", "32-true", LORA, "none", cache=None)
    ckpt = memory.measure(TINY, "float32", "32-true", LORA, "reentrant", cache=tmp_path)
    assert ckpt["layer"] == plain["layer"] and plain["kept"] is None
    assert ckpt["kept"] == pytest.approx([64 * 4, 0], abs=1e-6)    # the hidden state, fp32, per token
    assert ckpt["kept"][0] < plain["layer"][0]
    assert plain["check"] == pytest.approx(1.0, abs=0.02)           # SDPA keeps no s × s matrix: linear


def test_a_measurement_is_read_from_its_cache(tiny, tmp_path, monkeypatch):
    first = memory.measure(TINY, "float32", "32-true", LORA, "none", cache=tmp_path)
    monkeypatch.setattr(memory, "_model", lambda *a: pytest.fail("measured again"))
    assert memory.measure(TINY, "float32", "32-true", LORA, "none", cache=tmp_path) == first


def _projection(gib: float) -> dict:
    parts = {"weights": gib / 2, "optimizer": gib / 4, "activations": gib / 8, "logits": gib / 8}
    return {"memory_gib": gib, "memory": parts}


def _gpu(monkeypatch, free_gib: float, projected: dict):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda: (int(free_gib * 2**30), int(80 * 2**30)))
    monkeypatch.setattr(preflight, "projected", lambda config: projected)


def _cfg(**trainer):
    from omegaconf import OmegaConf

    return OmegaConf.create({"backbone": {"name": "x"}, "trainer": trainer})


def test_preflight_stops_a_row_that_does_not_fit_with_one_line_naming_the_settings(monkeypatch):
    _gpu(monkeypatch, 20.0, _projection(30.0))
    with pytest.raises(RankmixError) as e:
        preflight.check(_cfg())
    line = str(e.value)
    assert "\n" not in line and "30.0 GiB" in line and "20.0 GiB free" in line
    assert all(k in line for k in ("accumulate_grad_batches", "activation_checkpointing", "trainer=fsdp",
                                   "trainer.preflight=false"))


def test_preflight_passes_a_row_that_fits_and_can_be_overridden(monkeypatch):
    _gpu(monkeypatch, 40.0, _projection(30.0))
    preflight.check(_cfg())
    _gpu(monkeypatch, 20.0, _projection(30.0))
    preflight.check(_cfg(preflight=False))


def test_preflight_shards_weights_and_optimizer_under_fsdp(monkeypatch):
    monkeypatch.setattr(proj, "project", lambda config, parts: _projection(32.0))
    config = {"backbone": {"source": "pretrained", "name_or_path": "meta-llama/Llama-2-7b-hf"},
              "trainer": {"strategy": {"_target_": "lightning.pytorch.strategies.FSDPStrategy"}, "devices": 4}}
    assert preflight.projected(config)["memory_gib"] == pytest.approx((16 + 8) / 4 + 4 + 4)
    config["backbone"]["name_or_path"] = "/local/checkpoint"   # not a known architecture: not projected
    assert preflight.projected(config) is None


def test_the_preflight_key_changes_no_config_hash():
    from rankmix.config import compose_run, config_hash

    base = ["experiment=smora-1/lora_64", "scale=paper"]
    assert config_hash(compose_run(base)) == config_hash(compose_run([*base, "++trainer.preflight=false"]))
