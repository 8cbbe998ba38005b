"""The config tree: every group option composes, scale selection, validation, run identity."""

import pytest
from omegaconf import OmegaConf, open_dict

from conftest import REPO, compose
from rankmix.config import apply_scale, config_hash, run_key, validate
from rankmix.distributed import build_strategy
from rankmix.errors import ConfigError


def _resolved(cfg):
    apply_scale(cfg)
    return cfg


@pytest.mark.parametrize("group", ["method", "backbone", "task", "trainer", "logger", "callbacks", "paths"])
def test_every_option_composes(group):
    options = sorted(p.stem for p in (REPO / "conf" / group).glob("*.yaml") if p.stem != "default" or group == "paths")
    for opt in options:
        for scale in ("tiny", "paper"):
            cfg = _resolved(compose(f"{group}={opt}", f"scale={scale}"))
            with open_dict(cfg):
                cfg.pop("hydra")
            OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves


def test_scale_selects_the_block():
    tiny = _resolved(compose("scale=tiny"))
    paper = _resolved(compose("scale=paper"))
    assert tiny.backbone.source == "config" and tiny.backbone.config.hidden_size == 128
    assert paper.backbone.source == "pretrained" and paper.backbone.name_or_path == "meta-llama/Llama-2-7b-hf"
    assert paper.backbone.tokenizer.name_or_path == "meta-llama/Llama-2-7b-hf"
    assert tiny.trainer.max_epochs == tiny.task.max_epochs
    assert paper.task.datamodule.source.n_train > tiny.task.datamodule.source.n_train
    assert "tiny" not in tiny.backbone and "paper" not in tiny.task


def test_unknown_scale_is_refused():
    with pytest.raises(ConfigError, match="scale='huge': must be one of tiny, paper"):
        apply_scale(compose("scale=huge"))


def test_experiment_is_a_global_diff():
    cfg = _resolved(compose("experiment=rankmix/ranks/r4"))
    assert cfg.method.r == 4 and cfg.method.alpha == 8 and cfg.table.id == "rankmix-ranks"


@pytest.mark.parametrize(("overrides", "key"), [
    (["method.r=0"], "method.r"),
    (["method.r=-3"], "method.r"),
    (["+method.rank=4"], "method.rank"),
    (["method.name=nope"], "method.name"),
    (["optimizer.lr=0"], "optimizer.lr"),
    (["method=smora", "method.k=9", "method.r=8"], "method.k"),
])
def test_validation_names_the_key(overrides, key):
    cfg = _resolved(compose(*overrides))
    with pytest.raises(ConfigError) as e:
        validate(cfg)
    assert e.value.key == key


def test_k_within_r_passes():
    validate(_resolved(compose("method=smora", "method.k=8", "method.r=8")))


def test_hash_ignores_where_and_how_a_run_executes():
    base = config_hash(_resolved(compose()))
    assert config_hash(_resolved(compose("trainer=ddp_sim", "logger=wandb", "paths.runs_dir=/elsewhere"))) == base
    assert config_hash(_resolved(compose("method.r=4"))) != base
    assert config_hash(_resolved(compose("seed=1"))) != base


@pytest.mark.parametrize(("dirname", "key"), [
    ("", "default"),
    ("method.r=4", "method.r=4"),
    ("experiment=smora/table1/lora_r8,seed=1", "lora_r8,seed=1"),
    ("method.target_modules=[q_proj,v_proj]", "method.target_modules=-q_proj,v_proj-"),
])
def test_run_key(dirname, key):
    assert run_key(dirname) == key


def test_long_run_keys_stay_short_and_distinct():
    a, b = run_key("x=" + "a" * 300), run_key("x=" + "a" * 299 + "b")
    assert len(a) == len(b) == 120 and a != b and a.startswith("x=aaaa")


