"""Rehearsal data (rankmix.rehearsal.data): the real layouts written with made-up content, read back by the
suite's own loaders through the overrides each writer returns, composed as a paper-scale run composes them."""

import json
import re
from pathlib import Path

import h5py
import pytest
from hydra.utils import instantiate
from PIL import Image

import rankmix.tasks
from rankmix.backbones import word_level_tokenizer
from rankmix.config import compose_run
from rankmix.data import commonsense, flan
from rankmix.data.sources import build_splits
from rankmix.metrics.flan import CLUSTERS
from rankmix.rehearsal import data as rdata

COCO_NAME = re.compile(r"COCO_(train|val)2014_\d{12}")
PAPER = {"flan": ["task=flan"], "commonsense": ["task=commonsense"], "vqa": ["task=vqa", "backbone=vit_roberta"],
         "coco_caption": ["task=coco_caption", "backbone=vit_gpt2"],
         "vl_multitask": ["task=vl_multitask", "backbone=clip_bart"]}


def paper_datamodule_config(task: str, overrides: dict[str, str]):
    """The task's data module config of a paper-scale run given the writer's overrides."""
    cfg = compose_run([*PAPER[task], "scale=paper", *(f"{k}={v}" for k, v in overrides.items())])
    return cfg.task.datamodule


def read(path: Path):
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def vl(tmp_path_factory):
    """The CLIP-BART bundle, written once (feature extraction is the slow part), features kept in a cache."""
    base = tmp_path_factory.mktemp("vl")
    return base, rdata.write_vl_multitask(base / "root", cache_dir=base / "cache")


def folder_overrides(name: str, root: Path) -> dict[str, str]:
    """The overrides the rehearsal gives a benchmark folder's task: its own ``write`` (``rankmix.tasks``)."""
    return {f"task.datamodule.source.{k}": v for k, v in rankmix.tasks.get(name).write(root, 0).items()}


def test_flan_files_in_smoras_layout_read_by_the_paper_source(tmp_path):
    source = paper_datamodule_config("flan", folder_overrides("flan", tmp_path)).source
    test_file, train_dir = Path(source.test_file), Path(source.train_dir)
    assert test_file.relative_to(tmp_path).as_posix() == "smora/datasets/combined_test.json"
    assert train_dir.relative_to(tmp_path).as_posix() == "flan/train"
    records = flan.load_test(test_file)
    assert all(r["task"].endswith("_10templates") for r in records)   # as SMoRA's copy names them
    assert {r["domain"] for r in records} == set(CLUSTERS) and {r["metric"] for r in records} == set(flan.METRICS)
    tasks = {flan.base_task(r["task"]) for r in records}
    for task in tasks:
        rows = [json.loads(line) for line in (train_dir / f"{task}_10templates_train.jsonl").read_text().splitlines()]
        assert set(rows[0]) == {"inputs", "targets", "task"} and {r["task"] for r in rows} == {f"{task}_10templates"}
    splits = build_splits(source)  # the paper source: 1,000 + 10 per task asked, every record there taken
    per_task = len(rows)
    assert {len({r["task"] for r in splits[s]}) for s in splits} == {len(tasks)}
    assert len(splits["validation"]) == 10 * len(tasks) and len(splits["train"]) == (per_task - 10) * len(tasks)


def test_commonsense_files_read_by_the_llm_adapters_loaders(tmp_path):
    source = paper_datamodule_config("commonsense", folder_overrides("commonsense", tmp_path)).source
    assert Path(source.train_file).relative_to(tmp_path).as_posix() == "LLM-Adapters/ft-training_set/commonsense_170k.json"
    train = commonsense.load_train(source.train_file)
    assert set(train[0]) == set(commonsense.FIELDS)
    for name in commonsense.DATASETS:
        recs = commonsense.load_test(source.test_dir, name)
        assert recs and all(commonsense.extract_answer(name, r["output"]) == r["answer"] for r in recs)
    splits = build_splits(source)
    assert [len(splits[s]) for s in ("train", "validation")] == [len(train) - 120, 120]
    assert {r["task"] for r in splits["test"]} == set(commonsense.DATASETS)


