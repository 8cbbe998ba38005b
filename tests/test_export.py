"""``python -m rankmix.export``: a trained run as peft, transformers and lm-eval read it, scoring what the suite scored.

One tiny LoRA run and one tiny SMoRA run (module-scoped) are exported; lm-eval's ``simple_evaluate`` over the
exported task group must give the run's own ``test/em`` and the same prediction for every test record: the merged
LoRA model through ``HFLM(pretrained=<folder>)``, the SMoRA adapter through ``HFLM(pretrained=rankmix.peft.
from_pretrained(...))``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import OFFLINE_ENV, REPO, fast, run_train

pytestmark = pytest.mark.slow

# Short, but trained far enough that some answers are right and some wrong (a score of 0 or 100 would agree by luck).
RUN = fast(trainer__max_epochs=6, task__datamodule__source__tasks="[first,last,copy]",
           task__datamodule__source__n_train=40, task__datamodule__source__n_test=8, optimizer__lr=1e-2)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    out = {}
    for method in ("lora", "smora"):
        run = run_train(root, *RUN, f"method={method}")
        assert run.returncode == 0, run.stderr[-3000:]
        key = next(p for p in (root / "runs" / "default").iterdir() if f"method={method}" in p.name)
        result = json.loads((key / "result.json").read_text())
        out[method] = (key, result)
    return root, out


def predictions(run_dir: Path) -> dict[str, list[str]]:
    """The run's test predictions per task, in record order."""
    by_task: dict[str, list[str]] = {}
    for line in (run_dir / "predictions.jsonl").read_text().splitlines():
        rec = json.loads(line)
        by_task.setdefault(rec["task"], []).append(rec["prediction"])
    return by_task


def lm_eval_scores(lm, include_path: Path) -> tuple[float, dict[str, list[str]]]:
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    res = simple_evaluate(model=lm, tasks=["rankmix"], task_manager=TaskManager(include_path=str(include_path)),
                          log_samples=True)
    preds = {}
    for samples in res["samples"].values():
        task = samples[0]["doc"]["task"]
        preds[task] = [s["filtered_resps"][0].strip() for s in sorted(samples, key=lambda s: s["doc_id"])]
    return res["results"]["rankmix"]["exact_match,none"], preds


def test_a_lora_run_exported_scores_the_suites_exact_match_in_lm_eval(runs, tmp_path):
    from lm_eval.models.huggingface import HFLM
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rankmix.export import export_run

    _, by_method = runs
    run_dir, result = by_method["lora"]
    record = export_run(run_dir, tmp_path / "out")
    out = tmp_path / "out"
    assert record["verified_test_loss"] == pytest.approx(result["metrics"]["test/loss"], rel=1e-4)
    assert {p.name for p in out.iterdir()} >= {"adapter", "base", "merged", "lm_eval", "export.json"}
    tok = AutoTokenizer.from_pretrained(out / "merged")
    assert tok("a b =>")["input_ids"][0] == tok.bos_token_id   # BOS first with no option given
    assert json.loads((out / "merged" / "tokenizer_config.json").read_text())["add_bos_token"] is True

    em, preds = lm_eval_scores(HFLM(pretrained=str(out / "merged"), batch_size=16, device="cpu"), out / "lm_eval")
    suite = result["metrics"]["test/em"]
    assert 0 < suite < 100
    assert 100 * em == pytest.approx(suite, abs=1e-4)
    assert preds == predictions(run_dir)

    # the adapter loads in plain peft over the exported base and computes what the merged model computes
    ids = tok(["a b c =>", "c =>"], return_tensors="pt", padding=True)
    merged = AutoModelForCausalLM.from_pretrained(out / "merged").eval()
    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(out / "base"), out / "adapter").eval()
    base = AutoModelForCausalLM.from_pretrained(out / "base").eval()
    with torch.no_grad():
        a, m, b = (model(**ids).logits for model in (adapted, merged, base))
    assert torch.allclose(a, m, atol=1e-5)
    assert not torch.allclose(a, b, atol=1e-3)   # the adapter changes the model


