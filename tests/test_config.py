"""The config tree: every group option composes, scale selection, validation, run identity."""

import pytest
from hydra.errors import MissingConfigException
from hydra.utils import instantiate
from omegaconf import OmegaConf, open_dict

from conftest import REPO, compose
from rankmix.config import config_hash, run_key, validate
from rankmix.distributed import check_strategy
from rankmix.errors import ConfigError


@pytest.mark.parametrize("group", ["method", "backbone", "task", "trainer", "logger", "callbacks", "paths"])
def test_every_option_composes(group):
    options = sorted(p.stem for p in (REPO / "conf" / group).glob("*.yaml") if p.stem != "default" or group == "paths")
    for opt in options:
        for scale in ("tiny", "paper"):
            cfg = (compose(f"{group}={opt}", f"scale={scale}"))
            with open_dict(cfg):
                cfg.pop("hydra")
            OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves


def test_scale_selects_the_scaled_configs():
    tiny = (compose("scale=tiny"))
    paper = (compose("scale=paper"))
    assert tiny.backbone.source == "config" and tiny.backbone.config.hidden_size == 128
    assert paper.backbone.source == "pretrained" and paper.backbone.name_or_path == "meta-llama/Llama-2-7b-hf"
    assert paper.backbone.tokenizer.name_or_path == "meta-llama/Llama-2-7b-hf"
    assert tiny.trainer.max_epochs == tiny.task.max_epochs
    assert paper.task.datamodule.source.n_train > tiny.task.datamodule.source.n_train
    assert "tiny" not in tiny.backbone and "paper" not in tiny.task


def test_unknown_scale_is_refused():
    with pytest.raises(MissingConfigException, match="scale/huge"):
        compose("scale=huge")


def test_a_key_has_one_spelling_at_either_scale():
    cfg = compose("backbone=llama2_7b", "scale=paper", "backbone.name_or_path=/models/llama-2-7b")
    assert cfg.backbone.name_or_path == cfg.backbone.tokenizer.name_or_path == "/models/llama-2-7b"
    assert compose("task=flan", "scale=paper", "task.datamodule.source.test_file=/d/t.json"
                   ).task.datamodule.source.test_file == "/d/t.json"
    assert compose("task.max_epochs=3").trainer.max_epochs == 3  # the trainer reads the task's epochs


@pytest.mark.parametrize("override", ["++task.paper.max_epochs=3", "++optimizer.tiny.lr=0.1"])
def test_a_leftover_scale_block_is_refused(override):
    with pytest.raises(ConfigError, match=r"scale blocks are not read: set (task|optimizer)\.<key>"):
        validate(compose(override))


def test_the_run_key_leaves_out_what_the_hash_leaves_out():
    """conf/train.yaml's run-key exclusions are config-group choices or keys of config.EXECUTION (one list of what
    does not change a run), and every EXECUTION key a command line sets is excluded."""
    from rankmix.config import EXECUTION

    excluded = OmegaConf.load(REPO / "conf" / "train.yaml").hydra.job.config.override_dirname.exclude_keys
    groups = {p.name for p in (REPO / "conf").iterdir() if p.is_dir()} | {"hydra/launcher"}
    for key in excluded:
        assert key in groups or any(key == e or key.startswith(e + ".") for e in EXECUTION), key
    for key in EXECUTION:
        if key.startswith("trainer."):
            assert key in excluded, key
    cfg = compose("trainer.devices=1", "paths.cache_dir=/elsewhere", "logger=wandb")
    assert config_hash(cfg) == config_hash(compose())


def test_by_scale_picks_the_running_scale():
    tiny, paper = (compose("experiment=smora-1/lora_64", f"scale={s}") for s in ("tiny", "paper"))
    assert (tiny.optimizer.lr, paper.optimizer.lr) == (3e-3, 1e-4)
    assert (tiny.trainer.precision, paper.trainer.precision) == ("32-true", "bf16-mixed")
    assert compose("experiment=smora-1/lora_64", "scale=paper", "optimizer.lr=2e-4").optimizer.lr == 2e-4


def test_experiment_is_a_global_diff():
    cfg = (compose("experiment=rankmix-ranks/r4"))
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
    cfg = (compose(*overrides))
    with pytest.raises(ConfigError) as e:
        validate(cfg)
    assert e.value.key == key


def test_k_within_r_passes():
    validate(compose("method=smora", "method.k=8", "method.r=8"))


