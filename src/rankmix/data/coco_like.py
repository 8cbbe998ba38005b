"""Made-up COCO 2014 images with their VQA v2 and Karpathy-caption files, in the real layouts: what the VQA and COCO
captioning tasks read at every scale. ``scale=tiny`` writes it into the cache (``prepared``) when
``task.datamodule.data_dir`` is null; ``make rehearse`` writes it at 224 × 224 for the paper-scale rows
(``rankmix.rehearsal.data``). Both are read by the same data modules (``rankmix.data.vqa``, ``rankmix.data.captioning``)
as the downloaded files.

Files under ``root`` (``write_coco_like``):

- ``coco/images/{train2014,val2014}/COCO_{train,val}2014_%012d.jpg``: the generated shapes scenes
  (``rankmix.data.shapes``) as JPEGs, every fourth at 4:3 (640 × 480 when ``size`` is 224), under random COCO ids;
  Karpathy's train images come from train2014, its restval, val and test from val2014.
- ``VL-T5/datasets/vqa/`` (github j-min/VL-T5): ``karpathy_{train,val,test}.json`` (``img_id, question_id, sent,
  label, answer_type, question_type, is_topk_optimal``; train holds the train and restval images' questions),
  ``trainval_ans2label.json``, ``trainval_label2ans.json`` and VQA v2's ``v2_mscoco_{train,val}2014_annotations
  .json`` (split by COCO folder, question ids as image id × 1000 + k).
- ``VL-T5/datasets/COCO/dataset_coco.json``: Karpathy's file (``images: [{filepath, sentids, filename, imgid, split,
  sentences: [{tokens, raw, imgid, sentid}], cocoid}]``), five captions per image as COCO has.

The scenes, questions and first three captions are the shapes set's (``generate_shapes`` with the same counts, size,
seed and noise); questions are capitalised as people write them.
"""

from __future__ import annotations

import json
import random
import re
import shutil
import tempfile
from collections import Counter
from pathlib import Path

from rankmix.atomic import one_writer
from rankmix.config import digest
from rankmix.data.fingerprints import code_fingerprint
from rankmix.data.shapes import captions, generate_shapes
from rankmix.errors import ConfigError

SPLITS = ("train", "restval", "val", "test")   # Karpathy's
COCO_MAX_ID = 581929   # the largest COCO 2014 image id
STAMP = "done.json"
WRITERS = ("rankmix.data.coco_like", "rankmix.data.shapes")   # the code a prepared copy is keyed by


FOLDERS = {"data_dir": "VL-T5/datasets", "images_dir": "coco/images"}   # under the root: what the tasks read


def write_coco_like(root: Path, n_images: dict[str, int], size: int, seed: int, noise: float = 0.2) -> None:
    """Write the files above under ``root`` (``n_images``: images per Karpathy split, every one of ``SPLITS``)."""
    unknown = sorted(set(n_images) ^ set(SPLITS))
    if unknown:
        raise ValueError(f"n_images needs exactly the splits {', '.join(SPLITS)}; {unknown[0]!r} is not one or missing")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root, prefix=".scratch-") as tmp:
        shapes, images = _coco_images(Path(tmp), n_images, root / FOLDERS["images_dir"], size, seed, noise)
        _vqa_files(shapes, images, root / FOLDERS["data_dir"] / "vqa")
        _karpathy_file(images, root / FOLDERS["data_dir"] / "COCO")


def prepared(cache_dir: Path, source: dict, folder: str) -> Path:
    """``folder`` (a key of ``FOLDERS``) of the copy for ``source`` (``n_train, n_restval, n_val, n_test, size, seed,
    noise``) in ``cache_dir``, keyed by ``source`` and the code that writes it (``prepare`` writes it)."""
    key = digest({**dict(source), "_code": code_fingerprint(*WRITERS)}, 10)
    return Path(cache_dir) / "prepared" / f"coco-{key}" / FOLDERS[folder]


def prepare(cache_dir: Path, source: dict) -> None:
    """Write the copy for ``source`` unless it is there; runs side by side wait for the first to write it."""
    missing = [k for k in (*(f"n_{s}" for s in SPLITS), "size", "seed", "noise") if k not in source]
    if missing:
        raise ConfigError(f"task.datamodule.source.{missing[0]}", None, "the made-up COCO copy needs n_train, "
                          "n_restval, n_val, n_test, size, seed and noise (conf/scaled/task/tiny/vqa.yaml)")
    root = prepared(cache_dir, source, "data_dir").parents[1]
    with one_writer(root):
        if not (root / STAMP).is_file():
            shutil.rmtree(root, ignore_errors=True)   # what a killed writer left: the stamp is written last
            write_coco_like(root, {s: int(source[f"n_{s}"]) for s in SPLITS}, size=int(source["size"]),
                            seed=int(source["seed"]), noise=float(source["noise"]))
            (root / STAMP).write_text(json.dumps(dict(source)))