def test_a_smora_run_exported_scores_the_suites_exact_match_through_rankmix_peft(runs, tmp_path):
    from lm_eval.models.huggingface import HFLM
    from transformers import AutoModelForCausalLM

    import rankmix.peft
    from rankmix.export import export_run

    _, by_method = runs
    run_dir, result = by_method["smora"]
    out = tmp_path / "out"
    record = export_run(run_dir, out)
    assert record["merged"] is None and "cannot be merged" in record["not_merged"]
    assert not (out / "merged").exists()
    config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert config["lora_alpha"] == result["config"]["method"]["alpha"] == config["rankmix"]["options"]["alpha"]

    model = rankmix.peft.from_pretrained(AutoModelForCausalLM.from_pretrained(out / "base"), out / "adapter")
    for batch_size in (16, 1):   # batch composition and padding change no routing decision
        em, preds = lm_eval_scores(HFLM(pretrained=model, tokenizer=str(out / "adapter"), batch_size=batch_size,
                                        device="cpu"), out / "lm_eval")
        assert 100 * em == pytest.approx(result["metrics"]["test/em"], abs=1e-4)
        assert preds == predictions(run_dir)


def test_the_export_refuses_a_base_model_other_than_the_runs(runs, tmp_path):
    from rankmix.errors import RankmixError
    from rankmix.export import export_run

    _, by_method = runs
    run_dir, _ = by_method["lora"]
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns(".lock"))
    result = json.loads((copy / "result.json").read_text())
    result["config"]["backbone"]["init_seed"] = 1   # another random init than the run's
    (copy / "result.json").write_text(json.dumps(result))
    with pytest.raises(RankmixError, match="test loss"):
        export_run(copy, tmp_path / "out")


def test_the_command_line_exports_and_refuses_in_one_line(runs, tmp_path):
    _, by_method = runs
    run_dir, _ = by_method["smora"]
    env = {**OFFLINE_ENV, "PATH": "/usr/bin:/bin"}
    cmd = [sys.executable, "-m", "rankmix.export"]
    ok = subprocess.run([*cmd, str(run_dir), str(tmp_path / "out"), "--no-verify"], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert "rankmix.peft.from_pretrained" in ok.stdout and "no merged model" in ok.stdout
    again = subprocess.run([*cmd, str(run_dir), str(tmp_path / "out")], cwd=REPO, env=env, capture_output=True,
                           text=True, timeout=300)
    assert again.returncode == 2 and again.stderr.strip().splitlines()[-1].startswith("rankmix: error:")
    assert "not empty" in again.stderr
    missing = subprocess.run([*cmd, str(tmp_path), str(tmp_path / "o2")], cwd=REPO, env=env, capture_output=True,
                             text=True, timeout=300)
    assert missing.returncode == 2 and "result.json: not found" in missing.stderr


def test_smoras_exported_config_states_the_alpha_its_layer_uses(tmp_path):
    """An option left at its default (α = 16 for r = 8) is written, and the loaded layer scales by it."""
    from torch import nn

    import rankmix.peft
    from rankmix.adapters import build, export_peft

    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(6, 6)

        def forward(self, x):
            return self.proj(x)

    torch.manual_seed(0)
    model = Tiny()
    model.proj = build("smora", model.proj, r=8, k=2)
    with torch.no_grad():
        model.proj.lora_B.weight.normal_()
    export_peft(model, tmp_path / "a")
    config = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    assert model.proj.alpha == 16.0
    assert config["lora_alpha"] == 16 and config["r"] == 8
    assert config["rankmix"]["options"]["alpha"] == 16 and config["rankmix"]["options"]["gate"] == "sigmoid"
    torch.manual_seed(1)
    fresh = Tiny()
    fresh.proj.load_state_dict(model.proj.base_layer.state_dict())
    loaded = rankmix.peft.from_pretrained(fresh, tmp_path / "a")
    x = torch.randn(3, 6)
    assert torch.allclose(loaded(x), model(x), atol=1e-6)
