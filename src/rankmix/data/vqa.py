"""LightningDataModule for VQA v2 in the VL-T5 layout (routing functions §4: ViT [CLS] + text encoder).

Reads ``{data_dir}/vqa/karpathy_{train,val,test}.json`` (``img_id, question_id, sent, label``), the 10 human
answers per question from ``v2_mscoco_{train,val}2014_annotations.json`` (for the official accuracy), the answer
vocabulary ``trainval_ans2label.json`` (3,129 answers for VQA v2), and images ``{images_dir}/{img_id}.{jpg,png}``
(COCO's ``train2014/`` and ``val2014/`` sub-folders are searched too). With ``data_dir: null`` it first writes
a made-up copy of these files and images under the cache (``rankmix.data.coco_like``), and reads that.

Training targets are the soft scores of ``label`` over the vocabulary (out-of-vocabulary answers dropped);
evaluation batches also carry each question's 10 answers and its answer and question types.
"""

from __future__ import annotations

import json
from pathlib import Path

import lightning.pytorch as pl
import torch

from rankmix.data import coco_like
from rankmix.data.files import inside, read_records
from rankmix.data.images import ImageStore
from rankmix.data.loading import SeededSplitLoaders, pad_right
from rankmix.data.shapes import SPLITS
from rankmix.errors import ConfigError, DataError

RECORD_FIELDS = ("img_id", "question_id", "sent", "label")
WHERE = ("the VL-T5 bundle (github j-min/VL-T5: datasets/vqa/karpathy_*.json, trainval_ans2label.json) and the "
         "VQA v2 annotations (visualqa.org); COCO 2014 images for task.datamodule.images_dir")


