"""CLIP-BART (routing functions §5): visual tokens after the text, x_R per stack, NLVR2's first-step logits,
and a tiny multitask run end to end."""

from collections import Counter

import pytest
import torch
from transformers import BartConfig, BartForConditionalGeneration

from conftest import VL_SMALL, run_train
from rankmix.adapters import adapter_layers, inject
from rankmix.modules.clip_bart import CLIPBart

TASKS = ("vqa", "gqa", "nlvr", "caption")


def _bart():
    torch.manual_seed(0)
    return BartForConditionalGeneration(BartConfig(
        vocab_size=30, d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, max_position_embeddings=64,
        pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=2, forced_bos_token_id=None))


def _model(fn="proj", x_r_decoder="encoder_mean"):
    bart = _bart()
    inject(bart, {"name": "routing", "fn": fn, "r": 4, "target_modules": ["q_proj", "v_proj"]})
    for name, p in bart.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.5)
    return CLIPBart(bart, feat_dim=8, tasks=TASKS, x_r_decoder=x_r_decoder).eval()


def _batch(task="nlvr", n_img=2):
    return {"task": task, "input_ids": torch.tensor([[5, 6, 7], [8, 9, 0]]),
            "attention_mask": torch.tensor([[1, 1, 1], [1, 1, 0]]), "visual": torch.randn(2, 3 * n_img, 8),
            "visual_order": torch.tensor([[0] * 3 + [1] * 3] * 2) if n_img == 2 else torch.zeros(2, 3, dtype=torch.long),
            "labels": torch.tensor([[11, 2], [12, 2]])}


def test_each_stack_routes_with_its_own_x_r():
    model, batch = _model(), _batch()
    seen = {}

    def spy(name):
        def hook(layer, args):
            seen[name] = layer.context["x_r"].shape
        return hook

    for name, layer in adapter_layers(model.bart).items():
        layer.register_forward_pre_hook(spy(name))
    model.loss(batch)
    enc = [s for n, s in seen.items() if ".encoder." in n]
    dec = [s for n, s in seen.items() if ".decoder." in n]
    assert enc and all(s == (2, 6, 16) for s in enc)  # the 6 visual tokens of the pair
    assert dec and all(s == (2, 16) for s in dec)  # the pooled encoder states (cross-attention's q_proj too)


def test_the_images_change_the_nlvr_logits_and_beams_run():
    model, batch = _model(), _batch()
    a = model.first_step_logits(batch, [2])
    b = model.first_step_logits({**batch, "visual": batch["visual"] + 1.0}, [2])
    assert a.shape == (2, 30) and not torch.allclose(a, b)
    assert not torch.allclose(a, _model(x_r_decoder="visual").first_step_logits(batch, [2]))
    out = model.generate(_batch("caption", n_img=1), max_new_tokens=4, num_beams=3)
    assert out.shape[0] == 2


def test_smola_o_blocks_get_the_text_the_visual_and_all_tokens():
    """SMoLA_O in the encoder: the text block changes only the real text tokens, the vision block only the visual
    tokens, the multimodal block every real token; padding gets nothing."""
    bart = _bart()
    inject(bart, {"name": "smola", "variant": "o", "num_experts": 3, "r": 2,
                  "target_modules": [r"re:model\.encoder\.layers\.\d+\.self_attn\.v_proj"]})
    model = CLIPBart(bart, feat_dim=8, tasks=TASKS).eval()
    (name, layer), = adapter_layers(model.bart).items()
    batch = _batch()  # 3 text positions (the second example's last is padding), then 6 visual tokens
    changed = {}

    def spy(mod, args, out):
        changed["delta"] = (out - mod.base_layer(args[0])).abs().sum(-1) > 0

    layer.register_forward_hook(spy)
    expected = {"text": [[1, 1, 1] + [0] * 6, [1, 1, 0] + [0] * 6],
                "vision": [[0, 0, 0] + [1] * 6] * 2, "mm": [[1] * 9, [1, 1, 0] + [1] * 6]}
    for live in ("text", "vision", "mm"):
        with torch.no_grad():
            for block_name, block in layer.blocks.items():
                block.smola_right.normal_(0, 1) if block_name == live else block.smola_right.zero_()
            model.encode(batch)
        assert changed["delta"].int().tolist() == expected[live], live


def test_method_none_freezes_the_backbone_and_wraps_nothing():
    bart = _bart()
    report = inject(bart, {"name": "none"})
    assert report.wrapped == [] and report.trainable_parameters == 0
    assert not any(p.requires_grad for p in bart.parameters()) and not adapter_layers(bart)