@pytest.mark.parametrize("name", ["flan", "commonsense"])
def test_a_benchmark_folders_copy_is_deterministic_in_its_seed(name, tmp_path):
    write = rankmix.tasks.get(name).write
    first, again, other = write(tmp_path / "a", 3), write(tmp_path / "b", 3), write(tmp_path / "c", 4)
    files = lambda paths: {Path(p).relative_to(Path(p).parents[2]): Path(p) for p in paths.values()}  # noqa: E731
    read_all = lambda path: b"".join(f.read_bytes() for f in sorted(path.rglob("*")) if f.is_file()) \
        if path.is_dir() else path.read_bytes()  # noqa: E731
    assert [read_all(p) for p in files(first).values()] == [read_all(p) for p in files(again).values()]
    assert [read_all(p) for p in files(first).values()] != [read_all(p) for p in files(other).values()]


@pytest.mark.parametrize("writer", [rdata.write_vqa, rdata.write_karpathy])
def test_writers_are_deterministic_and_skip_a_complete_copy(writer, tmp_path):
    first = writer(tmp_path / "a", seed=3)
    stamp = tmp_path / "a" / rdata.STAMP
    mtime = stamp.stat().st_mtime_ns
    assert writer(tmp_path / "a", seed=3) == first and stamp.stat().st_mtime_ns == mtime
    writer(tmp_path / "b", seed=3)
    for key in first:
        a, b = Path(first[key]), tmp_path / "b" / Path(first[key]).relative_to(tmp_path / "a")
        files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file()) if a.is_dir() else [Path()]
        assert files and all((a / f).read_bytes() == (b / f).read_bytes() for f in files)


def test_a_writer_rewrites_for_new_settings_and_keeps_to_its_root(tmp_path):
    rdata.write_vqa(tmp_path / "a", seed=3)
    rdata.write_vqa(tmp_path / "a", seed=4)
    assert read(tmp_path / "a" / rdata.STAMP)["seed"] == 4
    with pytest.raises(ValueError, match="holds the rehearsal data of 'vqa'"):
        rdata.write_karpathy(tmp_path / "a")
    with pytest.raises(ValueError, match="unknown split or source 'valid'"):
        rdata.write_vqa(tmp_path / "c", n_images={"valid": 2})


