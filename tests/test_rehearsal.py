"""The rehearsal of the paper path: row selection, overrides (only paths and length), projections, and the
``rehearse``-marked run of one row per table family on stand-ins and real-layout data."""

from __future__ import annotations

import json
import re

import pytest

from rankmix.rehearsal import memory, projection
from rankmix.rehearsal import run as rr

HUB_7B = "meta-llama/Llama-2-7b-hf"


def _row(table="smora-1", exp="smora-1/smora_64_8", family="SMoRA FLAN", method="smora", task="flan"):
    return rr.Row(table, exp, family, method, "llama2_7b", task)


def test_rehearsal_overrides_change_only_paths_device_and_length():
    data = {"task.datamodule.source.test_file": "/r/combined_test.json",
            "task.datamodule.source.train_dir": "/r/train"}
    out = rr.rehearsal_overrides(_row(), {"name_or_path": HUB_7B}, {HUB_7B: "/s/llama"}, data, gpu=False)
    assert not any(o.startswith("trainer=") for o in out)   # the default trainer is the CPU's
    assert "task.datamodule.source.test_file=/r/combined_test.json" in out
    assert "task.datamodule.source.train_dir=/r/train" in out
    assert "backbone.name_or_path=/s/llama" in out
    length = rr.length_overrides("flan")
    assert out[-len(length):] == length and all(o.startswith(("++trainer.", "++task.datamodule.max_eval")) for o in length)
    extra = [o for o in out if o not in length and not o.startswith(("trainer=", "backbone.", "task."))]
    assert extra == []


def test_gpu_rows_run_on_the_gpu_trainer():
    assert rr.rehearsal_overrides(_row(), {}, {}, {}, gpu=True)[0] == "trainer=gpu"


def test_pretrained_parts_of_a_vision_text_backbone():
    cfg = rr.compose_paper(rr.Row("routing-1", "routing-1/lora_64_none", "VQA", "routing", "vit_roberta", "vqa"))
    assert rr.pretrained_parts(cfg["backbone"]) == {"vision.name_or_path": "google/vit-base-patch16-224-in21k",
                                                     "text.name_or_path": "FacebookAI/roberta-base"}
    sdxl = rr.compose_paper(rr.Row("moslora-6", "moslora-6/moslora", "dreambooth", "moslora", "sdxl", "dreambooth"))
    assert rr.pretrained_parts(sdxl["backbone"]) == {"name_or_path": "stabilityai/stable-diffusion-xl-base-1.0",
                                                      "vae": "madebyollin/sdxl-vae-fp16-fix"}


def test_family_selection_takes_the_papers_method():
    rows = [_row(exp="smora-1/lora_64", method="lora"), _row(), _row(exp="smora-1/moslora", method="moslora"),
            rr.Row("smola-a1", "smola-a1/frozen", "SMoLA", "none", "clip_bart", "vl_multitask"),
            rr.Row("smola-a1", "smola-a1/smola_o_4", "SMoLA", "smola", "clip_bart", "vl_multitask")]
    assert [r.experiment for r in rr.select(rows, "family")] == ["smora-1/smora_64_8", "smola-a1/smola_o_4"]
    assert len(rr.select(rows, "one")) == 5 and len(rr.select(rows, "all")) == 5


def test_the_error_line_is_the_one_that_says_what_went_wrong():
    log = "Epoch 0: 100%\nTraceback (most recent call last):\n  File x\nKeyError: 'inputs'\nSet HYDRA_FULL_ERROR=1\n"
    assert rr.last_error(log) == "KeyError: 'inputs'"
    assert rr.last_error("x\nrankmix: error: method.r=0: must be a positive integer\n").startswith("rankmix: error:")


def test_half_precision_on_a_cpu_runs_in_fp32_with_a_notice(capsys):
    from rankmix.config import compose_run
    from rankmix.fit import cpu_fallback

    cfg = compose_run(["experiment=smora-1/smora_64_8", "scale=paper"])
    assert cfg.trainer.precision == "bf16-mixed" and cfg.backbone.dtype == "bfloat16"
    assert cpu_fallback(cfg) == {"trainer.precision": ["bf16-mixed", "32-true"],
                                 "backbone.dtype": ["bfloat16", "float32"]}
    assert cfg.trainer.precision == "32-true" and cfg.backbone.dtype == "float32"
    assert "bf16-mixed -> 32-true" in capsys.readouterr().err
    gpu = compose_run(["experiment=smora-1/smora_64_8", "scale=paper", "trainer=gpu"])
    assert cpu_fallback(gpu) == {} and gpu.trainer.precision == "bf16-mixed"
    tiny = compose_run(["experiment=smora-1/smora_64_8"])
    assert cpu_fallback(tiny) == {}


def test_every_readme_paper_command_reads_only_paths_the_rehearsal_writes(tmp_path):
    """The README's paper commands name the data a table reads; the rehearsal writes each of those paths itself (it
    reads the row's config, not the README), so a path a README command needs and no writer makes is a gap."""
    from conftest import REPO
    from rankmix.table_rows import all_tables

    found = re.findall(r'make reproduce-table-([a-z0-9-]+) SCALE=paper ARGS="([^"]*)"', (REPO / "README.md").read_text())
    assert {"smora-1", "moslora-4", "routing-1", "routing-4"} <= {t for t, _ in found}
    for table, args in found:
        first = all_tables()[table][0]
        composed = rr.compose_paper(rr.Row(table, first, "", "", "", ""))
        task = composed["task"]["name"]
        data = rr.written_data(task, composed, tmp_path / task)
        paths = [a.split("=", 1)[0] for a in args.split() if "/data/" in a]
        assert all(p in data for p in paths), (table, paths, list(data))
        out = rr.rehearsal_overrides(rr.Row(table, first, "", "", "", task), {}, {}, data, gpu=False)
        assert not any("/data/" in o for o in out), (table, out)


