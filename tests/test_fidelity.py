"""Paper-scale fidelity: each table's paper rows carry the paper's settings (or, where the paper is silent, the
official code's), as ``docs/protocol.md`` lists them with their sources. Composed exactly as a run composes them."""

import re
from functools import cache

import pytest
from omegaconf import OmegaConf

from conftest import REPO
from rankmix.config import compose_run
from rankmix.errors import ConfigError
from rankmix.table_rows import all_tables, multirun_overrides, row_name, row_overrides
from rankmix.tables import show_row


@cache
def row(name: str, scale: str = "paper", *extra: str) -> dict:
    """Row ``<table>/<row>``: its own experiment file or a row the table reuses."""
    table, short = name.split("/")
    overrides = row_overrides(table, row_name(table, short))
    return OmegaConf.to_container(compose_run([*overrides, f"scale={scale}", *extra]), resolve=True)


# -- SMoRA (official config_flan/llama2_{7b,13b}/*.yaml, trained with LLaMA-Factory) ---------------------------
@pytest.mark.parametrize(("name", "alpha"), [
    ("smora-1/lora_64", 128), ("smora-1/lora_8", 16), ("smora-1/lora_64_13b", 128), ("smora-5/lora_16", 32),
    ("smora-5/lora_32", 64), ("smora-6/lora_64", 128), ("smora-fig7/lora_2", 4), ("smora-fig7/lora_4", 8),
    ("smora-fig7/lora_16", 32), ("smora-fig7/lora_32", 64), ("smora-1/smora_64_8", 16), ("smora-1/moslora", 128),
])
def test_smora_lora_alpha_is_llama_factorys_two_r_where_the_config_leaves_it_unset(name, alpha):
    assert row(name)["method"]["alpha"] == alpha


@pytest.mark.parametrize(("name", "accumulation"), [
    ("smora-1/smear", 64), ("smora-5/smear", 64), ("smora-1/smear_13b", 16), ("smora-6/smear", 16),
    ("smora-1/lora_64", 16), ("smora-1/smora_64_8", 16), ("smora-1/hydralora", 16),
])
def test_smora_gradient_accumulation_per_official_file(name, accumulation):
    c = row(name)
    assert (c["trainer"]["accumulate_grad_batches"], c["task"]["datamodule"]["batch_size"]) == (accumulation, 8)


def test_smora_shared_setting_and_flan_protocol():
    c = row("smora-1/lora_64")
    dm = c["task"]["datamodule"]
    assert (dm["max_length"], dm["overlong"], dm["loss_on_prompt"], dm["max_new_tokens"]) == (2048, "llama_factory", True, 150)
    assert c["task"]["scorer_options"] == {"rouge_package": "rouge"}
    assert (c["optimizer"]["lr"], c["optimizer"]["schedule"], c["optimizer"]["warmup_ratio"]) == (1e-4, "cosine", 0.1)
    assert (c["trainer"]["max_epochs"], c["trainer"]["precision"], c["method"]["dropout"]) == (3, "bf16-mixed", 0.0)


def test_smora_tab1_has_both_backbone_blocks():
    rows = [r for r in all_tables()["smora-1"] if not r.endswith("untrained")]
    labels = {}
    for name in rows:
        c = row(name)
        labels.setdefault(c["backbone"]["paper_label"], set()).add(c["table"]["match"]["method"])
    assert set(labels) == {"Llama2-7b", "Llama2-13b"} and labels["Llama2-7b"] == labels["Llama2-13b"]
    assert len(labels["Llama2-13b"]) == 9
    assert row("smora-1/smora_64_8_13b")["backbone"]["name_or_path"] == "meta-llama/Llama-2-13b-hf"


def test_smora_fig2a_uses_block_experts_with_a_constant_per_rank_scale():
    for p in (1, 2, 4, 8, 16):
        m = row(f"smora-fig2a/rank{p}_experts{64 // p}")["method"]
        assert (m["gate"], m["rank_partition"], m["r"], m["k"], m["alpha"]) == ("sigmoid", p, 64, 16, 16)
    # its 64-rank / 16-active point is Fig. 7's SMoRA-64-16, at both scales
    for scale in ("tiny", "paper"):
        assert row("smora-fig2a/rank1_experts64", scale)["method"] == row("smora-fig7/smora_64_16", scale)["method"]


