"""COCO captioning (routing functions §4): caption metrics on hand-worked examples, the Karpathy loader on fixtures,
LoRA on Q and V of GPT-2's fused c_attn, the ViT-prefix captioner, and a tiny end-to-end run."""

import csv
import json
import math
from pathlib import Path

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, ViTConfig, ViTModel
from transformers.pytorch_utils import Conv1D

from conftest import run_train
from rankmix.adapters import inject
from rankmix.adapters.routing import RoutingLayer
from rankmix.backbones import word_level_tokenizer
from rankmix.data.captioning import CaptionDataModule
from rankmix.errors import ConfigError, DataError
from rankmix.metrics import captioning
from rankmix.metrics.captioning import python_ptb, score_captions
from rankmix.modules.captioning import VisionPrefixCaptioner

FIXTURES = Path(__file__).parent / "fixtures" / "coco"
# hypothesis and reference of the hand-worked BLEU-4 / ROUGE-L example
HYP, REF = "a red square at the left", "A red square at the top left."


@pytest.fixture
def no_java(monkeypatch):
    monkeypatch.setattr(captioning.shutil, "which", lambda name: None)


def test_bleu4_and_rouge_l_by_hand(no_java):
    # n-gram precisions 6/6, 4/5, 3/4, 2/3; brevity penalty exp(1 - 7/6)
    bleu = math.exp(1 - 7 / 6) * (1 * 0.8 * 0.75 * (2 / 3)) ** 0.25
    # LCS 6 of 6 and 7 words: P = 1, R = 6/7, F_beta with beta = 1.2
    p, r, b2 = 1.0, 6 / 7, 1.2 ** 2
    rouge = (1 + b2) * p * r / (r + b2 * p)
    scores, notes = score_captions([{"prediction": HYP, "references": [REF]}], ("BLEU-4", "ROUGE-L"))
    assert scores["BLEU-4"] == pytest.approx(100 * bleu, abs=1e-4)
    assert scores["ROUGE-L"] == pytest.approx(100 * rouge, abs=1e-4)
    assert notes["tokenizer"] == "python_ptb (no Java)"


def test_cider_d_by_hand(no_java):
    # two images with disjoint words, each caption equal to its only reference: every n-gram has idf log(2/1) in
    # both vectors, so each n-gram order scores cosine 1 with no length penalty; CIDEr-D = 10 · mean = 10
    recs = [{"prediction": "one two three four five", "references": ["one two three four five"]},
            {"prediction": "six seven eight nine ten", "references": ["six seven eight nine ten"]}]
    assert score_captions(recs, ("CIDEr",))[0]["CIDEr"] == pytest.approx(1000.0, rel=1e-6)


def test_missing_java_leaves_metrics_out_with_the_reason(no_java):
    scores, notes = score_captions([{"prediction": HYP, "references": [REF]}])
    assert set(scores) == {"BLEU-4", "ROUGE-L", "CIDEr"}
    assert set(notes["missing"]) == {"METEOR", "SPICE", "Avg."}
    assert "Java not found" in notes["missing"]["METEOR"] and "SPICE" in notes["missing"]["Avg."]


def test_python_tokenizer_matches_the_ptb_output():
    assert python_ptb("A man's dog, (running) -- fast...") == "a man 's dog running fast"
    assert python_ptb("Two shapes: a red square.") == "two shapes a red square"


@pytest.mark.skipif(captioning.java_missing() is not None, reason="needs Java for the PTB tokenizer and METEOR")
def test_with_java_the_ptb_tokenizer_and_meteor_run():
    recs = [{"prediction": HYP, "references": [REF]}, {"prediction": "two blue circles", "references": ["Two blue circles."]}]
    scores, notes = score_captions(recs, ("BLEU-4", "METEOR"))
    assert notes["tokenizer"] == "ptb" and 0 < scores["METEOR"] <= 100
    python_scores, _ = score_captions(recs, ("BLEU-4",), java_tokenizer=False)
    assert python_scores["BLEU-4"] == pytest.approx(scores["BLEU-4"])  # same tokens for plain captions


