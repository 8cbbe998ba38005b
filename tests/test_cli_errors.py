"""Bad configs fail before training with one clear line naming the key (no traceback)."""

import pytest

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
    (["scale=huge"], "rankmix: error: scale='huge': must be one of tiny, paper", None),
    (["scale=paper"], "rankmix: error: backbone.name_or_path='meta-llama/Llama-2-7b-hf': could not be loaded",
     "hf download"),
]


@pytest.mark.parametrize(("overrides", "message", "detail"), CASES, ids=[c[0][0] for c in CASES])
def test_bad_config_gives_one_clear_line(tmp_path, overrides, message, detail):
    fast = [o for o in FAST if ".tiny." not in o] if "scale=paper" in overrides else FAST  # tiny keys are refused there
    r = run_train(tmp_path, *fast, *overrides, timeout=180)
    assert r.returncode != 0
    assert message in r.stderr
    if detail:
        assert detail in r.stderr
    assert "Traceback" not in r.stderr
    assert not list(tmp_path.glob("runs/**/checkpoints/*.ckpt"))  # failed before training


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
