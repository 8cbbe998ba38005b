"""Every table's experiment rows compose at both scales, validate, and name existing paper cells."""

import pytest
from omegaconf import OmegaConf, open_dict

from conftest import REPO, compose
from rankmix.config import validate
from rankmix.table_rows import all_tables, row_overrides
from rankmix.tables import _number, paper_rows, paper_value

ROWS = [(table, row) for table, rows in all_tables().items() for row in rows]


def _resolved(row, scale, table=None):
    cfg = compose(*(row_overrides(table, row) if table else [f"experiment={row}"]), f"scale={scale}")
    validate(cfg)
    with open_dict(cfg):
        cfg.pop("hydra")
    return OmegaConf.to_container(cfg, resolve=True)


@pytest.mark.parametrize(("table", "row"), ROWS, ids=[r for _, r in ROWS])
def test_rows_compose_and_their_cells_exist(table, row):
    for scale in ("tiny", "paper"):
        c = _resolved(row, scale, table)
        assert c["table"]["id"] == table
        spec = c["table"]
        cells = spec["cells"] if spec.get("paper_csv") else []  # a table of ours: no paper cells to find
        if spec.get("skip_unmatched"):  # a row fills the cells the paper prints for it (at least one)
            cells = [cell for cell in cells
                     if paper_rows(REPO / "results" / "paper", spec["paper_csv"], {**spec["match"], **cell["match"]})]
            assert cells, f"{row}: no cell of the paper's table matches {spec['match']}"
        for cell in cells:
            value = paper_value(REPO / "results" / "paper", spec["paper_csv"], {**spec["match"], **cell["match"]},
                                cell.get("column"))
            # every cell has a printed paper number (in the cell's unit), or the text the paper prints instead
            assert _number(value, cell.get("unit")) is not None or (value and not any(ch.isdigit() for ch in value))


def test_smora_1_paper_settings():
    c = _resolved("smora-1/smora_64_8", "paper")
    assert c["backbone"]["name_or_path"] == "meta-llama/Llama-2-7b-hf" and c["backbone"]["dtype"] == "bfloat16"
    assert (c["method"]["r"], c["method"]["k"], c["method"]["alpha"], c["method"]["dropout"]) == (64, 8, 16, 0.0)
    assert set(c["method"]["target_modules"]) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert (c["optimizer"]["lr"], c["optimizer"]["schedule"], c["optimizer"]["warmup_ratio"]) == (1e-4, "cosine", 0.1)
    t = c["trainer"]
    assert (t["max_epochs"], t["accumulate_grad_batches"], t["precision"]) == (3, 16, "bf16-mixed")
    dm = c["task"]["datamodule"]
    assert (dm["batch_size"], dm["max_length"], dm["max_new_tokens"], dm["loss_on_prompt"]) == (8, 2048, 150, True)
    assert dm["prompt_template"] == "[INST] {inputs} [/INST]" and dm["source"]["n_train"] == 1000
    moe = _resolved("smora-1/moe_top1", "paper")["method"]
    assert (moe["num_experts"], moe["r"], moe["alpha"], moe["routing"]) == (8, 8, 16, "top1")
    assert _resolved("smora-1/moslora", "paper")["method"]["alpha"] == 128
    assert _resolved("smora-1/hydralora", "paper")["method"]["num_experts"] == 4


def test_moslora_paper_settings():
    c = _resolved("moslora-4/moslora", "paper")
    assert c["backbone"]["name_or_path"] == "meta-llama/Meta-Llama-3-8B-Instruct"
    m = c["method"]
    assert (m["r"], m["alpha"], m["dropout"], m["mixer_init"]) == (16, 32, 0.05, "kaiming")
    assert m["target_modules"] == ["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"]
    assert (c["optimizer"]["lr"], c["optimizer"]["warmup_steps"], c["optimizer"]["schedule"]) == (3e-4, 100, "linear")
    t = c["trainer"]
    assert (t["max_epochs"], t["accumulate_grad_batches"]) == (3, 4)
    task = c["task"]
    dm = task["datamodule"]
    assert (dm["batch_size"] * t["accumulate_grad_batches"], dm["max_length"], dm["overlong"]) == (16, 256, "truncate")
    assert (task["num_beams"], dm["max_new_tokens"], dm["loss_on_prompt"], dm["prompt_format"]) == (4, 32, True, "moslora")
    assert (dm["source"]["train_file"], dm["source"]["n_validation"], dm["source"]["seed"]) == ("zwhe99/commonsense_170k", 120, 42)
    assert _resolved("moslora-4/dora", "paper")["optimizer"]["lr"] == 1e-4
    assert (_resolved("moslora-4/dora_32", "paper")["method"]["r"], _resolved("moslora-1/lora_32", "paper")["method"]["alpha"]) == (32, 64)
    assert _resolved("moslora-3/orthogonal", "paper")["method"]["mixer_init"] == "orthogonal"
    fig4 = [_resolved(f"moslora-fig4/lora_{p}", s)["task"]["datamodule"]["source"]["train_fraction"]
            for p in ("12_5", "50") for s in ("tiny", "paper")]
    assert fig4 == [0.125, 0.125, 0.5, 0.5]


def test_smora_full_tables_read_the_scorers_task_keys():
    """Tab. 5/6 cells at paper scale name the metric keys the FLAN scorer writes for the test file's tasks."""
    from rankmix.data.flan import base_task, load_test
    from rankmix.metrics.flan import score_flan

    test = [{**r, "task": base_task(r["task"])} for r in load_test(REPO / "tests" / "fixtures" / "flan" / "combined_test.json")]
    written = {f"test/{k}" for k in score_flan([{**r, "prediction": r["targets"]} for r in test])}
    for table, row in (("smora-5", "smora-5/lora_16"), ("smora-6", "smora-1/smora_64_8")):
        cells = _resolved(row, "paper", table)["table"]["cells"]
        assert len(cells) == 56
        keys = {c["metric"] for c in cells}
        fixture_tasks = {r["task"] for r in test}
        assert {k for k in keys if k.split("/")[2] in fixture_tasks} <= written
        assert len({k.split("/")[2] for k in keys} & fixture_tasks) == len(fixture_tasks)  # every fixture task has a cell