def test_smora_rows_count_padding_as_the_official_layer():
    for name in ("smora-1/smora_64_8", "smora-fig5/balanced", "smora-fig7/smora_64_8"):
        assert row(name)["method"]["count_padding"] is True
        assert row(name, "tiny")["method"]["count_padding"] is False


# -- MoSLoRA (commonsense_reasoning/finetune.py, train_moslora.sh; App. B.1) -----------------------------------
def test_moslora_adalora_starts_and_ends_at_rank_16():
    m = row("moslora-4/adalora")["method"]
    assert (m["r"], m["init_r"]) == (16, 16)


@pytest.mark.parametrize("name", ["moslora-1/lora_16", "moslora-3/kaiming", "moslora-4/moslora", "moslora-fig4/lora_50"])
def test_moslora_tests_the_best_checkpoint_on_held_out_loss(name):
    c = row(name)
    assert c["task"]["select_best"] == {"monitor": "val/loss", "mode": "min", "every_n_steps": 200, "generate": False}
    assert c["task"]["datamodule"]["source"]["n_validation"] == 120
    assert row(name, "tiny")["task"]["select_best"] is None   # tiny: the final weights


# -- Routing functions and Omni-SMoLA on CLIP-BART (VL-Adapter), ViT + RoBERTa / GPT-2 (Routing_VLPEFT) ---------
def test_clip_bart_trains_vl_adapters_extra_parameters():
    lora, adapter, multi = row("routing-7/lora_proj"), row("routing-7/adapter_proj"), row("routing-8/comb1")
    assert {c["backbone"]["unfreeze"] for c in (lora, adapter, multi)} == {"vl_adapter"}
    assert (lora["method"]["dropout"], lora["method"]["alpha"]) == (0.1, None)  # alpha = r (the paper's Sec. 4.2)
    for c in (adapter, multi):
        assert (c["method"]["activation"], c["method"]["init"]) == ("gelu_new", "default")
    assert (lora["optimizer"]["eps"], lora["trainer"]["gradient_clip_val"], lora["optimizer"]["weight_decay"]) == (1e-6, 5.0, 0.01)
    assert (lora["task"]["caption_max_tokens"], lora["task"]["answer_max_tokens"]) == (19, 19)
    assert row("smola-a1/lora_128")["backbone"]["unfreeze"] == []


def test_smola_rows_adapt_the_encoders_attention_output():
    for name in ("smola-a1/lora_128", "smola-a1/smola_o_16", "smola-mm/smola_mm_32"):
        assert row(name)["method"]["target_modules"] == [r"re:model\.encoder\.layers\.\d+\.self_attn\.out_proj"]
    assert row("smola-mm/smola_mm_32")["method"]["variant"] == "mm"


def test_routing_vqa_and_coco_optimizer_as_the_official_code():
    for name in ("routing-1/lora_64_proj", "routing-4/lora_64_proj"):
        c = row(name)
        assert (c["optimizer"]["eps"], c["trainer"]["gradient_clip_val"], c["method"]["dropout"]) == (1e-6, None, 0.0)
    assert (row("routing-4/lora_64_proj")["task"]["max_new_tokens"], row("routing-4/lora_64_proj")["task"]["num_beams"]) == (20, 5)


@pytest.mark.parametrize("name", ["routing-1/lora_64_proj", "routing-7/lora_proj", "smora-1/lora_64", "moslora-4/moslora"])
def test_choosing_a_device_changes_no_paper_setting(name):
    cpu, gpu = row(name, "paper", "trainer=cpu"), row(name, "paper", "trainer=gpu")
    assert gpu["trainer"]["accelerator"] == "gpu"
    assert {k: v for k, v in cpu["trainer"].items() if k != "accelerator"} == \
           {k: v for k, v in gpu["trainer"].items() if k != "accelerator"}
    assert cpu["trainer"]["precision"] == ("32-true" if name.startswith("routing") else "bf16-mixed")


# -- command-line overrides at paper scale ------------------------------------------------------------------------
def test_a_command_line_value_beats_the_scaled_config():
    c = row("smora-1/lora_64", "paper", "optimizer.lr=1e-5", "trainer.precision=32-true",
            "trainer.accumulate_grad_batches=2", "++task.datamodule.batch_size=2", "backbone.name_or_path=/models/l")
    assert (c["optimizer"]["lr"], c["trainer"]["precision"], c["trainer"]["accumulate_grad_batches"]) == (1e-5, "32-true", 2)
    assert c["task"]["datamodule"]["batch_size"] == 2
    assert c["backbone"]["name_or_path"] == c["backbone"]["tokenizer"]["name_or_path"] == "/models/l"
    assert row("smora-1/lora_64", "paper", "task.datamodule.batch_size=3")["task"]["datamodule"]["batch_size"] == 3