class VQADataModule(SeededSplitLoaders, pl.LightningDataModule):
    def __init__(self, data_dir: str | None, cache_dir: str, images_dir: str | None = None, source: dict | None = None,
                 image_size: int = 224, image_mean: tuple = (0.5, 0.5, 0.5), image_std: tuple = (0.5, 0.5, 0.5),
                 max_length: int = 20, batch_size: int = 32, eval_batch_size: int = 64, num_workers: int = 0,
                 seed: int = 0):
        super().__init__()
        self.data_dir = Path(data_dir) if data_dir else None
        self.cache_dir = Path(cache_dir)
        self.images_dir = Path(images_dir) if images_dir else None
        self.source = dict(source or {})
        self.image_size, self.image_mean, self.image_std = image_size, tuple(image_mean), tuple(image_std)
        self.max_length = max_length
        self.batch_size, self.eval_batch_size, self.num_workers, self.seed = batch_size, eval_batch_size, num_workers, seed
        self.tokenizer = None
        self.examples: dict[str, list[dict]] = {}
        self.ans2label: dict[str, int] = {}

    # -- files ---------------------------------------------------------------------------------
    def root(self) -> Path:
        return self.data_dir if self.data_dir is not None else coco_like.prepared(self.cache_dir, self.source, "data_dir")

    def image_root(self) -> Path:
        if self.images_dir is not None:
            return self.images_dir
        return self.root() / "images" if self.data_dir is not None else coco_like.prepared(self.cache_dir, self.source,
                                                                                            "images_dir")

    def check_paths(self) -> None:
        if self.data_dir is None:
            return
        for path in [self.data_dir / "vqa" / f"karpathy_{s}.json" for s in SPLITS] + [self.ans2label_path()]:
            if not path.is_file():
                raise ConfigError("task.datamodule.data_dir", str(self.data_dir), f"has no {path.relative_to(self.data_dir)}; "
                                  f"use {WHERE}")
        if self.images_dir is None or not self.images_dir.is_dir():
            raise ConfigError("task.datamodule.images_dir", self.images_dir, "must be the folder of the COCO images")

    def ans2label_path(self) -> Path:
        return self.root() / "vqa" / "trainval_ans2label.json"

    def prepare_data(self) -> None:
        if self.data_dir is None:
            coco_like.prepare(self.cache_dir, self.source)

    # -- examples ------------------------------------------------------------------------------
    def set_tokenizer(self, tokenizer) -> None:
        self.tokenizer = tokenizer

    def _answers(self) -> dict[int, dict]:
        out = {}
        for split in ("train", "val"):
            path = self.root() / "vqa" / f"v2_mscoco_{split}2014_annotations.json"
            if path.is_file():
                for i, a in enumerate(json.loads(path.read_text())["annotations"], 1):
                    if "answers" not in a or "question_id" not in a:
                        raise DataError(f"{path}: annotation {i} lacks 'answers' or 'question_id'")
                    out[a["question_id"]] = a
        return out

    def _image_path(self, img_id: str) -> Path:
        root = self.image_root()
        inside(root, str(img_id), "img_id", self.data_dir)
        for cand in (root / f"{img_id}.png", root / f"{img_id}.jpg",
                     root / "train2014" / f"{img_id}.jpg", root / "val2014" / f"{img_id}.jpg"):
            if cand.is_file():
                return cand
        raise DataError(f"{root}: no image file for img_id {img_id!r} ({img_id}.jpg or .png)")

    def setup(self, stage: str | None = None) -> None:
        if self.tokenizer is None:
            raise RuntimeError("set_tokenizer() must be called before setup()")
        if self.examples:
            return
        self.ans2label = json.loads(self.ans2label_path().read_text())
        answers = self._answers()
        images = ImageStore(self.image_size, self.image_mean, self.image_std)
        for split in SPLITS:
            path = self.root() / "vqa" / f"karpathy_{split}.json"
            rows = []
            for i, rec in enumerate(read_records(path), 1):
                missing = [k for k in RECORD_FIELDS if k not in rec]
                if missing:
                    raise DataError(f"{path}: record {i} lacks field {missing[0]!r}; VQA records need "
                                    f"{', '.join(RECORD_FIELDS)}")
                ann = answers.get(rec["question_id"])
                if split != "train" and ann is None:
                    raise DataError(f"{path}: record {i} (question_id {rec['question_id']}) has no answers in the "
                                    "v2_mscoco_*_annotations.json files; the official accuracy needs them")
                if rec["img_id"] not in images:
                    images.add(rec["img_id"], self._image_path(rec["img_id"]))
                target = {self.ans2label[a]: float(v) for a, v in rec["label"].items() if a in self.ans2label}
                ids = self.tokenizer(rec["sent"], truncation=True, max_length=self.max_length)["input_ids"]
                rows.append({"idx": i - 1, "img_id": rec["img_id"], "input_ids": ids, "target": target,
                             "question_id": rec["question_id"],
                             "answers": [a["answer"] for a in ann["answers"]] if ann else [],
                             "answer_type": rec.get("answer_type") or (ann or {}).get("answer_type", ""),
                             "question_type": rec.get("question_type") or (ann or {}).get("question_type", "")})
            self.examples[split] = rows
        self.images = images

    # -- batches -------------------------------------------------------------------------------
    def collate(self, batch: list[dict]) -> dict:
        ids, mask = pad_right([b["input_ids"] for b in batch], self.tokenizer.pad_token_id)
        return {"input_ids": ids, "attention_mask": mask, "pixel_values": torch.stack([self.images[b["img_id"]] for b in batch]),
                "target": self._targets(batch), "idx": torch.tensor([b["idx"] for b in batch]),
                **{k: [b[k] for b in batch] for k in ("question_id", "answers", "answer_type", "question_type")}}

    def _targets(self, batch: list[dict]) -> torch.Tensor:
        """Soft scores over the answer vocabulary (B, |answers|), built per batch from each question's label."""
        target = torch.zeros(len(batch), len(self.ans2label))
        for i, b in enumerate(batch):
            for label, score in b["target"].items():
                target[i, label] = score
        return target
