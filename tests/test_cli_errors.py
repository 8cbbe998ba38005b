"""Bad configs fail before training with one clear line naming the key (no traceback)."""

import pytest

from conftest import FAST, run_train

CASES = [
    (["method=nope"], "Could not find 'method/nope'", "Available options in 'method'"),
    (["method.r=0"], "rankmix: error: method.r=0: must be a positive integer", None),
    (["+method.k=4"], "rankmix: error: method.k=4: not an option of lora", None),
    (["task.datamodule.data_dir=/does/not/exist"], "rankmix: error: task.data_dir='/does/not/exist': directory not found",
     "train.jsonl"),
    (["method.target_modules=[qproj]"], "rankmix: error: method.target_modules=['qproj']: matches no layer",
     "q_proj, up_proj, v_proj"),
    (["scale=huge"], "rankmix: error: scale='huge': must be one of tiny, paper", None),
    (["scale=paper"], "rankmix: error: backbone.tokenizer.name_or_path='meta-llama/Llama-2-7b-hf': could not be loaded",
     "hf download"),
]


@pytest.mark.parametrize(("overrides", "message", "detail"), CASES, ids=[c[0][0] for c in CASES])
def test_bad_config_gives_one_clear_line(tmp_path, overrides, message, detail):
    r = run_train(tmp_path, *FAST, *overrides, timeout=180)
    assert r.returncode != 0
    assert message in r.stderr
    if detail:
        assert detail in r.stderr
    assert "Traceback" not in r.stderr
    assert not list(tmp_path.glob("runs/**/checkpoints/*.ckpt"))  # failed before training