def test_karpathy_loader_reads_the_fixture(tmp_path):
    dm = CaptionDataModule(str(FIXTURES), str(tmp_path), images_dir=str(FIXTURES / "images"), image_size=8,
                           max_length=6)
    dm.check_paths()
    texts = dm.caption_texts()
    assert len(texts) == 4  # train + restval images, two sentences each
    dm.set_tokenizer(word_level_tokenizer(texts, tmp_path / "tok", split_punctuation=True))
    dm.setup()
    assert [len(dm.examples[s]) for s in ("train", "val", "test")] == [4, 1, 1]
    assert all(len(x["input_ids"]) <= 6 and x["input_ids"][-1] == dm.tokenizer.eos_token_id for x in dm.examples["train"])
    batch = dm.collate(dm.examples["val"])
    assert batch["pixel_values"].shape == (1, 3, 8, 8) and len(batch["references"][0]) == 3
    assert batch["image_id"] == [73]


def test_karpathy_loader_errors_name_the_file_and_record(tmp_path):
    bad = tmp_path / "COCO"
    bad.mkdir()
    (bad / "dataset_coco.json").write_text(json.dumps({"images": [{"filename": "x.jpg", "split": "train"}]}))
    dm = CaptionDataModule(str(tmp_path), str(tmp_path), images_dir=str(tmp_path))
    with pytest.raises(DataError, match=r"dataset_coco.json: image record 1 lacks field 'sentences'"):
        dm.images()
    with pytest.raises(ConfigError, match="images_dir"):
        CaptionDataModule(str(FIXTURES), str(tmp_path)).check_paths()
    with pytest.raises(ConfigError, match="COCO/dataset_coco.json"):
        CaptionDataModule(str(tmp_path / "nowhere"), str(tmp_path), images_dir=str(tmp_path)).check_paths()


def test_lora_on_q_and_v_of_the_fused_c_attn():
    torch.manual_seed(0)
    layer = RoutingLayer(Conv1D(3 * 8, 8), fn="none", r=2, fused_parts=[True, False, True])
    torch.nn.init.normal_(layer.lora_B.weight)
    x = torch.randn(3, 8)
    delta = layer.delta(x)
    assert layer.lora_A.weight.shape == (4, 8) and layer.lora_B.weight.shape == (16, 2)  # a rank-2 LoRA each for Q, V
    assert delta[:, 8:16].abs().max() == 0 and delta[:, :8].abs().max() > 0 and delta[:, 16:].abs().max() > 0
    assert torch.allclose(delta, x @ layer.delta_weight().T, atol=1e-6)
    y0 = layer(x)
    layer.merge()
    assert torch.allclose(layer(x), y0, atol=1e-5)
    with pytest.raises(ConfigError, match="fused_parts"):
        RoutingLayer(Conv1D(24, 8), fn="none", base="adapter", fused_parts=[True, False, True])
    with pytest.raises(ConfigError, match="do not divide"):
        RoutingLayer(Conv1D(25, 8), fn="none", fused_parts=[True, False, True])


def test_routing_acts_on_both_fused_loras_together():
    from rankmix.adapters import adapter_context

    torch.manual_seed(0)
    layer = RoutingLayer(Conv1D(3 * 8, 8), fn="proj", r=2, fused_parts=[True, False, True])
    torch.nn.init.normal_(layer.lora_B.weight)
    x, x_r = torch.randn(2, 5, 8), torch.randn(2, 8)
    with adapter_context(layer, x_r=x_r):
        delta = layer.delta(x)
    z, xv = x @ layer.lora_A.weight.T, x_r @ layer.lora_A.weight.T  # (2, 5, 4), (2, 4): both LoRAs' x_t, x_v
    routed = (z * xv[:, None]).sum(-1, keepdim=True) * xv[:, None]  # the dot product spans all 2r dims
    b_q, b_v = layer.lora_B.weight.chunk(2)
    expect = torch.cat([routed[..., :2] @ b_q.T, torch.zeros(2, 5, 8), routed[..., 2:] @ b_v.T], dim=-1)
    assert torch.allclose(delta, expect, atol=1e-5)