def test_hash_ignores_where_and_how_a_run_executes():
    base = config_hash(compose())
    assert config_hash(compose("trainer=ddp_sim", "logger=wandb", "paths.runs_dir=/elsewhere")) == base
    assert config_hash(compose("method.r=4")) != base
    assert config_hash(compose("seed=1")) != base


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

    cfg = (compose("trainer=fsdp"))
    strategy = instantiate(cfg.trainer.strategy, _convert_="all")
    assert isinstance(strategy, FSDPStrategy)
    assert strategy.kwargs["use_orig_params"] is True
    assert LlamaDecoderLayer in strategy.kwargs["auto_wrap_policy"]._module_classes


def test_deepspeed_without_package_is_a_config_error():
    pytest.importorskip("lightning")
    try:
        import deepspeed  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError, match=r"pip install -e '\.\[deepspeed\]'"):
            check_strategy("deepspeed_stage_2")
    else:
        check_strategy("deepspeed_stage_2")


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
    assert run_key("backbone.x=1,experiment=smora-1/lora_64,++task.a.b=2") == "lora_64,backbone.x=1,task.a.b=2"
    assert run_key("optimizer.lr=3e-3") == run_key("optimizer.lr=0.003") == "optimizer.lr=0.003"
    assert run_key("seed=2,method.r=4") == "seed=2,method.r=4"  # integers stay as written


@pytest.mark.parametrize("bad", ["../../x", "a/b", ".hidden", "x..y"])
def test_table_id_must_be_a_plain_name(bad):
    cfg = compose(f"table.id={bad}")
    with pytest.raises(ConfigError, match="table.id=.*must be a plain name"):
        validate(cfg)


def test_k_is_checked_against_what_it_counts():
    ok = compose("method=lora_moe", "method.routing=topk", "method.k=4", "method.r=2")  # k experts, rank 2: fine
    validate(ok)
    for overrides, bound in ((["method=smora", "method.r=4", "method.k=8"], "method.r=4"),
                             (["method=lora_moe", "method.routing=topk", "method.k=9"], "method.num_experts=8")):
        cfg = compose(*overrides)
        with pytest.raises(ConfigError, match=f"method.k=.*must be at most {bound}"):
            validate(cfg)


class _Payload:
    """Any pickled object: a checkpoint holding one could run code when loaded with weights_only=False."""


def test_a_checkpoint_holding_code_is_set_aside_not_loaded(tmp_path):
    import torch

    from rankmix.checkpoints import resumable_checkpoint

    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "config_hash.txt").write_text("abc\n")
    torch.save({"state_dict": {}, "payload": _Payload()}, tmp_path / "checkpoints" / "last.ckpt")
    assert resumable_checkpoint(tmp_path, "abc") is None
    assert (tmp_path / "checkpoints" / "last.ckpt.unreadable").is_file()


def test_the_trainer_is_instantiated_from_its_config_with_the_callbacks_of_one_place(tmp_path):
    """``trainer.*`` (less rankmix's own ``preflight``) through ``hydra.utils.instantiate``; the callbacks are
    ``cfg.callbacks`` (the SLURM requeue only in a SLURM job) plus the run's own."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    from rankmix.callbacks import EpochReseed, SlurmRequeue, TrainingModes
    from rankmix.config import check_trainer_keys
    from rankmix.fit import build_trainer

    cfg = compose("++trainer.preflight=false", "trainer.gradient_clip_val=0.5")
    check_trainer_keys(cfg)   # rankmix's own key is not a typo of a Trainer argument
    trainer = build_trainer(cfg, tmp_path)
    kinds = [type(c) for c in trainer.callbacks]
    assert TrainingModes in kinds and EpochReseed in kinds and ModelCheckpoint in kinds and SlurmRequeue not in kinds
    assert trainer.gradient_clip_val == 0.5 and trainer.accumulate_grad_batches == 1
    assert trainer.default_root_dir == str(tmp_path)
    assert not [c for c in trainer.callbacks if isinstance(c, ModelCheckpoint) and c.monitor]   # select_best: null

    cfg = compose("++trainer.preflight=false", "+task.select_best={monitor: val/loss, mode: min, every_n_steps: 3}")
    best = [c for c in build_trainer(cfg, tmp_path).callbacks if isinstance(c, ModelCheckpoint) and c.monitor]
    assert [(c.monitor, c.mode, c.filename) for c in best] == [("val/loss", "min", "best")]   # from conf/callbacks