@pytest.mark.parametrize(("method", "policy", "parts"), [
    ({"name": "routing", "base": "lora", "fn": "proj", "r": 4, "target_modules": ["q_proj", "v_proj"]}, "vl_adapter", "bias"),
    ({"name": "lora", "r": 4, "target_modules": ["q_proj", "v_proj"]}, "vl_adapter", "bias"),
    ({"name": "routing", "base": "adapter", "fn": "proj", "r": 4, "target_modules": ["out_proj", "fc2"]}, "vl_adapter",
     "layer_norm"),
    ({"name": "multi_adapter", "r": 4, "tasks": list(TASKS), "target_modules": ["out_proj", "fc2"]}, "vl_adapter",
     "layer_norm"),
    ({"name": "none"}, "vl_adapter", ""),
    ({"name": "lora", "r": 4, "target_modules": ["q_proj"]}, [], ""),
])
def test_unfreeze_trains_vl_adapters_extra_parameters_and_counts_them(method, policy, parts):
    from torch import nn

    from rankmix.modules.clip_bart import unfreeze

    bart = _bart()
    before = inject(bart, method).trainable_parameters
    added = unfreeze(bart, policy, method)
    biases = {n for n, p in bart.named_parameters() if n.endswith(".bias") and "lora" not in n and "adapter" not in n}
    norms = {f"{m}.{n}" for m, mod in bart.named_modules() if isinstance(mod, nn.LayerNorm) for n, _ in mod.named_parameters()}
    expected = {"bias": biases, "layer_norm": norms, "": set()}[parts]
    adapter_weights = {n for n, p in bart.named_parameters() if "lora" in n or "adapter" in n}
    trainable = {n for n, p in bart.named_parameters() if p.requires_grad}
    assert trainable - adapter_weights == expected
    assert before + added == sum(p.numel() for p in bart.parameters() if p.requires_grad)


def test_unfreeze_refuses_an_unknown_part():
    from rankmix.errors import ConfigError
    from rankmix.modules.clip_bart import unfreeze

    with pytest.raises(ConfigError, match="backbone.unfreeze.*vl_adapter or a list of bias, layer_norm"):
        unfreeze(_bart(), ["embeddings"], {"name": "lora"})


@pytest.mark.slow
def test_tiny_multitask_run(tmp_path):
    r = run_train(tmp_path, "experiment=routing-7/lora_proj", "trainer.max_epochs=1",
                  *VL_SMALL, "backbone.language.warm_start.epochs=1",
                  "backbone.caption_warm_start.epochs=1")
    assert r.returncode == 0, r.stderr[-3000:]
    m = r.result("routing-7")["metrics"]
    assert {"test/vqa/accuracy", "test/gqa/accuracy", "test/nlvr/accuracy", "test/caption/CIDEr", "test/average"} <= set(m)
    assert m["test/average"] == pytest.approx(sum(m[f"test/{t}/accuracy"] for t in ("vqa", "gqa", "nlvr")) / 3)
    table = (tmp_path / "results" / "routing-7" / "table.md").read_text()
    assert "| NLVR2 |" in table and "| COCO CIDEr |" in table
    modes = r.result("routing-7")["train"]["module_modes"]  # VL-Adapter trains the whole BART in train mode
    assert modes["eval"] == 0 and modes["train"] > 0


@pytest.mark.slow
def test_multitask_warm_start_trains_every_task_and_then_loads_from_its_cache(tmp_path, monkeypatch):
    from rankmix.backbones import word_level_tokenizer
    from rankmix.data.vl_multitask import VLMultitaskDataModule
    from rankmix.modules import warm_start

    source = {"coco": {"train": 6, "restval": 0, "val": 1, "test": 1}, "gqa": {"train": 6, "valid": 1, "testdev": 1},
              "nlvr": {"train": 3, "dev": 1, "test1": 1}, "size": 32, "seed": 1, "noise": 0.0}
    dm = VLMultitaskDataModule(None, str(tmp_path / "data"), source=source, batch_size=6, feature_image_size=96,
                               n_boxes=9)
    dm.prepare_data()
    dm.setup()
    tok = word_level_tokenizer(dm.texts(), tmp_path / "tok", split_punctuation=True)
    dm.set_tokenizer(tok)

    def fresh():
        torch.manual_seed(0)
        bart = BartForConditionalGeneration(BartConfig(
            vocab_size=len(tok), d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
            decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, max_position_embeddings=64,
            pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, decoder_start_token_id=tok.eos_token_id))
        return CLIPBart(bart, feat_dim=256, tasks=TASKS)

    seen = Counter()
    loss = CLIPBart.loss
    monkeypatch.setattr(CLIPBart, "loss", lambda self, batch: (seen.update([batch["task"]]), loss(self, batch))[1])
    spec = {"epochs": 2, "lr": 1e-3, "batch_size": 6, "seed": 0}
    model, before = fresh(), fresh().state_dict()
    warm_start.multitask_warm_start(model, dm, spec, tmp_path / "cache")
    assert set(seen) == set(TASKS)  # every task's batches, at its ratio
    assert not torch.equal(model.bart.model.shared.weight, before["bart.model.shared.weight"])
    assert len(list((tmp_path / "cache" / "warm_start").glob("clip_bart-multitask-*.pt"))) == 1
    seen.clear()
    again = fresh()
    warm_start.multitask_warm_start(again, dm, spec, tmp_path / "cache")
    assert not seen and torch.equal(again.visual_embedding.feat.weight, model.visual_embedding.feat.weight)