# One table of each family; those with a README paper command run with its arguments.
CI_TABLES = ["smora-1", "moslora-4", "routing-1", "routing-4", "routing-7", "smola-a1"]
CHANGED_BY_REHEARSAL = re.compile(
    r"^(paths\.|rerun$|data_fingerprint|callbacks\.\w+\.dirpath$|callbacks\.progress\.|logger\.\w+\.save_dir$"
    r"|trainer\.(max_steps|limit_\w+_batches)$|task\.datamodule\.max_eval_samples|method\.total_step$"
    r"|.*name_or_path$|task\.datamodule\.(data_dir|images_dir|features(\.\w+)?|source\.(test_file|train_dir|train_file"
    r"|test_dir))$)")


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) and v else {f"{prefix}{k}": v})
    return out


def test_a_stopped_rehearsal_keeps_the_rows_it_ran(tmp_path, monkeypatch):
    """The report and its JSON are written after each row, so a rehearsal stopped at its second row keeps its first."""
    calls = []

    def run_row(row, overrides, work, timeout):
        calls.append(row.experiment)
        if len(calls) == 2:
            raise KeyboardInterrupt   # the session stops here
        return {"status": "pass", "seconds": 1.0, "rc": 0}

    monkeypatch.setattr(rr, "run_row", run_row)
    monkeypatch.setattr(rr, "written_data", lambda *a: {})
    monkeypatch.setattr(rr, "pretrained_parts", lambda backbone: {})
    monkeypatch.setattr(projection, "project", lambda config, parts: {})
    rows = [rr.Row("rankmix-ranks", f"rankmix-ranks/{r}", "generated tasks", "lora", "llama2_7b", "generated")
            for r in ("r2", "r4")]
    with pytest.raises(KeyboardInterrupt):
        rr.rehearse(rows, "reduced", tmp_path / "cpu.md", tmp_path / "work")
    kept = json.loads((tmp_path / "cpu.json").read_text())
    assert [r["experiment"] for r in kept] == ["rankmix-ranks/r2"] and "1/1 rows pass" in (tmp_path / "cpu.md").read_text()


@pytest.mark.slow
@pytest.mark.rehearse
def test_one_row_per_table_family_runs_at_paper_scale_on_stand_ins(tmp_path, monkeypatch):
    def not_committed(hub, *args, **kwargs):  # a full-width measurement takes minutes and up to 16 GiB
        raise AssertionError(f"{hub}: no committed activation measurement for this row's settings; run "
                             "`python -m rankmix.rehearsal --reproject results/rehearse/cpu.md` and commit "
                             "results/rehearse/activation-bytes/")

    monkeypatch.setattr(memory, "_layers", not_committed)
    rows = rr.select(rr.all_rows(CI_TABLES), "family")
    assert sorted(r.family for r in rows) == sorted(
        ["SMoRA FLAN", "MoSLoRA commonsense", "VQA", "COCO", "CLIP-BART", "SMoLA"])
    out = rr.rehearse(rows, "reduced", tmp_path / "cpu.md", tmp_path / "work", steps=1, examples=2, batches=1)
    text = out.read_text()
    assert [r.result["status"] for r in rows] == ["pass"] * len(rows), text
    for r in rows:  # what ran is the paper's row but for paths, length and the CPU's fp32
        run = r.result["run"]
        ran, paper = _flat(run["config"]), _flat(rr.compose_paper(r))
        fallback = run["train"].get("cpu_fallback", {})
        changed = {k for k in ran.keys() | paper.keys() if ran.get(k) != paper.get(k)} - set(fallback)
        assert not {k for k in changed if not CHANGED_BY_REHEARSAL.match(k)}, r.experiment
        assert all(paper[k] == requested and ran[k] == used for k, (requested, used) in fallback.items())
        assert run["train"]["global_step"] == 1 and run["params"]["trainable"] > 0
    assert "| `[INST] {inputs} [/INST]` |" in text and "bf16-mixed (CPU: 32-true)" in text
    smora = next(r for r in rows if r.family == "SMoRA FLAN").result["projection"]
    assert smora["total"] > 6.7e9 and 0 < smora["activated"] < smora["trainable"]   # Llama-2-7b, top-k of the ranks
    assert smora["checkpointing"] == "reentrant" and 0 < smora["memory_gib"] <= 80   # measured, fits an 80 GB card


def test_a_schedule_spanning_the_run_gets_the_shortest_length_its_phases_allow():
    method = rr.compose_paper(rr.Row("moslora-4", "moslora-4/adalora", "", "adalora", "", "commonsense"))["method"]
    out = rr.length_overrides("commonsense", method=method)
    assert f"method.total_step={method['tinit'] + method['tfinal'] + 1}" in out
    assert not any("total_step" in o for o in rr.length_overrides("flan", method={"name": "lora"}))


def test_a_partial_rehearsal_replaces_its_rows_of_the_report_even_under_their_old_paths(tmp_path):
    from rankmix.rehearsal.run import Row, merged

    def row(table, experiment, status):
        return Row(table=table, experiment=experiment, family="flan", method="lora", backbone="llama2_7b",
                   task="flan", result={"status": status})

    report = tmp_path / "cpu.json"
    merged([row("smora-1", "smora/1/lora_64", "fail"), row("smora-1", "smora/1/lora_8", "pass")], report)
    out = merged([row("smora-1", "smora-1/lora_64", "pass")], report)
    assert [(r.experiment, r.result["status"]) for r in out] == [("smora-1/lora_64", "pass"), ("smora/1/lora_8", "pass")]