def test_a_value_written_in_an_old_scale_block_is_refused():
    with pytest.raises(ConfigError, match=r"task\.paper=.*scale blocks are not read: set task\.<key>"):
        compose_run(["experiment=smora-1/lora_64", "scale=paper", "++task.paper.datamodule.batch_size=3"])


# -- the README's paper commands and the keys error messages name -------------------------------------------------
README_PAPER = re.compile(r'make reproduce-table-([a-z0-9-]+) SCALE=paper ARGS="([^"]*)"')


def test_every_readme_paper_command_composes_as_its_multirun_would():
    from hydra import compose, initialize_config_dir

    commands = README_PAPER.findall((REPO / "README.md").read_text())
    assert len(commands) >= 5
    for table, args in commands:
        overrides = multirun_overrides(["scale=paper", *args.split()])
        with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
            compose("train", overrides=overrides)  # Hydra's first compose of a multirun: the default config
        for name in all_tables()[table][:2]:
            c = OmegaConf.to_container(compose_run([*row_overrides(table, name), *overrides]), resolve=True)
            for item in args.split():
                key, _, value = item.partition("=")
                if "." in key and not key.startswith("trainer"):
                    flat = key.lstrip("+").replace(".paper.", ".")
                    assert OmegaConf.select(OmegaConf.create(c), flat) == value, (table, name, key)


@pytest.mark.parametrize(("name", "key"), [
    ("smora-1/lora_64", "task.datamodule.source.test_file"),
    ("smora-1/lora_64", "task.datamodule.source.train_dir"),
    ("moslora-4/moslora", "task.datamodule.source.test_dir"),
    ("moslora-4/moslora", "task.datamodule.source.train_file"),
    ("moslora-4/moslora", "task.datamodule.data_dir"),
    ("routing-1/lora_64_proj", "task.datamodule.images_dir"),
    ("routing-4/lora_64_proj", "task.datamodule.data_dir"),
    ("smora-1/lora_64", "++task.datamodule.max_length"),
    ("smora-1/lora_64", "++task.datamodule.overlong"),
    ("moslora-4/moslora", "++task.datamodule.max_length"),
    ("smora-1/lora_64", "trainer.gradient_clip_val"),
    ("smora-1/lora_64", "trainer.accumulate_grad_batches"),
    ("moslora-5/lora", "task.judge.model"),
])
def test_keys_the_error_messages_name_can_be_typed(name, key):
    """Every key a message tells a user to set composes as ``key=value``, as written, and reaches the run."""
    value = "/x/y" if key.endswith(("file", "dir")) else ("truncate" if key.endswith("overlong") else 7)
    c = OmegaConf.create(row(name, "paper", f"{key}={value}"))
    assert OmegaConf.select(c, key.lstrip("+").replace(".paper.", ".")) == value


def test_error_messages_name_only_typeable_keys():
    """The keys quoted in the package's hints are the ones tested above (a new hint needs a line there)."""
    tested = {k for _, k in test_keys_the_error_messages_name_can_be_typed.pytestmark[0].args[1]}
    hinted = set()
    for path in (REPO / "src" / "rankmix").rglob("*.py"):
        for m in re.finditer(r"(?:set|point|into the folder|raise|give) ((?:\+\+)?(?:task|trainer)\.[a-z_.]+[a-z_])",
                             path.read_text()):
            hinted.add(m.group(1))
    assert hinted and hinted <= tested, hinted - tested


def test_show_prints_the_resolved_row():
    text = show_row("smora-1", "lora_64", ["scale=paper"])
    c = OmegaConf.create(text)
    assert (c.method.alpha, c.method.r, c.trainer.accumulate_grad_batches, c.scale) == (128, 64, 16, "paper")
    assert "${" not in text


def test_the_protocol_document_covers_every_table():
    text = (REPO / "docs" / "protocol.md").read_text()
    missing = [t for t in all_tables() if not re.search(rf"\b{re.escape(t)}\b", text)]
    assert not missing, f"docs/protocol.md has no section for {missing}"


def test_an_override_of_a_scaled_key_is_used_not_dropped():
    c = OmegaConf.to_container(compose_run(["task.max_epochs=1"]), resolve=True)
    assert (c["task"]["max_epochs"], c["trainer"]["max_epochs"]) == (1, 1)
