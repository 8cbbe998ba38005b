"""The CLIP-BART multitask data (routing functions §5 on VL-Adapter's protocol): VQAv2, GQA, NLVR2 and COCO
captioning in one encoder-decoder, over pre-extracted CLIP-ResNet grid features.

Files under ``data_dir`` (VL-T5's ``datasets/`` bundle): ``vqa/karpathy_{train,val,test}.json`` with
``vqa/v2_mscoco_{train,val}2014_annotations.json``; ``GQA/{train,valid,testdev}.json``; ``nlvr/{train,valid,test}
.json``; ``COCO/dataset_coco.json``. Features: h5 files keyed ``"{img_id}/features"``
(``scripts/extract_clip_features.py``), one per image source (``features: {coco, gqa, nlvr}``); each image becomes
``n_boxes`` (36) max-pooled tokens, an NLVR2 pair 2 × 36 with image-order ids 0 and 1. With ``data_dir: null``
a made-up copy of the bundle, its images and a small random CLIP-ResNet's features is written under the cache
(``rankmix.data.vl_like``, the rehearsal's writer; ``source``: images per source and split; features extracted at
``feature_image_size``: the tiny scale uses 96 × 96, a 3 × 3 grid, ``n_boxes`` 9), and read as the real files are.

Examples (input text → target text), VL-Adapter's splits and prompts (``prompts``; its code spells GQA's "gpa: ",
``gqa_prompt_typo: true`` keeps that):

- VQA: "vqa: <question>" → an answer drawn from the soft label with probability ∝ score (a new draw each
  epoch, deterministic from seed, epoch and example); evaluated by generation and the official VQA accuracy.
  Train karpathy_train, val karpathy_val, test karpathy_test.
- GQA: "gqa: <question>" → its answer; exact match. Train train + valid, val and test testdev.
- NLVR2: "nlvr: <statement>" → "true" / "false"; scored by the first-step logits. Train train, val valid, test test.
- COCO: "caption: " → each of the image's captions (training); beam search and CIDEr. Karpathy train + restval,
  val, test.

Training batches hold one task each; per-task batch sizes are ``batch_size`` × ``task_batch_ratio`` (VL-Adapter:
VQA 1, GQA 100/60, NLVR2 20/60, captions 50/60), and each epoch all tasks' batches are shuffled together
(``MultitaskBatchSampler``: seeded by seed + epoch; sharded across processes).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Dataset

from rankmix.data import vl_like
from rankmix.data.files import read_records
from rankmix.data.loading import pad_right
from rankmix.errors import ConfigError, DataError

TASKS = ("vqa", "gqa", "nlvr", "caption")
PROMPTS = {"vqa": "vqa: ", "gqa": "gqa: ", "nlvr": "nlvr: ", "caption": "caption: "}
RATIOS = {"vqa": 1.0, "gqa": 100 / 60, "nlvr": 20 / 60, "caption": 50 / 60}
SPLIT_FILES = {  # task → stage → the VL-T5 files it reads
    "vqa": {"train": ["vqa/karpathy_train.json"], "val": ["vqa/karpathy_val.json"], "test": ["vqa/karpathy_test.json"]},
    "gqa": {"train": ["GQA/train.json", "GQA/valid.json"], "val": ["GQA/testdev.json"], "test": ["GQA/testdev.json"]},
    "nlvr": {"train": ["nlvr/train.json"], "val": ["nlvr/valid.json"], "test": ["nlvr/test.json"]},
}
CAPTION_SPLITS = {"train": ("train", "restval"), "val": ("val",), "test": ("test",)}
FIELDS = {"vqa": ("img_id", "question_id", "sent", "label"), "gqa": ("img_id", "question_id", "sent", "label"),
          "nlvr": ("img0", "img1", "sent", "label")}


class MultitaskBatchSampler:
    """Batches of one task each: every task's examples shuffled (seed + epoch) and cut into its batch size, then
    all tasks' batches shuffled together; process ``rank`` of ``world`` takes every world-th batch (the list is
    padded by repetition so every process gets as many). Yields lists of ``(task, index, epoch)``."""

    def __init__(self, sizes: dict[str, int], batch_sizes: dict[str, int], shuffle: bool, seed: int = 0,
                 world: int = 1, rank: int = 0):
        self.sizes, self.batch_sizes, self.shuffle, self.seed = sizes, batch_sizes, shuffle, seed
        self.world, self.rank, self.epoch = world, rank, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def batches(self) -> list[tuple[str, list[int]]]:
        gen = torch.Generator().manual_seed(self.seed + self.epoch)
        out = []
        for task, n in self.sizes.items():
            order = torch.randperm(n, generator=gen).tolist() if self.shuffle else list(range(n))
            bs = self.batch_sizes[task]
            out += [(task, order[i:i + bs]) for i in range(0, n, bs)]
        if self.shuffle:
            out = [out[i] for i in torch.randperm(len(out), generator=gen).tolist()]
        if self.world > 1 and out:
            out += out[: (-len(out)) % self.world]
            out = out[self.rank::self.world]
        return out

    def __iter__(self):
        for task, idx in self.batches():
            yield [(task, i, self.epoch) for i in idx]

    def __len__(self) -> int:
        n = sum(-(-n // self.batch_sizes[t]) for t, n in self.sizes.items())
        return -(-n // self.world)


class TaskExamples(Dataset):
    def __init__(self, dm: VLMultitaskDataModule, stage: str):
        self.dm, self.stage = dm, stage

    def __len__(self) -> int:
        return sum(len(v) for v in self.dm.examples[self.stage].values())

    def __getitem__(self, key: tuple[str, int, int]) -> dict:
        task, i, epoch = key
        ex = {**self.dm.examples[self.stage][task][i], "_task": task, "_idx": i}
        if task == "vqa" and self.stage == "train":  # an answer drawn ∝ its soft score, new each epoch
            answers, scores = zip(*sorted(ex["label"].items()), strict=True)
            rng = random.Random(f"{self.dm.seed}/{epoch}/{i}")
            ex["target"] = rng.choices(answers, weights=scores)[0] if sum(scores) > 0 else ""
        return ex


class VLMultitaskDataModule(pl.LightningDataModule):
    def __init__(self, data_dir: str | None, cache_dir: str, features: dict | None = None, source: dict | None = None,
                 tasks: tuple = TASKS, prompts: dict | None = None, gqa_prompt_typo: bool = False,
                 task_batch_ratio: dict | None = None, n_boxes: int = 36, feature_image_size: int = 224,
                 max_text_length: int = 20,
                 max_caption_length: int = 40, batch_size: int = 500, eval_batch_size: int = 500,
                 num_workers: int = 0, seed: int = 0):
        super().__init__()
        self.data_dir = Path(data_dir) if data_dir else None
        self.cache_dir = Path(cache_dir)
        self.features = {k: Path(v) for k, v in (features or {}).items()}
        self.source = dict(source or {})
        bad = [t for t in tasks if t not in TASKS]
        if bad:
            raise ConfigError("task.datamodule.tasks", bad[0], f"unknown task; use some of {', '.join(TASKS)}")
        self.tasks = tuple(tasks)
        self.prompts = {**PROMPTS, **(prompts or {}), **({"gqa": "gpa: "} if gqa_prompt_typo else {})}
        self.ratios = {**RATIOS, **(task_batch_ratio or {})}
        self.n_boxes, self.max_text_length, self.max_caption_length = n_boxes, max_text_length, max_caption_length
        self.feature_image_size = feature_image_size  # the tiny set's own extraction
        self.batch_size, self.eval_batch_size, self.num_workers, self.seed = batch_size, eval_batch_size, num_workers, seed
        self.tokenizer = None
        self.examples: dict[str, dict[str, list[dict]]] = {}
        self._h5: dict[str, object] = {}

    # -- files ---------------------------------------------------------------------------------
    def root(self) -> Path:
        if self.data_dir is not None:
            return self.data_dir
        return vl_like.prepared(self.cache_dir, self.source, self.feature_image_size) / vl_like.FOLDERS["data_dir"]

    def feature_file(self, source: str) -> Path:
        """The h5 file of an image source (coco, gqa, nlvr)."""
        if self.data_dir is None:
            return vl_like.feature_files(vl_like.prepared(self.cache_dir, self.source, self.feature_image_size), "tiny",
                                         self.feature_image_size)[source]
        if source not in self.features:
            raise ConfigError(f"task.datamodule.features.{source}", None, "name the h5 file of that source's "
                              "CLIP features (scripts/extract_clip_features.py)")
        return self.features[source]

    def check_paths(self) -> None:
        """Every file the tasks read is there (the made-up copy of ``scale=tiny``: once ``prepare_data`` wrote it)."""
        if self.data_dir is None and not (self.root().parents[1] / vl_like.STAMP).is_file():
            return
        needed = [f for t in self.tasks if t != "caption" for s in SPLIT_FILES[t].values() for f in s]
        needed += ["COCO/dataset_coco.json"] if "caption" in self.tasks else []
        for rel in needed:
            if not (self.root() / rel).is_file():
                raise ConfigError("task.datamodule.data_dir", str(self.root()), f"has no {rel}; use VL-T5's "
                                  "datasets/ bundle (github j-min/VL-T5) or files of the same layout")
        for source in dict.fromkeys(_source(t) for t in self.tasks):
            if not self.feature_file(source).is_file():
                raise ConfigError(f"task.datamodule.features.{source}", str(self.feature_file(source)),
                                  "not found; write it with scripts/extract_clip_features.py")

    def prepare_data(self) -> None:
        if self.data_dir is not None:
            return
        for h5 in self._h5.values():  # Lightning prepares again before testing: let go of the open files
            h5.close()
        self._h5.clear()
        vl_like.prepare(self.cache_dir, self.source, self.feature_image_size)
        self.check_paths()

    # -- examples ------------------------------------------------------------------------------
    def set_tokenizer(self, tokenizer) -> None:
        self.tokenizer = tokenizer

    def texts(self) -> list[str]:
        """The distinct input and target texts of the training examples (the tiny scale's vocabulary and warm start)."""
        self.setup()
        out = []
        for task, rows in self.examples["train"].items():
            for r in rows:
                answers = r["label"] if isinstance(r.get("label"), dict) else {}  # VQA/GQA answer vocabularies
                out += [self.prompts[task] + r.get("sent", ""), r.get("target", ""), *answers]
        return sorted(set(out) | {"true", "false"})

    def _records(self, rel: str, task: str) -> list[dict]:
        path = self.root() / rel
        rows = []
        for i, rec in enumerate(read_records(path), 1):
            missing = [k for k in FIELDS[task] if k not in rec]
            if missing:
                raise DataError(f"{path}: record {i} lacks field {missing[0]!r}; {task} records need "
                                f"{', '.join(FIELDS[task])}")
            rows.append(rec)
        return rows

    def _vqa_answers(self) -> dict:
        out = {}
        for split in ("train", "val"):
            path = self.root() / "vqa" / f"v2_mscoco_{split}2014_annotations.json"
            if path.is_file():
                out.update({a["question_id"]: a for a in json.loads(path.read_text())["annotations"]})
        return out

    def _examples(self, task: str, stage: str) -> list[dict]:
        if task == "caption":
            path = self.root() / "COCO" / "dataset_coco.json"
            images = [im for im in json.loads(path.read_text())["images"] if im["split"] in CAPTION_SPLITS[stage]]
            key = lambda im: Path(im["filename"]).stem  # noqa: E731  (VL-T5 keys features by the file stem)
            if stage == "train":
                return [{"images": [key(im)], "target": s["raw"]} for im in images for s in im["sentences"]]
            return [{"images": [key(im)], "image_id": im.get("cocoid"), "references": [s["raw"] for s in im["sentences"]]}
                    for im in images]
        rows = [r for rel in SPLIT_FILES[task][stage] for r in self._records(rel, task)]
        if task == "nlvr":
            return [{"images": [r["img0"], r["img1"]], "sent": r["sent"], "label": int(r["label"]),
                     "target": "true" if int(r["label"]) else "false", "uid": r.get("uid", r.get("identifier"))}
                    for r in rows]
        out = [{"images": [r["img_id"]], "sent": r["sent"], "label": r["label"], "question_id": r["question_id"]}
               for r in rows]
        if task == "gqa":
            for r in out:
                r["target"] = max(r["label"], key=r["label"].get) if r["label"] else ""
        elif stage != "train":  # VQA evaluation needs the 10 annotator answers
            answers = self._vqa_answers()
            for r in out:
                ann = answers.get(r["question_id"])
                if ann is None:
                    raise DataError(f"{self.root() / 'vqa'}: question {r['question_id']} has no answers in the "
                                    "v2_mscoco_*_annotations.json files; the official accuracy needs them")
                r.update(answers=[a["answer"] for a in ann["answers"]], answer_type=ann.get("answer_type", ""),
                         question_type=ann.get("question_type", ""))
        return out

    def setup(self, stage: str | None = None) -> None:
        if self.examples:
            return
        self.examples = {s: {t: self._examples(t, s) for t in self.tasks} for s in ("train", "val", "test")}

    # -- batches -------------------------------------------------------------------------------
    def visual(self, images: list[str], task: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(n_images · n_boxes, C) features and their image-order ids."""
        import h5py

        from rankmix.data.clip_features import read_features

        path = self.feature_file(_source(task))
        if path not in self._h5:
            self._h5[path] = h5py.File(path, "r")
        feats = [read_features(self._h5[path], img, self.n_boxes) for img in images]
        order = torch.cat([torch.full((f.shape[0],), i, dtype=torch.long) for i, f in enumerate(feats)])
        return torch.cat(feats), order

    def collate(self, batch: list[dict]) -> dict:
        """One task's batch: prompt + text ids, visual tokens and their image order, target ids (-100 padding)
        and what evaluation needs."""
        tok, task = self.tokenizer, batch[0]["_task"]
        inputs = tok([self.prompts[task] + b.get("sent", "") for b in batch], padding=True, truncation=True,
                     max_length=self.max_text_length, return_tensors="pt")
        vis = [self.visual(b["images"], task) for b in batch]
        out = {"task": task, "input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"],
               "visual": torch.stack([v for v, _ in vis]), "visual_order": torch.stack([o for _, o in vis]),
               "idx": [f"{task}/{b['_idx']:08d}" for b in batch]}  # unique across tasks
        if "target" in batch[0]:
            limit = self.max_caption_length if task == "caption" else self.max_text_length
            out["labels"] = self.encode_targets([b["target"] for b in batch], limit)
        for k in ("label", "answers", "answer_type", "question_type", "question_id", "references", "image_id", "uid"):
            if k in batch[0]:
                out[k] = [b[k] for b in batch]
        return out

    def encode_targets(self, texts: list[str], limit: int) -> torch.Tensor:
        """Target ids ending in end-of-text (added when the tokenizer does not), padded with -100."""
        eos = self.tokenizer.eos_token_id
        rows = []
        for text in texts:
            ids = self.tokenizer(text, add_special_tokens=True)["input_ids"]
            rows.append(ids[:limit] if ids and ids[-1] == eos and len(ids) <= limit else [*ids[:limit - 1], eos])
        return pad_right(rows, -100)[0]

    def _loader(self, stage: str) -> DataLoader:
        if self.tokenizer is None:
            raise RuntimeError("set_tokenizer() must be called before the loaders are built")
        train = stage == "train"
        trainer = self.trainer
        world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        sizes = {t: len(self.examples[stage][t]) for t in self.tasks}
        base = self.batch_size if train else self.eval_batch_size
        batch_sizes = {t: max(1, int(base * self.ratios[t])) if train else base for t in self.tasks}
        sampler = MultitaskBatchSampler(sizes, batch_sizes, shuffle=train, seed=self.seed, world=world, rank=rank)
        # its own generator: making an iterator then draws no global random number, which would shift the dropout
        # of the epoch after a resume (EpochReseed seeds the global RNGs at each epoch start)
        return DataLoader(TaskExamples(self, stage), batch_sampler=sampler, num_workers=self.num_workers,
                          collate_fn=self.collate, generator=torch.Generator().manual_seed(self.seed))

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")


def _source(task: str) -> str:
    """The image source whose feature file a task reads: VQA and COCO share COCO's images."""
    return "coco" if task in ("vqa", "caption") else task
