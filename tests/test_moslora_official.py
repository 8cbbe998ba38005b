"""MoSLoRA Tab. 5 and Tab. 6 against the official runs: the global batch on any devices and the seed of Tab. 5,
InternLM2's head among the LLM's targets (XTuner's find_all_linear_names), Tab. 6's official inference (fp16, the
pipeline's own VAE, no generator, the LoRA loaded by diffusers, which drops the mixer) and DreamBooth's crop drawn once
per image."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf, open_dict

from conftest import compose, run_train
from rankmix.batching import accumulation, batch_layout, device_count
from rankmix.errors import ConfigError

ROWS5 = {"lora": 8, "moslora_kaiming": 8, "moslora_orthogonal": 8, "qlora": 16, "qmoslora_kaiming": 16,
         "qmoslora_orthogonal": 16}   # Tab. 8's per-device batch


def _with(cfg, **trainer):
    cfg = cfg.copy()
    with open_dict(cfg):
        for k, v in trainer.items():
            cfg.trainer[k] = v
    return cfg


# -- Tab. 5: the global batch -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("row", sorted(ROWS5))
def test_a_tab5_row_reaches_the_papers_global_batch_of_64_on_any_devices(row):
    cfg = compose(f"experiment=moslora-5/{row}", "scale=paper")
    per_device = ROWS5[row]
    assert cfg.task.global_batch_size == 64 and cfg.task.datamodule.batch_size == per_device
    assert cfg.trainer.accumulate_grad_batches is None   # computed at start-up
    assert cfg.seed == 1024 and cfg.task.datamodule.seed == 1024   # start.sh: xtuner train ... --seed 1024
    assert accumulation(cfg) == 64 // per_device                    # one device (the default trainer)
    assert accumulation(_with(cfg, devices=4)) == {8: 2, 16: 1}[per_device]   # Tab. 8's accumulation on 4 GPUs
    assert accumulation(_with(cfg, devices=2, num_nodes=2)) == {8: 2, 16: 1}[per_device]


def test_a_global_batch_the_devices_cannot_reach_is_refused_in_one_line():
    cfg = compose("experiment=moslora-5/qlora", "scale=paper")
    with pytest.raises(ConfigError, match=r"task.global_batch_size=64: is not a multiple of .* 3 x 1 x 16 = 48") as e:
        accumulation(_with(cfg, devices=3))
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match=r"trainer.accumulate_grad_batches=2: contradicts .* \(computed: 4\)"):
        accumulation(_with(cfg, accumulate_grad_batches=2))
    assert accumulation(_with(cfg, accumulate_grad_batches=4)) == 4   # a consistent explicit value is fine


def test_rows_without_a_global_batch_keep_their_accumulation():
    assert accumulation(compose("experiment=moslora-6/lora", "scale=paper")) == 4
    tiny = compose("experiment=moslora-5/lora")   # tiny: no global batch, accumulation 1, seed 0 as before
    assert tiny.task.get("global_batch_size") is None and accumulation(tiny) == 1 and tiny.seed == 0
    with pytest.raises(ConfigError, match="trainer.accumulate_grad_batches=None"):
        accumulation(_with(tiny, accumulate_grad_batches=None))


def test_device_counts_are_read_as_lightning_reads_them():
    cfg = OmegaConf.create
    assert device_count(cfg({"devices": 4})) == 4 and device_count(cfg({"devices": "2"})) == 2
    assert device_count(cfg({"devices": [0, 3]})) == 2 and device_count(cfg({"devices": "0,1,2"})) == 3
    assert device_count(cfg({"devices": "auto", "accelerator": "cpu"})) == 1
    with pytest.raises(ConfigError, match="trainer.devices"):
        device_count(cfg({"devices": 0}))


def test_the_layout_recorded_is_the_trainers():
    cfg = compose("experiment=moslora-5/lora", "scale=paper")

    class Trainer:
        num_devices, num_nodes, accumulate_grad_batches = 1, 1, 8

    assert batch_layout(cfg, Trainer()) == {"devices": 1, "nodes": 1, "per_device_batch": 8, "accumulation": 8,
                                            "global_batch": 64, "global_batch_size": 64}


def test_a_run_refuses_a_global_batch_its_devices_cannot_reach_before_any_work(tmp_path):
    run = run_train(tmp_path, "experiment=moslora-5/qlora", "+task.global_batch_size=24",
                    "trainer.accumulate_grad_batches=null")
    assert run.returncode == 1
    error = [ln for ln in run.stderr.splitlines() if ln.startswith("rankmix: error:")]
    assert len(error) == 1 and "task.global_batch_size=24: is not a multiple of" in error[0]
    assert not list((tmp_path / "runs").rglob("adapter_init.pt"))   # refused before the model was built


@pytest.mark.slow
def test_a_tiny_internlm2_run_trains_the_head_and_records_its_batch_layout(tmp_path):
    run = run_train(tmp_path, "experiment=moslora-5/qmoslora_orthogonal", "+trainer.max_steps=2",
                    "+task.global_batch_size=32", "trainer.accumulate_grad_batches=null", "task.benchmarks={}",
                    "task.datamodule.generate.n_train=64", "task.datamodule.generate.n_test=4",
                    "task.datamodule.val_size=4")
    assert run.returncode == 0, run.stderr[-3000:]
    result = run.result("moslora-5")
    assert result["train"]["batch_layout"] == {"devices": 1, "nodes": 1, "per_device_batch": 16, "accumulation": 2,
                                               "global_batch": 32, "global_batch_size": 32}
    assert result["train"]["global_step"] == 2
    init = torch.load(next((tmp_path / "runs").rglob("adapter_init.pt")), weights_only=True)
    assert {"lm_head.lora_A.weight", "lm_head.lora_mixer.weight", "lm_head.lora_B.weight"} <= set(init)
    assert result["params"]["wrapped_layers"] == 2 * 5 + 1 + 3 * 6   # 2 blocks x 5, the head; vision 3 x 6


# -- Tab. 5: InternLM2's head ------------------------------------------------------------------------------------------

def _tiny_llava(tmp_path, model_type):
    from rankmix.backbones import word_level_tokenizer
    from rankmix.llava import build_llava

    tok = word_level_tokenizer(["what is it ? a red circle"], tmp_path / "tok")
    tok.add_special_tokens({"additional_special_tokens": ["<|im_end|>"]})
    spec = {"dtype": "float32",
            "llm": {"source": "config", "init_seed": 0, "config": {
                "model_type": model_type, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                "num_attention_heads": 4, "num_key_value_heads": 2}},
            "vision": {"source": "config", "init_seed": 1, "config": {
                "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                "image_size": 16, "patch_size": 8}},
            "projector": {"init_seed": 2}}
    model = build_llava(spec, tok)
    model.requires_grad_(False)
    return model, tok


def test_internlm2s_head_output_is_among_the_targets_and_gets_the_llms_adapter(tmp_path):
    from rankmix.adapters import adapter_layers
    from rankmix.adapters.inject import DEFAULT_TARGETS
    from rankmix.modules.visual_instruction import inject_llm

    assert "output" in DEFAULT_TARGETS["internlm2"]
    for row in ("qlora", "qmoslora_kaiming", "qmoslora_orthogonal"):
        assert "output" in compose(f"experiment=moslora-5/{row}", "scale=paper").method.target_modules
    model, tok = _tiny_llava(tmp_path, "internlm2")
    head = model.lm_head
    report = inject_llm(model, {"name": "moslora", "r": 4, "alpha": 2, "mixer_init": "kaiming",
                                "target_modules": list(DEFAULT_TARGETS["internlm2"])})
    assert "output" in report.wrapped   # the head, under InternLM2's own name
    assert "output" not in model.model.language_model._modules   # and back in LLaVA's place only
    wrapped = adapter_layers(model)
    assert "lm_head" in wrapped and wrapped["lm_head"].method == "moslora" and wrapped["lm_head"].base_layer is head
    for p in wrapped["lm_head"].parameters():
        p.data.normal_(0, 0.1) if p.requires_grad else None
    ids = torch.tensor([tok.encode("what is it ?", add_special_tokens=False)])
    out = model(input_ids=ids, labels=ids)
    out.loss.backward()
    assert wrapped["lm_head"].lora_A.weight.grad is not None   # the head's adapter trains


def test_llamas_head_stays_out_of_the_default_targets(tmp_path):
    from rankmix.adapters import adapter_layers
    from rankmix.modules.visual_instruction import inject_llm

    model, _ = _tiny_llava(tmp_path, "llama")
    report = inject_llm(model, {"name": "lora", "r": 2, "target_modules": []})
    assert report.wrapped and not any(n.endswith("lm_head") for n in report.wrapped)
    assert "lm_head" not in adapter_layers(model) and not model.lm_head.weight.requires_grad


# -- Tab. 6: the official inference and crop ---------------------------------------------------------------------------

PROMPTS6 = ["a photo of ikat cat", "A picture of a ikat cat in the snow"]


def _sdxl(tmp_path):
    from rankmix.diffusion import build_sdxl

    spec = OmegaConf.to_container(compose("experiment=moslora-6/moslora").backbone, resolve=True)
    return spec, build_sdxl(spec, PROMPTS6, tmp_path)


def _unet_out(unet):
    g = torch.Generator().manual_seed(0)
    x, text = torch.randn(1, 4, 16, 16, generator=g), torch.randn(1, 16, 64, generator=g)
    cond = {"text_embeds": torch.randn(1, 32, generator=g), "time_ids": torch.tensor([[32.0, 32, 0, 0, 32, 32]])}
    with torch.no_grad():
        return unet(x, torch.tensor([10]), text, added_cond_kwargs=cond).sample


def test_the_official_lora_file_loses_the_mixer_when_diffusers_loads_it(tmp_path):
    from safetensors.torch import load_file

    from rankmix.adapters import adapter_layers, inject
    from rankmix.diffusion import official_pipeline, save_official_lora

    targets = ["to_q", "to_k", "to_v", "to_out.0"]
    spec, pipe = _sdxl(tmp_path / "a")
    inject(pipe.unet, {"name": "moslora", "r": 4, "alpha": 4, "mixer_init": "orthogonal", "target_modules": targets})
    torch.manual_seed(1)
    for name, p in pipe.unet.named_parameters():
        if "lora_B" in name or "lora_mixer" in name:
            p.data.normal_(0, 0.2)   # a trained-looking update and mixer
    with_mixer = _unet_out(pipe.unet)
    out = save_official_lora(pipe.unet, tmp_path / "official")
    keys = list(load_file(out / "pytorch_lora_weights.safetensors"))
    layers = adapter_layers(pipe.unet)
    # the official names: peft's lora_A/B/AB through convert_state_dict_to_diffusers
    assert {k.rsplit(".", 2)[-2] for k in keys} == {"down", "up", "downB"} and len(keys) == 3 * len(layers)
    official, notes = official_pipeline(spec, PROMPTS6, tmp_path / "b", out, "cpu")
    assert notes["dropped_by_loader"] == len(layers) and notes["vae"] == "the pipeline's own"
    # what diffusers built: B A without the mixer, i.e. a LoRA with MoSLoRA's A and B
    _, plain = _sdxl(tmp_path / "c")
    inject(plain.unet, {"name": "lora", "r": 4, "alpha": 4, "target_modules": targets})
    mine = adapter_layers(plain.unet)
    for name, layer in layers.items():
        mine[name].lora_A.weight.data.copy_(layer.lora_A.weight)
        mine[name].lora_B.weight.data.copy_(layer.lora_B.weight)
    loaded = _unet_out(official.unet)
    assert torch.allclose(loaded, _unet_out(plain.unet), atol=1e-5)
    assert not torch.allclose(loaded, with_mixer, atol=1e-3)


def test_official_inference_is_the_default_of_the_tab6_rows_and_adapted_is_offered():
    for row in ("lora", "moslora"):
        c = compose(f"experiment=moslora-6/{row}", "scale=paper")
        assert c.task.inference == "official" and c.task.num_inference_steps == 50
        assert c.task.datamodule.crop == "per_image" and c.seed == 0   # train_sdxl_lora_cat.sh --seed=0
    from rankmix.modules.dreambooth import INFERENCE

    assert set(INFERENCE) == {"official", "adapted"}


def _subject(tmp_path, crop):
    from PIL import Image

    from rankmix.data.subjects import SubjectDataModule

    root = tmp_path / "subject"
    root.mkdir(parents=True, exist_ok=True)
    for i in range(3):
        Image.new("RGB", (40 + 8 * i, 24), (10 * i, 100, 200)).save(root / f"{i:02d}.png")   # wider than tall
    dm = SubjectDataModule(str(root), "a photo of ikat cat", "cat", ["A picture of a ikat {}"], resolution=16,
                           batch_size=1, cache_dir=str(tmp_path / "cache"), seed=3, crop=crop)
    dm.setup()
    return dm


def test_dreambooths_crop_is_drawn_once_per_image_as_the_official_dataset(tmp_path):
    dm = _subject(tmp_path, "per_image")
    first = [dm.collate_train([item])["crop_top_left"].tolist() for item in dm.images]
    torch.manual_seed(123)   # the global RNG plays no part
    again = [dm.collate_train([item])["crop_top_left"].tolist() for item in dm.images]
    assert first == again and len({tuple(c[0]) for c in first}) > 1   # fixed per image, not the same for all
    assert _subject(tmp_path / "other", "per_image").images[2]["crop"] == dm.images[2]["crop"]   # from the seed
    batch = dm.collate_train([dm.images[2]])
    assert batch["pixel_values"].shape == (1, 3, 16, 16) and batch["original_size"].tolist() == [[24, 56]]
    every = _subject(tmp_path / "every", "per_batch")
    draws = {tuple(every.collate_train([every.images[2]])["crop_top_left"][0].tolist()) for _ in range(20)}
    assert len(draws) > 1   # per_batch: a new crop each time
    with pytest.raises(ConfigError, match="task.datamodule.crop"):
        _subject(tmp_path / "bad", "sometimes")


def test_the_table_and_show_row_state_the_batch_layout():
    from rankmix.tables import batch_layout_text, show_row

    run = {"train": {"batch_layout": {"devices": 1, "nodes": 1, "per_device_batch": 16, "accumulation": 4,
                                      "global_batch": 64, "global_batch_size": 64}}}
    assert batch_layout_text(run) == "1 × 16 × 4 = 64" and batch_layout_text({"train": {}}) == "—"
    shown = show_row("moslora-5", "qlora", ["scale=paper"])
    assert "seed: 1024" in shown and "- output" in shown
    assert shown.rstrip().endswith("1 x 1 node(s) x 16 x 4 accumulation = task.global_batch_size 64")
