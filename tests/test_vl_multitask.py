"""CLIP-BART multitask data (routing functions §5): VL-Adapter's batch ratios and shuffling, prompts, targets, the
VL-T5 files with h5 features, the generated tiny set, and the GQA / NLVR2 scores."""

import json
import shutil
from collections import Counter
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from rankmix.backbones import word_level_tokenizer
from rankmix.data.vl_multitask import MultitaskBatchSampler, TaskExamples, VLMultitaskDataModule
from rankmix.errors import ConfigError, DataError
from rankmix.metrics.vl_tasks import gqa_accuracy, nlvr_accuracy, nlvr_predictions

FIXTURES = Path(__file__).parent / "fixtures"
RATIO_BATCHES = {"vqa": 60, "gqa": 100, "nlvr": 20, "caption": 50}  # batch 60 × VL-Adapter's ratios


def test_batches_follow_the_task_ratios_and_cover_each_example_once():
    sizes = {"vqa": 130, "gqa": 210, "nlvr": 45, "caption": 101}
    s = MultitaskBatchSampler(sizes, RATIO_BATCHES, shuffle=True, seed=3)
    batches = list(s)
    seen = Counter()
    for b in batches:
        tasks = {t for t, _, _ in b}
        assert len(tasks) == 1  # one task per batch
        (task,) = tasks
        assert len(b) <= RATIO_BATCHES[task]
        seen.update((t, i) for t, i, _ in b)
    assert len(seen) == sum(sizes.values()) and set(seen.values()) == {1}
    assert len(batches) == len(s) == 3 + 3 + 3 + 3
    first = [b[0][0] for b in batches]
    assert first != sorted(first)  # tasks interleaved, not one after the other
    s.set_epoch(1)
    assert [b[0][:2] for b in s] != [b[0][:2] for b in batches] and all(b[0][2] == 1 for b in s)
    s2 = MultitaskBatchSampler(sizes, RATIO_BATCHES, shuffle=True, seed=3)
    s2.set_epoch(1)
    assert list(s2) == list(s)  # deterministic from seed and epoch
    ranks = [list(MultitaskBatchSampler(sizes, RATIO_BATCHES, True, 3, world=2, rank=r)) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == 6
    assert {(t, i) for r in ranks for b in r for t, i, _ in b} == set(seen)


def test_vqa_targets_are_drawn_by_soft_score_each_epoch():
    dm = VLMultitaskDataModule(None, "unused", tasks=("vqa",), seed=0)
    dm.examples = {"train": {"vqa": [{"images": ["x"], "sent": "q", "label": {"red": 1.0, "blue": 0.3}}]}}
    data = TaskExamples(dm, "train")
    draws = Counter(data[("vqa", 0, epoch)]["target"] for epoch in range(2000))
    assert abs(draws["blue"] / 2000 - 0.3 / 1.3) < 0.03
    assert data[("vqa", 0, 7)]["target"] == data[("vqa", 0, 7)]["target"]


def _paper_layout(tmp_path: Path) -> Path:
    root = tmp_path / "datasets"
    shutil.copytree(FIXTURES / "vl_multitask", root)
    shutil.copytree(FIXTURES / "vqa" / "vqa", root / "vqa")
    shutil.copytree(FIXTURES / "coco" / "COCO", root / "COCO")
    ids = {"coco": ["COCO_train2014_000000000002", "COCO_val2014_000000000001"] + [
        Path(im["filename"]).stem for im in json.loads((root / "COCO" / "dataset_coco.json").read_text())["images"]],
        "gqa": ["n100001", "n100002", "n100003"],
        "nlvr": [f"{p}-img{k}" for p in ("train-10-0", "train-11-1", "dev-5-2", "test1-0-1") for k in (0, 1)]}
    rng = np.random.default_rng(0)
    for source, keys in ids.items():
        with h5py.File(tmp_path / f"{source}.h5", "w") as f:
            for k in keys:
                f.create_dataset(f"{k}/features", data=rng.standard_normal((49, 16)).astype(np.float32))
    return root


def test_vl_t5_files_with_h5_features(tmp_path):
    root = _paper_layout(tmp_path)
    feats = {s: str(tmp_path / f"{s}.h5") for s in ("coco", "gqa", "nlvr")}
    dm = VLMultitaskDataModule(str(root), str(tmp_path), features=feats, batch_size=6, eval_batch_size=4,
                               gqa_prompt_typo=True)
    dm.check_paths()
    dm.setup()
    assert {t: len(v) for t, v in dm.examples["train"].items()} == {"vqa": 1, "gqa": 2, "nlvr": 2, "caption": 4}
    assert {t: len(v) for t, v in dm.examples["test"].items()} == {"vqa": 2, "gqa": 2, "nlvr": 1, "caption": 1}
    dm.set_tokenizer(word_level_tokenizer(dm.texts(), tmp_path / "tok", split_punctuation=True))
    batches = {b["task"]: b for b in dm.train_dataloader()}
    assert set(batches) == {"vqa", "gqa", "nlvr", "caption"}
    nlvr = batches["nlvr"]
    assert nlvr["visual"].shape == (2, 72, 16) and nlvr["visual_order"][0].tolist() == [0] * 36 + [1] * 36
    assert batches["vqa"]["visual"].shape == (1, 36, 16)
    words = dm.tokenizer.convert_ids_to_tokens(batches["gqa"]["input_ids"][0].tolist())
    assert words[:2] == ["gpa", ":"]  # VL-Adapter's spelling, kept on request
    targets = {dm.tokenizer.decode([t for t in row if t >= 0]) for row in nlvr["labels"].tolist()}
    assert targets == {"true </s>", "false </s>"}  # end-of-text appended: the word-level tokenizer adds none
    test = {b["task"]: b for b in dm.test_dataloader()}
    assert len(test["vqa"]["answers"][0]) == 10 and test["caption"]["references"][0][0].startswith("An orange bus")
    assert test["gqa"]["label"][0] == {"cat": 1.0} and test["nlvr"]["label"] == [0]


def test_missing_files_are_named(tmp_path):
    root = _paper_layout(tmp_path)
    with pytest.raises(ConfigError, match="features.gqa"):
        VLMultitaskDataModule(str(root), str(tmp_path), features={"coco": str(tmp_path / "coco.h5")}).check_paths()
    (root / "nlvr" / "test.json").unlink()
    with pytest.raises(ConfigError, match="has no nlvr/test.json"):
        VLMultitaskDataModule(str(root), str(tmp_path)).check_paths()
    (root / "GQA" / "valid.json").write_text('[{"img_id": "n1", "sent": "q", "label": {}}]')
    dm = VLMultitaskDataModule(str(root), str(tmp_path), tasks=("gqa",))
    with pytest.raises(DataError, match=r"GQA/valid.json: record 1 lacks field 'question_id'"):
        dm.setup()
    with pytest.raises(ConfigError, match="unknown task"):
        VLMultitaskDataModule(None, str(tmp_path), tasks=("vqa", "okvqa"))


TINY_SOURCE = {"coco": {"train": 8, "restval": 0, "val": 2, "test": 2}, "gqa": {"train": 8, "valid": 2, "testdev": 2},
               "nlvr": {"train": 4, "dev": 1, "test1": 1}, "size": 32, "seed": 1, "noise": 0.0}


def test_tiny_set_is_generated_with_features(tmp_path):
    from rankmix.data.vl_like import prepared

    source = TINY_SOURCE
    left = prepared(tmp_path, source, 224) / "features" / "coco_tiny_224.h5"   # as a killed writer leaves it
    left.parent.mkdir(parents=True)
    left.write_bytes(b"\x89HDF\r\n")
    dm = VLMultitaskDataModule(None, str(tmp_path), source=source, batch_size=6)
    dm.prepare_data()   # the made-up bundle in VL-T5's layout, its paths then checked as a given bundle's are
    assert dm.feature_file("coco") == left
    assert {p.name for p in dm.feature_file("gqa").parent.iterdir()} == {f"{s}_tiny_224.h5" for s in ("coco", "gqa", "nlvr")}
    dm.setup()
    assert all(len(dm.examples["train"][t]) > 0 for t in ("vqa", "gqa", "nlvr", "caption"))
    dm.set_tokenizer(word_level_tokenizer(dm.texts(), tmp_path / "tok", split_punctuation=True))
    batch = next(iter(dm.train_dataloader()))
    assert batch["visual"].shape[1:] in ((36, 256), (72, 256)) and "labels" in batch  # 224 px: 7x7 pooled to 6x6


@pytest.mark.parametrize("edit, field", [({"gqa": None}, "source.gqa"), ({"nlvr": {"train": 4}}, "source.nlvr")])
def test_a_bad_tiny_source_is_refused_naming_the_field(tmp_path, edit, field):
    from rankmix.data.vl_like import prepare

    source = {k: v for k, v in {**TINY_SOURCE, **edit}.items() if v is not None}
    with pytest.raises(ConfigError, match=f"task.datamodule.{field}"):
        prepare(tmp_path, source, 224)
    assert not (tmp_path / "prepared").exists()


def test_gqa_exact_match_and_nlvr_logits():
    recs = [{"prediction": "cat", "label": {"cat": 1.0}}, {"prediction": "cats", "label": {"cat": 1.0}},
            {"prediction": " yes", "label": {"yes": 1.0}}]
    assert gqa_accuracy(recs) == pytest.approx(200 / 3)
    logits = torch.tensor([[0.0, 2.0, 1.0], [0.0, 1.0, 3.0], [5.0, 1.0, 1.0]])  # ids: 1 = "true", 2 = "false"
    preds = nlvr_predictions(logits, true_id=1, false_id=2)
    assert preds == [1, 0, 0]  # a tie is not "true"
    assert nlvr_accuracy([{"prediction": p, "label": y} for p, y in zip(preds, [1, 1, 0], strict=True)]) == pytest.approx(200 / 3)