def test_fsdp_strategy_is_built_with_wrap_classes():
    from lightning.pytorch.strategies import FSDPStrategy
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer

    cfg = _resolved(compose("trainer=fsdp"))
    strategy = build_strategy(OmegaConf.to_container(cfg.trainer.strategy))
    assert isinstance(strategy, FSDPStrategy)
    assert strategy.kwargs["use_orig_params"] is True
    assert LlamaDecoderLayer in strategy.kwargs["auto_wrap_policy"]._module_classes


def test_deepspeed_without_package_is_a_config_error():
    pytest.importorskip("lightning")
    try:
        import deepspeed  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError, match=r"pip install -e '\.\[deepspeed\]'"):
            build_strategy("deepspeed_stage_2")
    else:
        assert build_strategy("deepspeed_stage_2") == "deepspeed_stage_2"


def test_slurm_launcher_follows_the_trainer():
    cfg = compose("hydra/launcher=slurm", "trainer=ddp", "trainer.devices=8")
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert launcher.tasks_per_node == 8 and launcher.gpus_per_node == 8 and launcher.nodes == 1


def test_computation_hash_ignores_labels_not_hyperparameters():
    from rankmix.config import computation_hash

    base = {"method": {"name": "lora", "r": 8}, "backbone": {"name": "llama2_7b", "paper_label": "Llama2-7b",
                                                            "config": {"hidden_size": 128}},
            "table": {"id": "a"}, "paths": {"root_dir": "/x"}, "trainer": {"devices": 1, "max_epochs": 3}}
    relabelled = {**base, "table": {"id": "b"}, "paths": {"root_dir": "/y"}, "trainer": {"devices": 2, "max_epochs": 3},
                  "backbone": {**base["backbone"], "name": "llama2_13b", "paper_label": "Llama2-13b"}}
    assert computation_hash(base) == computation_hash(relabelled)
    assert computation_hash(base) != computation_hash({**base, "method": {"name": "lora", "r": 16}})
    assert computation_hash(base) != computation_hash({**base, "backbone": {**base["backbone"], "config": {"hidden_size": 64}}})


def test_run_keys_lead_with_the_row_and_normalise_values():
    assert run_key("backbone.x=1,experiment=smora/1/lora_64,++task.a.b=2") == "lora_64,backbone.x=1,task.a.b=2"
    assert run_key("optimizer.lr=3e-3") == run_key("optimizer.lr=0.003") == "optimizer.lr=0.003"
    assert run_key("seed=2,method.r=4") == "seed=2,method.r=4"  # integers stay as written


@pytest.mark.parametrize("bad", ["../../x", "a/b", ".hidden", "x..y"])
def test_table_id_must_be_a_plain_name(bad):
    cfg = compose(f"table.id={bad}")
    apply_scale(cfg)
    with pytest.raises(ConfigError, match="table.id=.*must be a plain name"):
        validate(cfg)


def test_k_is_checked_against_what_it_counts():
    ok = compose("method=lora_moe", "method.routing=topk", "method.k=4", "method.r=2")  # k experts, rank 2: fine
    apply_scale(ok)
    validate(ok)
    for overrides, bound in ((["method=smora", "method.r=4", "method.k=8"], "method.r=4"),
                             (["method=lora_moe", "method.routing=topk", "method.k=9"], "method.num_experts=8")):
        cfg = compose(*overrides)
        apply_scale(cfg)
        with pytest.raises(ConfigError, match=f"method.k=.*must be at most {bound}"):
            validate(cfg)


class _Payload:
    """Any pickled object: a checkpoint holding one could run code when loaded with weights_only=False."""


def test_a_checkpoint_holding_code_is_set_aside_not_loaded(tmp_path):
    import torch

    from rankmix.train import _resumable_checkpoint

    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "config_hash.txt").write_text("abc\n")
    torch.save({"state_dict": {}, "payload": _Payload()}, tmp_path / "checkpoints" / "last.ckpt")
    assert _resumable_checkpoint(tmp_path, "abc") is None
    assert (tmp_path / "checkpoints" / "last.ckpt.unreadable").is_file()
