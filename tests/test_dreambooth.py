"""MoSLoRA Tab. 6's generation side: the tiny SDXL pipeline, adapters on its UNet, the diffusers export, and one
DreamBooth run through the entry."""

import json

import pytest
import torch
from omegaconf import OmegaConf

from conftest import compose, run_train
from rankmix.adapters import export_diffusers, inject
from rankmix.diffusion import build_sdxl

PROMPTS = ["a photo of ikat cat", "A picture of a ikat cat in the snow"]


def _pipe(tmp_path):
    spec = OmegaConf.to_container(compose("experiment=moslora-6/moslora").backbone, resolve=True)
    return build_sdxl(spec, PROMPTS, tmp_path)


def _unet_out(unet, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 4, 16, 16, generator=g)
    text = torch.randn(1, 16, 64, generator=g)
    cond = {"text_embeds": torch.randn(1, 32, generator=g), "time_ids": torch.tensor([[32.0, 32, 0, 0, 32, 32]])}
    with torch.no_grad():
        return unet(x, torch.tensor([10]), text, added_cond_kwargs=cond).sample


@pytest.mark.parametrize("method", ["moslora", "lora"])
def test_an_exported_unet_adapter_loads_in_diffusers_with_identical_outputs(tmp_path, method):
    pipe = _pipe(tmp_path / "a")
    inject(pipe.unet, {"name": method, "r": 4, "alpha": 8, "target_modules": ["to_q", "to_k", "to_v", "to_out.0"],
                       **({"mixer_init": "orthogonal"} if method == "moslora" else {})})
    torch.manual_seed(1)
    for name, p in pipe.unet.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.2)  # a trained-looking update (B starts at zero)
    ours = _unet_out(pipe.unet)
    out = export_diffusers(pipe.unet, tmp_path / "export")
    fresh = _pipe(tmp_path / "b")
    base = _unet_out(fresh.unet)
    assert not torch.allclose(ours, base, atol=1e-4)  # the adapter changes the output
    fresh.load_lora_weights(str(out))  # the pipeline's loader
    assert torch.allclose(_unet_out(fresh.unet), ours, atol=1e-5)
    other = _pipe(tmp_path / "c")
    other.unet.load_lora_adapter(str(out / "pytorch_lora_weights.safetensors"), prefix="unet")  # the UNet's loader
    assert torch.allclose(_unet_out(other.unet), ours, atol=1e-5)


def test_the_paper_rows_carry_the_official_recipe():
    for row in ("lora", "moslora"):
        c = OmegaConf.to_container(compose(f"experiment=moslora-6/{row}", "scale=paper"), resolve=True)
        assert c["backbone"]["name_or_path"] == "stabilityai/stable-diffusion-xl-base-1.0"
        assert c["backbone"]["vae"] == "madebyollin/sdxl-vae-fp16-fix"
        assert (c["method"]["r"], c["method"]["alpha"], c["method"]["target_modules"]) == (4, 4, ["to_q", "to_k", "to_v", "to_out.0"])
        assert (c["optimizer"]["lr"], c["optimizer"]["schedule"], c["optimizer"]["weight_decay"]) == (1e-4, "constant", 1e-4)
        t = c["trainer"]
        assert (t["max_steps"], t["accumulate_grad_batches"], t["precision"]) == (500, 4, "16-mixed")
        dm = c["task"]["datamodule"]
        assert (dm["resolution"], dm["batch_size"], dm["instance_prompt"]) == (1024, 1, "a photo of ikat cat")
        assert c["task"]["num_inference_steps"] == 50 and len(dm["templates"]) == 25
    assert compose("experiment=moslora-6/moslora", "scale=paper").method.mixer_init == "orthogonal"


@pytest.mark.slow
def test_a_tiny_dreambooth_run_writes_images_and_a_diffusers_lora(tmp_path):
    run = run_train(tmp_path, "experiment=moslora-6/moslora", "trainer.max_steps=4",
                    "task.datamodule.templates=['A picture of a ikat {} in the snow','A picture of a wet ikat {}']",
                    "task.num_inference_steps=2")
    assert run.returncode == 0, run.stderr[-3000:]
    folder = next((tmp_path / "runs").rglob("images"))
    index = json.loads((folder / "index.json").read_text())
    assert [r["prompt"] for r in index["images"]] == ["A picture of a ikat cat in the snow", "A picture of a wet ikat cat"]
    assert all((folder / r["file"]).is_file() for r in index["images"]) and len(index["references"]) == 5
    assert (folder.parent / "diffusers_lora" / "pytorch_lora_weights.safetensors").is_file()
    result = run.result("moslora-6")
    assert result["train"]["global_step"] == 4
    assert all(-1.0 <= result["metrics"][f"test/{m}"] <= 1.0 for m in ("dino", "clip_i", "clip_t"))


def test_dino_and_clip_scores_are_cosines_and_an_unloadable_encoder_is_missing_with_why(tmp_path):
    from PIL import Image

    from rankmix.backbones import word_level_tokenizer
    from rankmix.metrics.subject_fidelity import subject_scores

    encoders = OmegaConf.to_container(compose("experiment=moslora-6/moslora").task.auto_scores, resolve=True)
    same = tmp_path / "same.png"
    Image.new("RGB", (40, 40), (200, 30, 30)).save(same)
    other = tmp_path / "other.png"
    Image.new("RGB", (40, 40), (20, 90, 230)).save(other)
    tok = word_level_tokenizer(["a red circle"], tmp_path / "tok")
    tok.model_max_length = 8
    scores, missing = subject_scores([same, same], ["a red circle"] * 2, [same], encoders, tokenizer=tok)
    assert missing == {} and scores["dino"] == pytest.approx(1.0) and scores["clip_i"] == pytest.approx(1.0)
    assert -1.0 <= scores["clip_t"] <= 1.0
    apart, _ = subject_scores([other], ["a red circle"], [same], encoders, tokenizer=tok)
    assert apart["dino"] < 1.0 - 1e-4 and apart["clip_i"] < 1.0 - 1e-4
    gone = {"dino": {"source": "pretrained", "name_or_path": str(tmp_path / "no-such-dino")}}
    scores, missing = subject_scores([same], ["x"], [same], gone)
    assert scores == {} and "task.auto_scores.dino.name_or_path" in missing["dino"]


def test_replacing_a_subject_photo_makes_the_run_out_of_date(tmp_path):
    from PIL import Image

    from conftest import compose
    from rankmix.config import config_hash
    from rankmix.data.fingerprints import record_data_fingerprint

    photos = tmp_path / "cat"
    photos.mkdir()
    for i, colour in enumerate(("red", "blue")):
        Image.new("RGB", (8, 8), colour).save(photos / f"{i:02d}.jpg")

    def hashed():
        cfg = compose("experiment=moslora-6/lora", f"task.datamodule.instance_dir={photos}")
        record_data_fingerprint(cfg)
        return config_hash(cfg)

    before = hashed()
    assert hashed() == before
    Image.new("RGB", (8, 8), "green").save(photos / "01.jpg")  # one photo replaced by another
    assert hashed() != before
