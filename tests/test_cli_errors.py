"""Bad configs fail before training with one clear line naming the key (no traceback)."""

import pytest
import torch
import yaml

from conftest import FAST, OFFLINE_ENV, run_train

CASES = [
    (["method=nope"], "Could not find 'method/nope'", "Available options in 'method'"),
    (["method.r=0"], "rankmix: error: method.r=0: must be a positive integer", None),
    (["+method.k=4"], "rankmix: error: method.k=4: not an option of lora", None),
    (["task.datamodule.data_dir=/does/not/exist"], "rankmix: error: task.datamodule.data_dir='/does/not/exist': directory not found",
     "train.jsonl"),
    (["method.target_modules=[qproj]"], "rankmix: error: method.target_modules=['qproj']: matches no layer",
     "q_proj, up_proj, v_proj"),
    (["method=routing", "method.fn=mul"], "rankmix: error: method.name='routing': reads x_r from each batch",
     "provides: attention_mask"),
    (["++trainer.max_stepz=5"], "rankmix: error: trainer.max_stepz=5: not an argument of Lightning's Trainer; "
     "did you mean trainer.max_steps?", None),
    pytest.param(["trainer=gpu"], "rankmix: error: trainer.accelerator='gpu': no CUDA GPU is visible on this "
                 "machine; use trainer=cpu here", None,
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible here")),
    (["scale=huge"], "Could not find 'scale/huge'", "Available options in 'scale'"),
    (["scale=paper"], "rankmix: error: backbone.name_or_path='meta-llama/Llama-2-7b-hf': could not be loaded",
     "hf download"),
]


@pytest.mark.parametrize(("overrides", "message", "detail"), CASES, ids=[(c.values if hasattr(c, "values") else c)[0][0] for c in CASES])
def test_bad_config_gives_one_clear_line(tmp_path, overrides, message, detail):
    r = run_train(tmp_path, *FAST, *overrides, timeout=180)
    assert r.returncode != 0
    assert message in r.stderr
    if detail:
        assert detail in r.stderr
    assert "Traceback" not in r.stderr
    assert not list(tmp_path.glob("runs/**/checkpoints/*.ckpt"))  # failed before training
    assert not list(tmp_path.glob("results/*/failed/*.json"))  # refused before training: not a run, no record


@pytest.mark.parametrize(("overrides", "expected"), [
    ([], {("trainer", "max_epochs"): 12, ("scale",): "tiny"}),  # ${task.max_epochs} of the tiny generated task
    (["experiment=smora-1/lora_64", "scale=paper"], {("optimizer", "lr"): 1e-4, ("trainer", "precision"): "bf16-mixed",
                                                     ("backbone", "name_or_path"): "meta-llama/Llama-2-7b-hf"}),
    (["experiment=routing-7/adapter_mul", "scale=paper"], {("trainer", "max_epochs"): 20, ("method", "activation"):
                                                           "gelu_new", ("backbone", "unfreeze"): "vl_adapter"}),
], ids=["default", "smora-1 paper", "routing-7 paper"])
def test_the_resolved_config_prints_before_anything_runs(tmp_path, overrides, expected):
    r = run_train(tmp_path, *overrides, "--cfg", "job", "--resolve")
    assert r.returncode == 0, r.stderr[-2000:]
    cfg = yaml.safe_load(r.stdout)
    for path, value in expected.items():
        node = cfg
        for key in path:
            node = node[key]
        assert node == value, path
    assert not list(tmp_path.glob("runs/*"))


def test_multirun_with_relaunching_ddp_is_refused(tmp_path):
    r = run_train(tmp_path, *FAST, "trainer=ddp", "trainer.accelerator=cpu", "method.r=4,8", multirun=True)
    assert "rankmix: error: trainer.strategy='ddp': re-launches the command line" in r.stderr
    assert "hydra/launcher=slurm" in r.stderr and "Traceback" not in r.stderr


def test_online_wandb_without_credentials_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setitem(OFFLINE_ENV, "WANDB_MODE", "online")
    r = run_train(tmp_path, *FAST, "logger=wandb")
    assert r.returncode == 1 and "WANDB_MODE=online needs WANDB_API_KEY" in r.stderr