def test_vqa_bundle_and_coco_images_load_into_a_training_batch(tmp_path):
    dm_cfg = paper_datamodule_config("vqa", rdata.write_vqa(tmp_path))
    bundle, images = Path(dm_cfg.data_dir), Path(dm_cfg.images_dir)
    train, test = (read(bundle / "vqa" / f"karpathy_{s}.json") for s in ("train", "test"))
    assert all(COCO_NAME.fullmatch(r["img_id"]) for r in train + test)
    assert {r["img_id"][:9] for r in train} == {"COCO_trai", "COCO_val2"}  # Karpathy train holds restval images
    assert {r["answer_type"] for r in test} == {"yes/no", "number", "other"}
    val_anns = read(bundle / "vqa" / "v2_mscoco_val2014_annotations.json")
    assert val_anns["data_subtype"] == "val2014" and {a["question_id"] for a in val_anns["annotations"]} >= {
        r["question_id"] for r in test}
    assert all(r["question_id"] // 1000 == int(r["img_id"][-12:]) for r in train)
    files = sorted(images.rglob("*.jpg"))
    assert all(p.parent.name == p.stem.split("_")[1] for p in files) and len(files) == 16
    assert {Image.open(p).size for p in files} == {(224, 224), (640, 480)}
    dm = instantiate(dm_cfg, cache_dir=str(tmp_path / "cache"))
    dm.check_paths()
    dm.set_tokenizer(word_level_tokenizer([r["sent"] for r in train + test], tmp_path / "tok", split_punctuation=True))
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    assert batch["pixel_values"].shape[1:] == (3, 224, 224) and batch["target"].sum() > 0


def test_karpathy_file_and_images_load_into_a_training_batch(tmp_path):
    dm_cfg = paper_datamodule_config("coco_caption", rdata.write_karpathy(tmp_path))
    data = read(Path(dm_cfg.data_dir) / "COCO" / "dataset_coco.json")
    assert data["dataset"] == "coco" and {im["split"] for im in data["images"]} == {"train", "restval", "val", "test"}
    for im in data["images"]:
        assert set(im) == {"filepath", "sentids", "filename", "imgid", "split", "sentences", "cocoid"}
        assert im["filename"] == f"COCO_{im['filepath']}_{im['cocoid']:012d}.jpg" and len(im["sentences"]) == 5
        assert (im["filepath"] == "train2014") == (im["split"] == "train")
        assert im["sentids"] == [s["sentid"] for s in im["sentences"]] and im["sentences"][0]["imgid"] == im["imgid"]
    dm = instantiate(dm_cfg, cache_dir=str(tmp_path / "cache"))
    dm.check_paths()
    dm.set_tokenizer(word_level_tokenizer(dm.caption_texts(), tmp_path / "tok", split_punctuation=True))
    dm.setup()
    assert [len(dm.examples[s]) for s in ("train", "val", "test")] == [40, 4, 4]
    assert next(iter(dm.train_dataloader()))["pixel_values"].shape[1:] == (3, 224, 224)


def test_vl_bundle_and_clip_features_load_into_every_tasks_batch(vl, tmp_path):
    base, overrides = vl
    dm_cfg = paper_datamodule_config("vl_multitask", overrides)
    bundle = Path(dm_cfg.data_dir)
    gqa = {s: read(bundle / "GQA" / f"{s}.json") for s in ("train", "valid", "testdev")}
    assert all(r["img_id"].startswith("n") == (s == "testdev") for s, recs in gqa.items() for r in recs)
    assert all(re.fullmatch(r"\d{8}", r["question_id"]) for recs in gqa.values() for r in recs)
    nlvr = {s: read(bundle / "nlvr" / f"{s}.json") for s in ("train", "valid", "test")}
    for (file, recs), split in zip(nlvr.items(), ("train", "dev", "test1"), strict=True):
        assert recs and {r["label"] for r in recs} == {0, 1}, file
        assert all(re.fullmatch(rf"{split}-\d+-\d-\d", r["identifier"]) and r["img1"] == r["identifier"][:-2] + "-img1"
                   for r in recs)
    images = {"coco": set(), "gqa": {r["img_id"] for recs in gqa.values() for r in recs},
              "nlvr": {r[k] for recs in nlvr.values() for r in recs for k in ("img0", "img1")}}
    images["coco"] = {Path(im["filename"]).stem for im in read(bundle / "COCO" / "dataset_coco.json")["images"]}
    assert sum(map(len, images.values())) <= 48
    for source, ids in images.items():
        with h5py.File(dm_cfg.features[source], "r") as f:
            assert set(f) == ids and all(f[f"{i}/features"].shape == (49, 2048) for i in ids)
    dm = instantiate(dm_cfg, cache_dir=str(tmp_path / "cache"))
    dm.check_paths()
    dm.setup()
    dm.set_tokenizer(word_level_tokenizer(dm.texts(), tmp_path / "tok", split_punctuation=True))
    batches = {b["task"]: b for b in dm.train_dataloader()}
    assert set(batches) == {"vqa", "gqa", "nlvr", "caption"}
    assert batches["nlvr"]["visual"].shape[1:] == (72, 2048) and batches["vqa"]["visual"].shape[1:] == (36, 2048)


def test_vl_features_come_from_the_cache_for_the_same_images(vl, tmp_path, monkeypatch):
    base, first = vl

    def no_encoder(*args, **kwargs):
        raise AssertionError("features were extracted again")

    monkeypatch.setattr("rankmix.data.clip_features.grid_encoder", no_encoder)
    second = rdata.write_vl_multitask(tmp_path, cache_dir=base / "cache")
    for source in ("coco", "gqa", "nlvr"):
        key = f"++task.datamodule.features.{source}"
        assert Path(second[key]).read_bytes() == Path(first[key]).read_bytes()


def test_llava_files_in_xtuners_layout_and_a_projector_stand_in_the_model_reads(tmp_path):
    from rankmix.data.llava_instruct import read_records
    from rankmix.llava import projector_state
    from rankmix.rehearsal.data import write_llava
    from rankmix.rehearsal.standins import build_projector_standin, build_standin

    paths = write_llava(tmp_path / "llava")
    train, images = Path(paths["task.datamodule.train_file"]), Path(paths["task.datamodule.images_dir"])
    assert train.parts[-2:] == ("LLaVA-Instruct-150K", "llava_v1_5_mix665k.json") and images.name == "llava_images"
    records = read_records(train, images)   # every image found where the record says
    assert any("image" not in r for r in records)
    assert all(r["image"].startswith("coco/train2017/") for r in records if "image" in r)
    assert all(Path(paths[f"task.benchmarks.{b}.dataset_path"], "README.md").is_file() for b in ("mme", "mathvista"))
    vision = build_standin("openai/clip-vit-large-patch14-336", tmp_path / "cache")
    llm = build_standin("meta-llama/Meta-Llama-3-8B-Instruct", tmp_path / "cache")
    folder = build_projector_standin("xtuner/llava-llama-3-8b-pretrain", "iter_2181.pth", vision, llm, tmp_path / "cache")
    state = projector_state({"name_or_path": str(folder), "file": "iter_2181.pth"})
    assert state["linear_1.weight"].shape == (4096 // 16, 1024 // 16)   # vision width -> LLM width, both ÷ 16


def test_the_tiny_vqa_and_caption_data_are_the_rehearsals_writer_at_tiny_size(tmp_path, monkeypatch):
    """One way to make fake COCO data: the tiny data modules, with ``data_dir: null``, read the layout the rehearsal
    writes (``rankmix.data.coco_like``: COCO names, VL-T5 and Karpathy files), written once per settings and code."""
    from rankmix.data import coco_like
    from rankmix.data.captioning import CaptionDataModule
    from rankmix.data.vqa import VQADataModule

    source = {"n_train": 6, "n_restval": 1, "n_val": 2, "n_test": 2, "size": 16, "seed": 3, "noise": 0.2}
    vqa = VQADataModule(None, str(tmp_path), source=source, image_size=16)
    vqa.prepare_data()
    records = read(vqa.root() / "vqa" / "karpathy_train.json")
    assert all(COCO_NAME.fullmatch(r["img_id"]) and r["sent"][0].isupper() for r in records)
    assert {Image.open(p).size for p in vqa.image_root().rglob("*.jpg")} == {(16, 16), (45, 34)}   # every fourth 4:3
    rehearsal = tmp_path / "r"
    coco_like.write_coco_like(rehearsal, {s: source[f"n_{s}"] for s in coco_like.SPLITS}, 16, 3)
    assert read(rehearsal / "VL-T5/datasets/vqa/karpathy_train.json") == records
    caption = CaptionDataModule(None, str(tmp_path), source=source, image_size=16)
    assert caption.annotations_path() == vqa.root() / "COCO" / "dataset_coco.json"   # one copy for both tasks
    stamp = vqa.root().parents[1] / coco_like.STAMP
    mtime = stamp.stat().st_mtime_ns
    caption.prepare_data()
    assert stamp.stat().st_mtime_ns == mtime
    caption.set_tokenizer(word_level_tokenizer(caption.caption_texts(), tmp_path / "tok", split_punctuation=True))
    caption.setup()
    assert len(caption.examples["train"]) == 5 * 7 and len(caption.examples["test"]) == 2   # train + restval, 5 each
    before = vqa.root()
    monkeypatch.setattr(coco_like, "code_fingerprint", lambda *m: "edited")
    assert vqa.root() != before and not vqa.root().exists()   # an edited writer: a new copy


def test_a_rehearsal_copy_made_by_other_code_is_written_again(tmp_path, monkeypatch):
    rdata.write_vqa(tmp_path / "a", seed=3)
    stamp = tmp_path / "a" / rdata.STAMP
    (tmp_path / "a" / "VL-T5" / "datasets" / "vqa" / "karpathy_test.json").unlink()
    rdata.write_vqa(tmp_path / "a", seed=3)
    assert not (tmp_path / "a" / "VL-T5" / "datasets" / "vqa" / "karpathy_test.json").exists()   # same code: kept
    monkeypatch.setattr(rdata, "code_fingerprint", lambda *m: "edited")
    rdata.write_vqa(tmp_path / "a", seed=3)
    assert (tmp_path / "a" / "VL-T5" / "datasets" / "vqa" / "karpathy_test.json").is_file()
    assert read(stamp)["code"] == "edited"


def test_the_subject_is_the_tiny_writers_jpegs_and_a_second_writer_keeps_the_first(tmp_path):
    from rankmix.data.subjects import write_shape_subject

    folder = Path(rdata.write_subject(tmp_path / "r", seed=2)["task.datamodule.instance_dir"])
    names = [f"{i:02d}.jpg" for i in range(5)]   # MoSLoRA's subject_driven_generation/cat layout
    assert sorted(p.name for p in folder.iterdir()) == names and {Image.open(folder / n).format for n in names} == {"JPEG"}
    tiny = write_shape_subject(tmp_path / "t", 5, 64, 2)
    assert all((folder / n).read_bytes() == (tiny / n).read_bytes() for n in names)
    assert write_shape_subject(tmp_path / "t", 5, 64, 2) == tiny and sorted(p.name for p in tmp_path.iterdir()) == ["r", "t"]
