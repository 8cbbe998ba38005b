"""Tables and their rows (``rankmix.table_rows``): experiment rows, and a table that is one yaml whose rows are a
sweep, named as Hydra's multirun names their runs."""

import shutil

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from conftest import REPO
from rankmix.config import compose_run, register_resolvers, run_key
from rankmix.errors import RankmixError
from rankmix.table_rows import (
    all_tables,
    key_overrides,
    renamed_override,
    reproduce_command,
    row_overrides,
    sweep_spec,
)

SWEEP = """id: my-ranks
title: LoRA rank, my sweep
rows:
  set: [method=lora, method.alpha=8]
  sweep:
    method.r: [2, 4]
    method.dropout: [0.0, 0.1]
"""


@pytest.fixture()
def conf(tmp_path):
    """A copy of the config tree with one new table: its yaml, and nothing else."""
    out = tmp_path / "conf"
    shutil.copytree(REPO / "conf", out, ignore=shutil.ignore_patterns("local"))
    (out / "table" / "my-ranks.yaml").write_text(SWEEP)
    return out


def test_a_new_sweep_table_is_one_yaml(conf):
    rows = all_tables(conf)["my-ranks"]
    assert rows == ["method.dropout=0.0,method.r=2", "method.dropout=0.0,method.r=4",
                    "method.dropout=0.1,method.r=2", "method.dropout=0.1,method.r=4"]
    for row in rows:
        cfg = compose_run([*row_overrides("my-ranks", row, conf), "scale=tiny"], conf_dir=str(conf))
        assert cfg.table.id == "my-ranks" and cfg.method.name == "lora" and cfg.method.alpha == 8
        assert f"method.r={cfg.method.r}" in row and f"method.dropout={cfg.method.dropout}" in row


def test_each_row_is_named_as_the_multirun_names_its_run(conf):
    """The run key Hydra's multirun gives each job (``override_dirname`` of the reproduce command, with the table's
    fixed overrides excluded) is the row's name, so the table finds its runs and judges them current."""
    register_resolvers()
    cmd = reproduce_command("my-ranks", [], conf)
    assert cmd[:3] == ["-m", "rankmix.train", "-m"]
    args = cmd[3:]
    swept = {a.split("=", 1)[0]: a.split("=", 1)[1].split(",") for a in args if "," in a and "[" not in a}
    assert swept == {"method.dropout": ["0.0", "0.1"], "method.r": ["2", "4"]}
    fixed = [a for a in args if a.split("=", 1)[0] not in swept]
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        for row in all_tables(conf)["my-ranks"]:
            job = fixed + row.split(",")
            cfg = compose("train", overrides=job, return_hydra_config=True)
            assert run_key(cfg.hydra.job.override_dirname) == row
    assert key_overrides("my-ranks", "method.dropout=0.1,method.r=4,seed=1", conf)[-1] == "seed=1"


def test_a_sweep_from_a_starting_row_names_its_runs_after_it(conf):
    (conf / "table" / "my-k.yaml").write_text("id: my-k\nrows:\n  experiment: smora-1/smora_64_8\n"
                                              "  sweep: {method.k: [2, 4]}\n")
    assert all_tables(conf)["my-k"] == ["smora_64_8,method.k=2", "smora_64_8,method.k=4"]
    cfg = compose_run([*row_overrides("my-k", "smora_64_8,method.k=2", conf)], conf_dir=str(conf))
    assert (cfg.table.id, cfg.method.name, cfg.method.k) == ("my-k", "smora", 2)
    assert key_overrides("my-k", "lora_64,method.k=2", conf) is None   # not a row of this table


REUSE = """id: my-13b
title: "Two of Tab. 1's rows on Llama-2-13b"
rows:
  reuse: smora-1
  only: [lora_64, hydralora]
  set: [backbone=llama2_13b]
"""