def write_json(path: Path, obj) -> None:
    """``obj`` as UTF-8 JSON at ``path``, making its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, ensure_ascii=False))


def sentence_case(text: str) -> str:
    """``text`` with its first letter capitalised, as the datasets' questions and statements are."""
    return text[:1].upper() + text[1:]


def _coco_images(tmp: Path, counts: dict, images_dir: Path, size: int, seed: int, noise: float
                 ) -> tuple[Path, list[dict]]:
    """The generated scenes as COCO 2014 JPEGs under ``images_dir``; returns the shapes folder and one record per image."""
    from PIL import Image

    shapes = generate_shapes(tmp / "shapes", {"train": counts["train"] + counts["restval"], "val": counts["val"],
                                              "test": counts["test"]}, size=size, seed=seed, noise=noise)
    scenes = json.loads((shapes / "scenes.json").read_text())
    ids = random.Random(seed).sample(range(1, COCO_MAX_ID + 1), len(scenes))
    wide = (size * 20 // 7, size * 15 // 7)   # 4:3, COCO's most common shape (640 x 480 at 224)
    images = []
    for i, ((key, scene), cocoid) in enumerate(zip(scenes.items(), ids, strict=True)):
        split = "restval" if scene["split"] == "train" and i >= counts["train"] else scene["split"]
        source = "train2014" if split == "train" else "val2014"
        im = {"key": key, "split": split, "source": source, "cocoid": cocoid, "name": f"COCO_{source}_{cocoid:012d}",
              "objects": [{**o, "cell": tuple(o["cell"])} for o in scene["objects"]]}
        out = images_dir / source / f"{im['name']}.jpg"
        out.parent.mkdir(parents=True, exist_ok=True)
        img = Image.open(shapes / "images" / f"{key}.png").convert("RGB")
        (img.resize(wide, Image.BICUBIC) if i % 4 == 3 else img).save(out, quality=90)
        images.append(im)
    return shapes, images


def _vqa_files(shapes: Path, images: list[dict], out: Path) -> None:
    """VL-T5's ``vqa/`` files over ``images``: question ids as VQA v2's (image id × 1000 + k), annotations split
    by COCO folder (VL-T5's Karpathy train holds train2014 and restval images)."""
    by_key = {im["key"]: im for im in images}
    asked, new_qid, image_of = Counter(), {}, {}
    for split in ("train", "val", "test"):
        records = json.loads((shapes / "vqa" / f"karpathy_{split}.json").read_text())
        for r in records:
            im = by_key[r["img_id"]]
            qid = im["cocoid"] * 1000 + asked[im["key"]]
            asked[im["key"]] += 1
            new_qid[r["question_id"]], image_of[qid] = qid, im
            r.update(img_id=im["name"], question_id=qid, sent=sentence_case(r["sent"]))
        write_json(out / f"karpathy_{split}.json", records)
    annotations = {"train2014": [], "val2014": []}
    for split in ("train", "val"):
        for a in json.loads((shapes / "vqa" / f"v2_mscoco_{split}2014_annotations.json").read_text())["annotations"]:
            a["question_id"] = new_qid[a["question_id"]]
            im = image_of[a["question_id"]]
            a["image_id"] = im["cocoid"]
            annotations[im["source"]].append(a)
    for source, anns in annotations.items():
        write_json(out / f"v2_mscoco_{source}_annotations.json",
              {"info": {"description": "VQA v2 annotations (made-up content)", "version": "2.0", "year": 2017},
               "license": {"name": "made-up content"}, "data_subtype": source, "annotations": anns,
               "data_type": "mscoco"})
    ans2label = json.loads((shapes / "vqa" / "trainval_ans2label.json").read_text())
    write_json(out / "trainval_ans2label.json", ans2label)
    write_json(out / "trainval_label2ans.json", sorted(ans2label, key=ans2label.get))


def _more_captions(objects: list[dict]) -> list[str]:
    """Two captions beyond the shapes set's three: Karpathy's file has five per image."""
    names = " and ".join(f"a {o['colour']} {o['shape']}" for o in sorted(objects, key=lambda o: o["cell"]))
    return [f"A dark picture showing {names}.", f"{names} on a black background"]


def _karpathy_file(images: list[dict], out: Path) -> None:
    """Karpathy's ``dataset_coco.json``: images with filepath, sentids, filename, imgid, split, sentences
    (tokens, raw, imgid, sentid) and cocoid."""
    entries, sentid = [], 0
    for imgid, im in enumerate(images):
        raws = captions(im["objects"]) + _more_captions(im["objects"])
        sentences = [{"tokens": re.findall(r"[a-z0-9]+", raw.lower()), "raw": raw, "imgid": imgid, "sentid": sentid + k}
                     for k, raw in enumerate(raws)]
        sentid += len(sentences)
        entries.append({"filepath": im["source"], "sentids": [s["sentid"] for s in sentences],
                        "filename": f"{im['name']}.jpg", "imgid": imgid, "split": im["split"], "sentences": sentences,
                        "cocoid": im["cocoid"]})
    write_json(out / "dataset_coco.json", {"images": entries, "dataset": "coco"})