def test_routing_vqa_paper_settings():
    c = _resolved("routing-1/adapter_128_mul", "paper")
    assert c["backbone"]["vision"]["name_or_path"] == "google/vit-base-patch16-224-in21k"
    assert c["backbone"]["text"]["name_or_path"] == "FacebookAI/roberta-base"
    assert (c["method"]["base"], c["method"]["fn"], c["method"]["r"], c["method"]["alpha"]) == ("adapter", "mul", 128, None)
    assert (c["optimizer"]["lr"], c["optimizer"]["warmup_ratio"], c["trainer"]["max_epochs"]) == (3e-4, 0.05, 20)
    dm = c["task"]["datamodule"]
    assert (dm["batch_size"], dm["image_size"], c["task"]["x_r"]) == (512, 224, "image")
    assert _resolved("routing-1/lora_64_none", "paper")["method"]["target_modules"] == []  # query, value by default


def test_routing_captioning_paper_settings():
    c = _resolved("routing-4/lora_128_mul", "paper")
    assert c["backbone"]["vision"]["name_or_path"] == "google/vit-base-patch16-224-in21k"
    assert c["backbone"]["language"]["name_or_path"] == "openai-community/gpt2"
    m = c["method"]
    assert (m["base"], m["fn"], m["r"], m["alpha"], m["target_modules"], m["fused_parts"]) == (
        "lora", "mul", 128, None, ["c_attn"], [True, False, True])
    assert (c["optimizer"]["lr"], c["optimizer"]["warmup_steps"], c["trainer"]["max_epochs"]) == (3e-5, 5000, 20)
    assert (c["task"]["datamodule"]["batch_size"], c["task"]["datamodule"]["max_length"], c["task"]["num_beams"]) == (40, 50, 5)
    adapter = _resolved("routing-4/adapter_64_proj", "paper")["method"]
    assert (adapter["base"], adapter["target_modules"], adapter["activation"]) == ("adapter", ["c_proj"], "gelu_new")
    large = _resolved("routing-b13/adapter_64_proj_large", "paper")["backbone"]
    assert (large["vision"]["name_or_path"], large["language"]["name_or_path"]) == (
        "google/vit-large-patch16-224-in21k", "openai-community/gpt2-medium")
    assert _resolved("routing-b12/adapter_64_add_large", "paper")["backbone"]["text"]["name_or_path"] == "FacebookAI/roberta-large"


def test_routing_clip_bart_paper_settings():
    c = _resolved("routing-7/adapter_mul", "paper")
    assert c["backbone"]["language"]["name_or_path"] == "facebook/bart-base" and c["backbone"]["feature_dim"] == 2048
    m = c["method"]
    assert (m["base"], m["fn"], m["r"], m["activation"], m["target_modules"]) == ("adapter", "mul", 96, "gelu_new",
                                                                               ["out_proj", "fc2"])
    o = c["optimizer"]
    assert (o["lr"], o["weight_decay"], o["warmup_ratio"], o["eps"]) == (1e-3, 0.01, 0.1, 1e-6)
    assert (c["trainer"]["gradient_clip_val"], c["trainer"]["max_epochs"]) == (5.0, 20)
    dm = c["task"]["datamodule"]
    assert (dm["batch_size"], dm["n_boxes"], dm["tasks"], c["task"]["caption_beams"]) == (
        500, 36, ["vqa", "gqa", "nlvr", "caption"], 5)
    assert _resolved("routing-7/lora_none", "paper")["method"]["target_modules"] == ["q_proj", "v_proj"]
    assert "caption_warm_start" not in c["backbone"]  # BART-base is text-only at paper scale, as in VL-Adapter


def test_multiple_adapters_seeds_and_smola_paper_settings():
    comb1, mul = _resolved("routing-8/comb1", "paper"), _resolved("routing-8/mul", "paper")
    assert comb1["method"]["name"] == "multi_adapter" and comb1["method"]["r"] == 96
    assert comb1["method"]["fns"] == {"vqa": "mul", "gqa": "mul", "nlvr": "proj", "caption": "matmul"}
    assert (comb1["optimizer"]["lr"], mul["optimizer"]["lr"]) == (1e-3, 3e-4)  # Tab. A9
    assert _resolved("routing-8/comb4", "paper")["method"]["fns"]["nlvr"] == "mul"
    c15 = _resolved("routing-c15/multi_comb3", "paper")
    assert c15["table"]["seeds"] == [0, 1, 2] and c15["table"]["match"]["peft_setting"] == "multiple Adapters"
    assert c15["method"] == _resolved("routing-8/comb3", "paper")["method"]
    smola = _resolved("smola-a1/smola_o_48", "paper")
    assert (smola["method"]["variant"], smola["method"]["num_experts"], smola["method"]["r"]) == ("o", 48, 4)
    assert smola["method"]["target_modules"] == [r"re:model\.encoder\.layers\.\d+\.self_attn\.out_proj"]
    assert smola["backbone"]["language"]["name_or_path"] == "facebook/bart-base"
    assert _resolved("smola-a1/lora_1536", "paper")["method"]["r"] == 1536
    assert _resolved("smola-a1/frozen", "paper")["method"]["name"] == "none"