def test_a_new_table_of_another_tables_rows_is_one_yaml_and_its_runs_keep_their_names(conf):
    from rankmix.config import computation_hash

    (conf / "table" / "my-13b.yaml").write_text(REUSE)
    (conf / "table" / "my-copy.yaml").write_text("id: my-copy\nrows: {reuse: smora-1, only: [lora_64]}\n")
    rows = all_tables(conf)["my-13b"]
    assert rows == ["smora-1/hydralora", "smora-1/lora_64"]
    register_resolvers()
    cmd = reproduce_command("my-13b", [], conf)
    assert cmd[3] == "experiment=smora-1/hydralora,smora-1/lora_64" and "backbone=llama2_13b" in cmd
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        for row in rows:   # each job of the table's multirun is named as the row
            job = compose("train", overrides=[f"experiment={row}", *cmd[4:]], return_hydra_config=True)
            assert run_key(job.hydra.job.override_dirname) == row.rsplit("/", 1)[-1]
    for row in rows:
        cfg = compose_run([*row_overrides("my-13b", row, conf), "scale=paper"], conf_dir=str(conf))
        assert (cfg.table.id, cfg.backbone.name_or_path) == ("my-13b", "meta-llama/Llama-2-13b-hf")
        assert "rows" not in cfg.table   # how a table is made is not part of its runs
    own = OmegaConf.to_container(compose_run(["experiment=smora-1/lora_64"], conf_dir=str(conf)), resolve=True)
    copy = compose_run(row_overrides("my-copy", "smora-1/lora_64", conf), conf_dir=str(conf))
    assert copy.table.id == "my-copy"
    assert computation_hash(OmegaConf.to_container(copy, resolve=True)) == computation_hash(own)  # reused, not trained
    assert key_overrides("my-copy", "lora_64,seed=1", conf)[-1] == "seed=1" and key_overrides("my-copy", "lora_8", conf) is None


@pytest.mark.parametrize(("text", "problem"), [
    ("id: bad\nrows: {reuse: nope}\n", "no such table"),
    ("id: bad\nrows: {reuse: smora-1, only: [lora_65]}\n", r"not rows of smora-1"),
    ("id: bad\nrows: {reuse: rankmix-smora-k}\n", "sweep table"),
    ("id: bad\nrows: {reuse: smora-1, sweep: {method.r: [4]}}\n", "not both"),
    ("id: bad\nrows: {reuse: bad2}\n", "in a circle"),
])
def test_a_bad_reuse_is_refused_naming_the_file(conf, text, problem):
    (conf / "table" / "bad.yaml").write_text(text)
    (conf / "table" / "bad2.yaml").write_text("id: bad2\nrows: {reuse: bad}\n")
    with pytest.raises(RankmixError, match=problem) as e:
        all_tables(conf)
    assert "bad" in str(e.value) and ".yaml" in str(e.value)


@pytest.mark.parametrize(("text", "problem"), [
    ("id: bad\nrows: {sweep: {}}\n", "non-empty 'sweep'"),
    ("id: bad\nrows: {sweep: {method.r: 4}}\n", "non-empty list"),
    ("id: bad\nrows: {sweep: {method.r: [4]}, set: method=lora}\n", "list of overrides"),
    ("id: other\nrows: {sweep: {method.r: [4]}}\n", "rename it to other.yaml"),
])
def test_a_bad_rows_block_is_refused_naming_the_file(conf, text, problem):
    (conf / "table" / "bad.yaml").write_text(text)
    with pytest.raises(RankmixError, match=problem) as e:
        all_tables(conf)
    assert "bad.yaml" in str(e.value)


def test_the_shipped_sweep_table_composes_its_rows():
    rows = all_tables()["rankmix-smora-k"]
    assert rows == [f"method.k={k}" for k in (1, 2, 4, 8, 16)]
    assert sweep_spec("smora-1") is None and row_overrides("smora-1", "smora-1/lora_64") == ["experiment=smora-1/lora_64"]
    c = OmegaConf.to_container(compose_run(row_overrides("rankmix-smora-k", "method.k=8")), resolve=True)
    assert (c["method"]["name"], c["method"]["r"], c["method"]["k"], c["table"]["id"]) == ("smora", 16, 8, "rankmix-smora-k")


def test_a_table_has_one_name_its_yaml_is_its_id_and_the_old_form_is_refused_in_one_line():
    import subprocess
    import sys

    for path in (REPO / "conf" / "table").glob("*.yaml"):
        assert OmegaConf.load(path).id == path.stem, path
    r = subprocess.run([sys.executable, "-m", "rankmix.train", "table=smora_1", "--cfg", "job"], cwd=REPO,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        "rankmix: error: table=smora_1 is now table=smora-1: a table's yaml is named by its id (conf/table/<id>.yaml)"]
    assert renamed_override(["experiment=smora/1/lora_64"]) == (
        "experiment=smora/1/lora_64 is now experiment=smora-1/lora_64: a table's rows are named by its id "
        "(conf/experiment/<id>/<row>.yaml)")
    assert renamed_override(["experiment=smora/5/hydralora"]).startswith(
        "experiment=smora/5/hydralora is now row hydralora of table smora-5, reusing smora-1/hydralora")
    assert renamed_override(["experiment=smora-1/lora_64", "table=smora-1"]) is None
