"""Each paper backbone's weights under its own key (``paths.models.<name>``), and the architecture check that refuses
a folder of another model before training: on local folders, through the loaders, on the rehearsal's stand-ins."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest
import torch
import yaml
from omegaconf import OmegaConf

from conftest import OFFLINE_ENV, REPO, run_train
from rankmix.backbones import STANDIN_DIR, build_backbone, check_architecture, check_local_architectures
from rankmix.config import compose_run, config_hash
from rankmix.errors import ConfigError
from rankmix.tables import show_row

PAPER = REPO / "conf" / "scaled" / "backbone" / "paper"
BACKBONES = sorted(p.stem for p in PAPER.glob("*.yaml"))

# Format-faithful config.json files (the keys and layout of the hub repos' files; the values are each model's).
LLAMA2_7B = {"architectures": ["LlamaForCausalLM"], "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu",
             "hidden_size": 4096, "initializer_range": 0.02, "intermediate_size": 11008,
             "max_position_embeddings": 4096, "model_type": "llama", "num_attention_heads": 32,
             "num_hidden_layers": 32, "num_key_value_heads": 32, "pretraining_tp": 1, "rms_norm_eps": 1e-05,
             "rope_scaling": None, "tie_word_embeddings": False, "torch_dtype": "float16",
             "transformers_version": "4.31.0.dev0", "use_cache": True, "vocab_size": 32000}
LLAMA2_13B = {**LLAMA2_7B, "hidden_size": 5120, "intermediate_size": 13824, "num_attention_heads": 40,
              "num_hidden_layers": 40, "num_key_value_heads": 40}


def _folder(root: Path, name: str, config: dict, sub: str = "") -> str:
    folder = root / name / sub
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return str(root / name)


def _backbone(*overrides: str, row: str = "smora-1/lora_64_13b") -> dict:
    return OmegaConf.to_container(compose_run([f"experiment={row}", "scale=paper", *overrides]).backbone, resolve=True)


def _parts(node, prefix: str = "backbone"):
    """``(key, node)`` of each part of an unresolved paper backbone file that names weights."""
    if isinstance(node, dict):
        if "name_or_path" in node and (node.get("source") == "pretrained" or "file" in node):
            yield prefix, node
        for k, v in node.items():
            if k not in ("tokenizer", "architecture", "vae_architecture"):
                yield from _parts(v, f"{prefix}.{k}")


# -- one key per weight folder --------------------------------------------------------------------------------
def test_every_paper_part_reads_its_own_paths_models_key():
    models = OmegaConf.to_container(OmegaConf.load(REPO / "conf" / "paths" / "default.yaml"))["models"]
    used = set()
    for name in BACKBONES:
        raw = OmegaConf.to_container(OmegaConf.load(PAPER / f"{name}.yaml"), resolve=False)
        parts = list(_parts(raw))
        assert parts, name
        for key, part in parts:
            assert part["name_or_path"] == "${" + part["path_key"] + "}", (name, key)
            assert part["path_key"].startswith("paths.models."), (name, key)
            used.add(part["path_key"].removeprefix("paths.models."))
            if part.get("source") == "pretrained":
                assert part.get("architecture"), (name, key)   # weights without a declared architecture
        if "vae" in raw:
            assert raw["vae"] == "${" + raw["vae_path_key"] + "}" and raw["vae_architecture"], name
            used.add(raw["vae_path_key"].removeprefix("paths.models."))
    assert used == set(models)   # every key is read, and every weight folder has one


@pytest.mark.parametrize("name", BACKBONES)
def test_each_key_a_message_names_can_be_typed_and_reaches_its_part(name):
    raw = OmegaConf.to_container(OmegaConf.load(PAPER / f"{name}.yaml"), resolve=False)
    keys = {part["path_key"]: key for key, part in _parts(raw)}
    if "vae_path_key" in raw:
        keys[raw["vae_path_key"]] = "backbone.vae"
    typed = {k: f"/typed/{i}" for i, k in enumerate(keys)}
    resolved = OmegaConf.create({"backbone": OmegaConf.to_container(compose_run(
        [f"backbone={name}", "scale=paper", *(f"{k}={v}" for k, v in typed.items())]).backbone, resolve=True)})
    for path_key, key in keys.items():
        value = OmegaConf.select(resolved, key if key.endswith("vae") else f"{key}.name_or_path")
        assert value == typed[path_key], (name, path_key)


def test_a_13b_row_shows_the_13b_folder_with_the_readmes_arguments():
    m = re.search(r'make show-row TABLE=(\S+) ROW=(\S+) SCALE=paper ARGS="([^"]*)"', (REPO / "README.md").read_text())
    assert m, "the README names each backbone's key in a make show-row command"
    table, row, args = m.group(1), m.group(2), shlex.split(m.group(3))
    given = dict(a.split("=", 1) for a in args)
    thirteen, seven = given["paths.models.llama2_13b"], given["paths.models.llama2_7b"]
    assert thirteen != seven
    shown = OmegaConf.create(show_row(table, row, ["scale=paper", *args]))
    assert shown.backbone.paper_label == "Llama2-13b"
    assert shown.backbone.name_or_path == shown.backbone.tokenizer.name_or_path == thirteen
    seven_row = OmegaConf.create(show_row(table, row.removesuffix("_13b"), ["scale=paper", *args]))
    assert (seven_row.backbone.paper_label, seven_row.backbone.name_or_path) == ("Llama2-7b", seven)


def test_make_show_row_prints_the_13b_folder_for_a_13b_row():
    args = "paths.models.llama2_7b=/models/llama-2-7b paths.models.llama2_13b=/models/llama-2-13b"
    out = subprocess.run(["make", "-s", "show-row", "TABLE=smora-1", "ROW=lora_64_13b", "SCALE=paper", f"ARGS={args}"],
                         cwd=REPO, capture_output=True, text=True, timeout=300, env={**os.environ, **OFFLINE_ENV})
    assert out.returncode == 0, out.stderr[-2000:]
    backbone = yaml.safe_load(out.stdout)["backbone"]
    assert backbone["name_or_path"] == backbone["tokenizer"]["name_or_path"] == "/models/llama-2-13b"


def test_every_row_of_a_mixed_table_reads_its_own_backbones_key():
    from rankmix.table_rows import all_tables

    args = ["paths.models.llama2_7b=/m/7b", "paths.models.llama2_13b=/m/13b"]
    for name in all_tables()["smora-1"]:
        b = _backbone(*args, row=name)
        assert b["name_or_path"] == {"llama2_7b": "/m/7b", "llama2_13b": "/m/13b"}[b["name"]], name


def test_where_the_folder_is_given_changes_the_hash_as_backbone_name_or_path_did():
    def chash(row, *args):
        return config_hash(compose_run([f"experiment={row}", "scale=paper", *args]))

    seven, thirteen = "smora-1/lora_64", "smora-1/lora_64_13b"
    assert chash(seven, "paths.models.llama2_13b=/m/13b") == chash(seven)   # a key the row does not read
    assert chash(thirteen, "paths.models.llama2_13b=/m/13b") == chash(thirteen, "backbone.name_or_path=/m/13b")
    assert chash(thirteen, "paths.models.llama2_13b=/m/13b") != chash(thirteen)   # hub id vs folder, as before


# -- the architecture check -------------------------------------------------------------------------------------
def test_a_7b_folder_on_a_13b_row_is_refused_with_one_line_naming_the_key(tmp_path):
    seven = _folder(tmp_path, "llama-2-7b", LLAMA2_7B)
    for override in (f"backbone.name_or_path={seven}", f"paths.models.llama2_13b={seven}"):
        with pytest.raises(ConfigError) as e:
            check_local_architectures(_backbone(override))
        line = str(e.value)
        assert "\n" not in line and line.startswith(f"backbone.name_or_path='{seven}': its config.json has "
                                                    "hidden_size=4096, num_hidden_layers=32")
        assert "Llama2-13b, needs hidden_size=5120, num_hidden_layers=40" in line
        assert "set paths.models.llama2_13b to a folder of Llama2-13b's weights" in line
    check_local_architectures(_backbone(f"backbone.name_or_path={seven}", row="smora-1/lora_64"))   # 7b row: its own
    check_local_architectures(_backbone(f"paths.models.llama2_13b={_folder(tmp_path, 'llama-2-13b', LLAMA2_13B)}"))


def test_the_loader_checks_before_the_weights_load(tmp_path):
    """The folder holds a config and no weights: the architecture line comes first, else 'could not be loaded'."""
    seven = _folder(tmp_path, "llama-2-7b", LLAMA2_7B)
    spec = _backbone(f"paths.models.llama2_13b={seven}")
    with pytest.raises(ConfigError, match=r"its config\.json has hidden_size=4096.*needs hidden_size=5120"):
        build_backbone(spec, tokenizer=None)
    right = _backbone(f"paths.models.llama2_13b={_folder(tmp_path, 'llama-2-13b', LLAMA2_13B)}")
    with pytest.raises(ConfigError, match="could not be loaded"):   # passes the check, then finds no weights
        build_backbone(right, tokenizer=None)
    with pytest.raises(ConfigError, match=r"could not be loaded.*set paths\.models\.llama2_13b=DIR"):
        check_architecture("backbone.name_or_path", str(tmp_path / "absent"), right)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"empty': holds no readable config\.json .*give paths\.models\.llama2_13b"):
        check_architecture("backbone.name_or_path", str(tmp_path / "empty"), right)


def test_a_run_with_a_7b_folder_on_a_13b_row_stops_before_training(tmp_path):
    import rankmix.tasks

    seven = _folder(tmp_path, "llama-2-7b", LLAMA2_7B)
    data = [f"task.datamodule.source.{k}={v}" for k, v in rankmix.tasks.get("flan").write(tmp_path / "data", 0).items()]
    r = run_train(tmp_path, "experiment=smora-1/lora_64_13b", "scale=paper", "trainer=cpu", *data,
                  f"backbone.name_or_path={seven}", timeout=300)
    assert r.returncode != 0
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("rankmix: error:")]
    assert len(errors) == 1 and "Llama2-13b, needs hidden_size=5120, num_hidden_layers=40" in errors[0], r.stderr[-2000:]
    assert "paths.models.llama2_13b" in errors[0] and "Traceback" not in r.stderr
    assert not list(tmp_path.glob("runs/**/checkpoints/*.ckpt")) and not list(tmp_path.glob("results/*/runs/*.json"))


def test_sdxl_checks_the_unet_and_the_vae_each_under_its_key(tmp_path):
    sd15_unet = {"_class_name": "UNet2DConditionModel", "block_out_channels": [320, 640, 1280, 1280],
                 "cross_attention_dim": 768, "transformer_layers_per_block": 1, "in_channels": 4, "out_channels": 4}
    pipe = _folder(tmp_path, "sd15", sd15_unet, "unet")
    with pytest.raises(ConfigError, match=r"its unet/config\.json has cross_attention_dim=768.*paths\.models\.sdxl "):
        check_local_architectures(_backbone(f"paths.models.sdxl={pipe}", row="moslora-6/moslora"))
    sd3_vae = {"_class_name": "AutoencoderKL", "block_out_channels": [128, 256, 512, 512], "latent_channels": 16}
    vae = _folder(tmp_path, "sd3-vae", sd3_vae)
    with pytest.raises(ConfigError, match=r"backbone\.vae=.*latent_channels=16.*set paths\.models\.sdxl_vae to"):
        check_local_architectures(_backbone(f"paths.models.sdxl_vae={vae}", row="moslora-6/moslora"))


def test_a_llava_vision_tower_is_read_from_a_whole_clip_checkpoint(tmp_path):
    """openai/clip-vit-large-patch14(-336) hold a whole CLIP (``model_type: clip``); its vision tower is compared."""
    def clip(image_size):
        vision = {"hidden_size": 1024, "intermediate_size": 4096, "num_attention_heads": 16, "num_hidden_layers": 24,
                  "image_size": image_size, "patch_size": 14, "projection_dim": 768, "model_type": "clip_vision_model"}
        text = {"hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12, "num_hidden_layers": 12,
                "projection_dim": 768, "model_type": "clip_text_model"}
        return {"architectures": ["CLIPModel"], "model_type": "clip", "projection_dim": 768,
                "logit_scale_init_value": 2.6592, "text_config": text, "vision_config": vision}

    row = "moslora-5/lora"
    check_local_architectures(_backbone(f"paths.models.clip_vit_large_336={_folder(tmp_path, 'l336', clip(336))}",
                                        row=row))
    with pytest.raises(ConfigError, match=r"backbone\.vision\.name_or_path=.*image_size=224.*clip_vit_large_336"):
        check_local_architectures(_backbone(f"paths.models.clip_vit_large_336={_folder(tmp_path, 'l224', clip(224))}",
                                            row=row))


def test_a_projector_of_other_widths_is_refused_naming_its_key():
    from torch import nn

    from rankmix.llava import check_projector

    projector = nn.ModuleDict({"linear_1": nn.Linear(8, 16), "linear_2": nn.Linear(16, 16)})
    state = {k: torch.zeros(v.shape) for k, v in projector.state_dict().items()}
    check_projector(state, projector, {"path_key": "paths.models.p"})
    state["linear_1.weight"] = torch.zeros(16, 12)
    with pytest.raises(ConfigError, match=r"linear_1\.weight \[16, 12\].*linear_1\.weight \[16, 8\].*set paths\.models\.p"):
        check_projector(state, projector, {"name_or_path": "/x", "path_key": "paths.models.p"})


# -- the rehearsal's stand-ins ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def standins(tmp_path_factory):
    from rankmix.rehearsal.run import pretrained_parts
    from rankmix.rehearsal.standins import build_standin

    cache = tmp_path_factory.mktemp("rehearse")
    hubs = {h for b in BACKBONES for h in pretrained_parts(
        OmegaConf.to_container(compose_run([f"backbone={b}", "scale=paper"]).backbone, resolve=True)).values()}
    return {h: build_standin(h, cache) for h in sorted(hubs)}


@pytest.mark.parametrize("name", BACKBONES)
def test_every_declared_architecture_is_its_checkpoints_and_passes_on_its_stand_in(standins, name):
    """Each stand-in keeps the real config of its hub id (its own is 2 layers, widths / 16): the declared values
    are those of the checkpoint the part's key names by default, and the rehearsal's rows pass the check."""
    from rankmix.rehearsal.run import pretrained_parts

    parts = pretrained_parts(OmegaConf.to_container(compose_run([f"backbone={name}", "scale=paper"]).backbone,
                                                    resolve=True))
    on_standins = [f"backbone.{key}={standins[hub]}" for key, hub in parts.items()]
    assert all((standins[hub] / STANDIN_DIR).is_dir() for hub in parts.values())
    check_local_architectures(OmegaConf.to_container(
        compose_run([f"backbone={name}", "scale=paper", *on_standins]).backbone, resolve=True))


def test_a_stand_in_of_the_wrong_model_is_refused_as_its_weights_would_be(standins):
    seven = standins["meta-llama/Llama-2-7b-hf"]
    with pytest.raises(ConfigError, match=r"a stand-in whose real config\.json has hidden_size=4096, "
                                          r"num_hidden_layers=32.*needs hidden_size=5120"):
        check_local_architectures(_backbone(f"backbone.name_or_path={seven}"))
    clip = standins["openai/clip-vit-large-patch14-336"]
    with pytest.raises(ConfigError, match=r"backbone\.llm\.name_or_path=.*hidden_size=1024"):
        check_local_architectures(_backbone(f"backbone.llm.name_or_path={clip}", row="moslora-5/lora"))


def test_the_rehearsal_points_the_backbone_at_its_stand_in_not_at_a_weights_folder():
    from rankmix.rehearsal import run as rr

    row = rr.Row("smora-1", "smora-1/lora_64_13b", "SMoRA FLAN", "lora", "llama2_13b", "flan")
    out = rr.rehearsal_overrides(row, {"name_or_path": "meta-llama/Llama-2-13b-hf"},
                                 {"meta-llama/Llama-2-13b-hf": "/s/13b"}, {}, gpu=False, length=[])
    assert out == ["backbone.name_or_path=/s/13b"]


def test_a_weights_folder_on_the_command_line_is_not_part_of_the_run_key():
    from rankmix.config import run_key

    assert run_key("experiment=smora-1/lora_64_13b,paths.models.llama2_13b=/models/llama-2-13b,method.r=4") == \
        "lora_64_13b,method.r=4"


def test_a_missing_local_folder_names_the_papers_hub_id_to_download(tmp_path):
    from rankmix.backbones import not_loadable

    err = not_loadable("backbone.name_or_path", str(tmp_path / "llama-2-13b"), OSError("no such directory"),
                       "paths.models.llama2_13b")
    text = str(err)
    assert "hf download meta-llama/Llama-2-13b-hf --local-dir DIR" in text and "set paths.models.llama2_13b=DIR" in text
    assert f"hf download {tmp_path}" not in text
    hub = str(not_loadable("backbone.name_or_path", "meta-llama/Llama-2-13b-hf", OSError("offline"), None))
    assert "hf download meta-llama/Llama-2-13b-hf --local-dir DIR" in hub