def _captioner(fn="proj"):
    torch.manual_seed(0)
    vision = ViTModel(ViTConfig(image_size=8, patch_size=4, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                intermediate_size=64))
    lm = GPT2LMHeadModel(GPT2Config(vocab_size=20, n_embd=32, n_layer=1, n_head=2, n_positions=16, bos_token_id=1,
                                    eos_token_id=2, pad_token_id=0))
    inject(lm, {"name": "routing", "fn": fn, "r": 4, "target_modules": ["c_attn"], "fused_parts": [True, False, True]})
    for name, p in lm.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.5)
    return VisionPrefixCaptioner(vision, lm).eval()


def test_the_image_conditions_the_caption_through_prefix_and_routing():
    model = _captioner()
    img, ids, mask = torch.randn(2, 3, 8, 8), torch.tensor([[5, 6, 2], [7, 2, 0]]), torch.tensor([[1, 1, 1], [1, 1, 0]])
    logits = model(img, ids, mask)
    assert logits.shape == (2, 3, 20) and not torch.allclose(logits, model(img + 1.0, ids, mask))
    out = model.generate(img, max_new_tokens=4, num_beams=1, eos_token_id=2, pad_token_id=0)
    beams = model.generate(img, max_new_tokens=4, num_beams=3, eos_token_id=2, pad_token_id=0)  # x_R per beam
    assert out.shape[0] == beams.shape[0] == 2 and out.shape[1] <= 4


@pytest.mark.slow
def test_tiny_captioning_runs_table_and_figures(tmp_path):
    """Tab. 4's LoRA r 64 rows without and with routing, end to end; then Fig. B8 and Fig. 4 from their artefacts."""
    from rankmix.figures import build_figure

    # ++: a sweep first composes without the swept experiment, where these keys do not exist yet
    r = run_train(tmp_path, "experiment=routing-4/lora_64_none,routing-4/lora_64_proj", "trainer.max_epochs=1",
                  "++task.datamodule.source.n_train=12", "++task.datamodule.source.n_val=2",
                  "++task.datamodule.source.n_test=4", "++backbone.language.warm_start.epochs=1",
                  multirun=True)
    assert r.returncode == 0, r.stderr[-3000:]
    runs = [json.loads(p.read_text()) for p in (tmp_path / "results" / "routing-4" / "runs").glob("*.json")]
    assert sorted(res["config"]["method"]["fn"] for res in runs) == ["none", "proj"]
    for res in runs:
        m = res["metrics"]
        assert {"test/BLEU-4", "test/ROUGE-L", "test/CIDEr", "test/ms_per_sample"} <= set(m)
        missing = res["evaluation"]["missing"]
        assert ("test/SPICE" in m) != ("SPICE" in missing)  # a number or a reason, never both or neither
        assert res["params"]["trainable"] == 2 * (2 * 64 * 384 + 2 * 384 * 64)  # 2 layers, rank-64 LoRAs on Q and V
    table = (tmp_path / "results" / "routing-4" / "table.md").read_text()
    assert "| SPICE |" in table and ("missing" in table) == bool(missing)
    preds = sorted((tmp_path / "runs" / "routing-4").glob("*/predictions.jsonl"))
    assert len(preds) == 2 and len(preds[0].read_text().splitlines()) == 4

    png = build_figure("routing-figb8", tmp_path / "results", tmp_path / "runs")
    ratios = list(csv.DictReader(open(png.parent / "figure.csv")))
    assert {(row["panel"], row["series"]) for row in ratios} == {(p, fn) for p in ("Q", "V") for fn in ("none", "proj")}
    assert all(float(row["y"]) > 0 for row in ratios)  # both projections moved away from their init
    png = build_figure("routing-fig4", tmp_path / "results", tmp_path / "runs")
    bars = [row for row in csv.DictReader(open(png.parent / "figure.csv")) if row["panel"] == "proj"]
    assert bars[0]["series"] == "IMAGE" and len(bars) > 3 and "content words" in (
        png.parent / "caption.md").read_text()
