"""Made-up data for the CLIP-BART multitask (routing functions §5), in the real layouts: VL-T5's ``datasets/``
bundle, the COCO, GQA and NLVR2 images, and their CLIP grid features. What the vl_multitask task reads at every
scale: ``scale=tiny`` writes it into the cache (``prepare``) when ``task.datamodule.data_dir`` is null, with the
features of a small random CLIP-ResNet calibrated on the images; ``make rehearse`` writes it at 224 × 224 with a
random-init RN101's features (``rankmix.rehearsal.data``). Both are read by ``rankmix.data.vl_multitask``.

Files under ``root`` (``write_vl_like``, ``write_features``):

- the COCO part (``rankmix.data.coco_like``): ``VL-T5/datasets/vqa/``, ``VL-T5/datasets/COCO/dataset_coco.json`` and
  ``coco/images/{train2014,val2014}/``;
- ``VL-T5/datasets/GQA/{train,valid,testdev}.json`` (``img_id, label: {answer: 1.0}, question_id, sent``; question
  ids as 8-digit strings), ``trainval_ans2label.json`` and ``trainval_label2ans.json``; images
  ``gqa/images/{img_id}.jpg`` with Visual Genome ids (train, valid) and ``n``-prefixed ids (testdev). Questions:
  ``rankmix.data.shapes_compositional.gqa_questions``;
- ``VL-T5/datasets/nlvr/{train,valid,test}.json`` (NLVR2's train, dev, test1: ``identifier, img0, img1, label, sent,
  uid``), two statements per image pair, one true, one false (``nlvr_statement``); images
  ``nlvr2/images/{split}/{split}-{set}-{pair}-img{0,1}.png`` (train ones in ``train/<set % 100>/``);
- ``features/{source}_{tag}.h5`` (``"{img_id}/features"``, H·W × C, as ``scripts/extract_clip_features.py`` writes
  them; ``RN101`` for ``resnet101_clip``), one per image source.

Scenes come from the generated shapes set (``rankmix.data.shapes``), one set per source (seeds ``seed``,
``seed + 1``, ``seed + 2``); questions and statements are capitalised as people write them.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import tempfile
from pathlib import Path

from rankmix.atomic import one_writer
from rankmix.config import digest
from rankmix.data.coco_like import SPLITS as COCO_SPLITS
from rankmix.data.coco_like import sentence_case, write_coco_like, write_json
from rankmix.data.fingerprints import code_fingerprint
from rankmix.data.shapes import generate_shapes
from rankmix.data.shapes_compositional import gqa_questions, nlvr_statement
from rankmix.errors import ConfigError

SPLITS = {"coco": COCO_SPLITS, "gqa": ("train", "valid", "testdev"), "nlvr": ("train", "dev", "test1")}   # NLVR2: pairs
FOLDERS = {"data_dir": "VL-T5/datasets", "coco": "coco/images", "gqa": "gqa/images", "nlvr": "nlvr2/images",
           "features": "features"}
VG_MAX_ID = 2417997   # the largest Visual Genome image id
STAMP = "done.json"
WRITERS = ("rankmix.data.vl_like", "rankmix.data.coco_like", "rankmix.data.shapes",
           "rankmix.data.shapes_compositional", "rankmix.data.clip_features", "rankmix.data.images")


def write_vl_like(root: Path, n_images: dict[str, dict[str, int]], size: int, seed: int, noise: float = 0.2) -> None:
    """The bundle and images under ``root`` (``n_images``: per source, images per split, every split of ``SPLITS``)."""
    for source, splits in SPLITS.items():
        given = n_images.get(source, {})
        if set(given) != set(splits) or set(n_images) - set(SPLITS):
            raise ValueError(f"n_images needs, per source {', '.join(SPLITS)}, exactly the splits {', '.join(splits)} "
                             f"for {source}; given {dict(n_images)}")
    root = Path(root)
    write_coco_like(root, n_images["coco"], size, seed, noise)
    bundle = root / FOLDERS["data_dir"]
    with tempfile.TemporaryDirectory(dir=root, prefix=".scratch-") as tmp:
        _gqa(Path(tmp), n_images["gqa"], root / FOLDERS["gqa"], bundle / "GQA", size, seed + 1, noise)
        _nlvr(Path(tmp), n_images["nlvr"], root / FOLDERS["nlvr"], bundle / "nlvr", size, seed + 2, noise)


def write_features(root: Path, encoder: str, image_size: int, seed: int = 0, calibrate: bool = False,
                   cache_dir: Path | None = None) -> dict[str, Path]:
    """``features/{source}_{tag}.h5`` of every image under each source's folder by ``rankmix.data.clip_features``'s
    ``grid_encoder(encoder)`` (random weights; ``calibrate``: its BatchNorms take the statistics of the first COCO
    images); with ``cache_dir`` the files are made (or found) there, keyed by the images and the encoder, and copied.
    Returns ``{source: file}``."""
    from rankmix.data.clip_features import calibration_images, extract, grid_encoder, image_files

    root = Path(root)
    images = {s: image_files(root / FOLDERS[s]) for s in SPLITS}
    out = feature_files(root, encoder, image_size)
    settings = f"{encoder}/{image_size}/{seed}/{calibrate}/{code_fingerprint('rankmix.data.clip_features', 'rankmix.data.images')}"
    work = root / FOLDERS["features"] if cache_dir is None else Path(cache_dir) / f"clip-{_images_key(images, settings)}"
    model = None
    for source, files in images.items():
        path = work / out[source].name
        if not _has_all(path, files):
            model = model or grid_encoder(encoder, image_size=image_size, seed=seed, calibrate=calibration_images(
                images["coco"], image_size) if calibrate else None)
            extract(model, files, path, image_size)
        if path != out[source]:
            out[source].parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, out[source])
    return out


def prepared(cache_dir: Path, source: dict, feature_image_size: int) -> Path:
    """The root of the tiny copy for ``source`` (``coco, gqa, nlvr``: images per split; ``size, seed, noise``) and
    its features at ``feature_image_size``, keyed by them and the code that writes it (``prepare`` writes it)."""
    key = digest({**dict(source), "feature_image_size": feature_image_size, "_code": code_fingerprint(*WRITERS)}, 10)
    return Path(cache_dir) / "prepared" / f"vl-{key}"


def prepare(cache_dir: Path, source: dict, feature_image_size: int) -> dict[str, Path]:
    """Write the tiny copy unless it is there (runs side by side wait for the first); returns its feature files."""
    for key in (*SPLITS, "size", "seed", "noise"):
        if key not in source:
            raise ConfigError(f"task.datamodule.source.{key}", None, "the made-up VL-T5 bundle needs coco, gqa and nlvr "
                              "(images per split), size, seed and noise (conf/scaled/task/tiny/vl_multitask.yaml)")
    for key, splits in SPLITS.items():
        if not isinstance(source[key], dict) or set(source[key]) != set(splits):
            raise ConfigError(f"task.datamodule.source.{key}", source[key], f"must give images per split: {', '.join(splits)}")
    root = prepared(cache_dir, source, feature_image_size)
    with one_writer(root):
        if not (root / STAMP).is_file():
            shutil.rmtree(root, ignore_errors=True)   # what a killed writer left: the stamp is written last
            counts = {s: {k: int(v) for k, v in source[s].items()} for s in SPLITS}
            write_vl_like(root, counts, int(source["size"]), int(source["seed"]), float(source["noise"]))
            write_features(root, "tiny", feature_image_size, calibrate=True)
            (root / STAMP).write_text(json.dumps({**dict(source), "feature_image_size": feature_image_size}))
    return feature_files(root, "tiny", feature_image_size)


def feature_files(root: Path, encoder: str, image_size: int) -> dict[str, Path]:
    """``{source: features/{source}_{tag}.h5}`` under ``root``."""
    tag = "RN101" if encoder == "resnet101_clip" else f"{encoder}_{image_size}"
    return {s: Path(root) / FOLDERS["features"] / f"{s}_{tag}.h5" for s in SPLITS}


def _scenes(shapes: Path) -> dict[str, dict]:
    """The generated scenes, cells as tuples (what the question writers take)."""
    scenes = json.loads((shapes / "scenes.json").read_text())
    return {k: {**s, "objects": [{**o, "cell": tuple(o["cell"])} for o in s["objects"]]} for k, s in scenes.items()}


def _save_image(png: Path, out: Path) -> None:
    from PIL import Image

    out.parent.mkdir(parents=True, exist_ok=True)
    img = Image.open(png).convert("RGB")
    img.save(out, **({"quality": 90} if out.suffix == ".jpg" else {}))


def _gqa(tmp: Path, counts: dict, images_dir: Path, out: Path, size: int, seed: int, noise: float) -> None:
    shapes = generate_shapes(tmp / "gqa", {"train": counts["train"], "val": counts["valid"], "test": counts["testdev"]},
                             size=size, seed=seed, noise=noise)
    scenes, rng = _scenes(shapes), random.Random(seed)
    ids = iter(rng.sample(range(1, VG_MAX_ID + 1), len(scenes)))
    qids = iter(rng.sample(range(10 ** 8), 16 * len(scenes)))
    files = {"train": [], "valid": [], "testdev": []}
    for key, scene in scenes.items():
        split = {"train": "train", "val": "valid", "test": "testdev"}[scene["split"]]
        img_id = f"n{next(ids)}" if split == "testdev" else str(next(ids))
        _save_image(shapes / "images" / f"{key}.png", images_dir / f"{img_id}.jpg")
        files[split] += [{"img_id": img_id, "label": {answer: 1.0}, "question_id": f"{next(qids):08d}",
                          "sent": sentence_case(sent)} for sent, answer in gqa_questions(rng, scene["objects"])]
    for split, records in files.items():
        write_json(out / f"{split}.json", records)
    answers = sorted({a for split in ("train", "valid") for r in files[split] for a in r["label"]})
    write_json(out / "trainval_ans2label.json", {a: i for i, a in enumerate(answers)})
    write_json(out / "trainval_label2ans.json", answers)


def _nlvr(tmp: Path, counts: dict, images_dir: Path, out: Path, size: int, seed: int, noise: float) -> None:
    shapes = generate_shapes(tmp / "nlvr", {"train": 2 * counts["train"], "val": 2 * counts["dev"],
                                            "test": 2 * counts["test1"]}, size=size, seed=seed, noise=noise)
    scenes, rng = _scenes(shapes), random.Random(seed)
    set_ids = iter(rng.sample(range(10000), sum(counts.values())))
    for shapes_split, split, file in (("train", "train", "train"), ("val", "dev", "valid"), ("test", "test1", "test")):
        keys = [k for k, s in scenes.items() if s["split"] == shapes_split]
        records = []
        for left, right in zip(keys[0::2], keys[1::2], strict=True):
            set_id = next(set_ids)
            prefix = f"{split}-{set_id}-{rng.randrange(4)}"
            folder = images_dir / split / (str(set_id % 100) if split == "train" else "")
            for k, key in enumerate((left, right)):
                _save_image(shapes / "images" / f"{key}.png", folder / f"{prefix}-img{k}.png")
            wants = [True, False]
            rng.shuffle(wants)
            for k, want in enumerate(wants):
                sent = nlvr_statement(rng, scenes[left]["objects"], scenes[right]["objects"], want)
                if sent is not None:
                    records.append({"identifier": f"{prefix}-{k}", "img0": f"{prefix}-img0", "img1": f"{prefix}-img1",
                                    "label": int(want), "sent": sentence_case(sent), "uid": f"nlvr2_{split}_{len(records)}"})
        write_json(out / f"{file}.json", records)


def _has_all(h5_path: Path, keys) -> bool:
    import h5py

    if not h5_path.is_file():
        return False
    with h5py.File(h5_path, "r") as f:
        return all(f"{k}/features" in f for k in keys)


def _images_key(images: dict[str, dict[str, Path]], settings: str) -> str:
    """A key of the images' bytes and the encoder's settings: equal images give the same features."""
    h = hashlib.sha256(settings.encode())
    for source in sorted(images):
        for stem in sorted(images[source]):
            h.update(f"{source}/{stem}\0".encode())
            h.update(images[source][stem].read_bytes())
    return h.hexdigest()[:16]
