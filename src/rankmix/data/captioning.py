"""LightningDataModule for COCO captioning on the Karpathy split (routing functions §4: ViT [CLS] + GPT-2).

Reads ``{data_dir}/COCO/dataset_coco.json`` (Karpathy's file: ``images: [{filepath, filename, cocoid, split,
sentences: [{raw, tokens}]}]``, split one of train / restval / val / test) and the images
``{images_dir}/{filepath}/{filename}``. Training uses every sentence of the ``train_splits`` images (train and
restval: 113,287 images); evaluation one example per val / test image with all its sentences as references.
With ``data_dir: null`` it first writes a made-up copy of the file and images under the cache
(``rankmix.data.coco_like``), and reads that.

A training example is the caption's tokens followed by the tokenizer's end-of-text token, cut to ``max_length``
tokens (§4: maximum length 50).
"""

from __future__ import annotations

import json
from pathlib import Path

import lightning.pytorch as pl
import torch

from rankmix.data import coco_like
from rankmix.data.files import inside
from rankmix.data.images import ImageStore
from rankmix.data.loading import SeededSplitLoaders, pad_right
from rankmix.errors import ConfigError, DataError

WHERE = ("Karpathy's dataset_coco.json (cs.stanford.edu/people/karpathy/deepimagesent/caption_datasets.zip) under "
         "task.datamodule.data_dir/COCO/, and the COCO 2014 images (train2014/, val2014/) under "
         "task.datamodule.images_dir")
SPLITS = ("train", "val", "test")


class CaptionDataModule(SeededSplitLoaders, pl.LightningDataModule):
    def __init__(self, data_dir: str | None, cache_dir: str, images_dir: str | None = None, source: dict | None = None,
                 image_size: int = 224, image_mean: tuple = (0.5, 0.5, 0.5), image_std: tuple = (0.5, 0.5, 0.5),
                 max_length: int = 50, train_splits: tuple = ("train", "restval"), batch_size: int = 40,
                 eval_batch_size: int = 64, num_workers: int = 0, seed: int = 0):
        super().__init__()
        self.data_dir = Path(data_dir) if data_dir else None
        self.cache_dir = Path(cache_dir)
        self.images_dir = Path(images_dir) if images_dir else None
        self.source = dict(source or {})
        self.image_size, self.image_mean, self.image_std = image_size, tuple(image_mean), tuple(image_std)
        self.max_length, self.train_splits = max_length, tuple(train_splits)
        self.batch_size, self.eval_batch_size, self.num_workers, self.seed = batch_size, eval_batch_size, num_workers, seed
        self.tokenizer = None
        self.examples: dict[str, list[dict]] = {}

    # -- files ---------------------------------------------------------------------------------
    def root(self) -> Path:
        return self.data_dir if self.data_dir is not None else coco_like.prepared(self.cache_dir, self.source, "data_dir")

    def annotations_path(self) -> Path:
        return self.root() / "COCO" / "dataset_coco.json"

    def image_root(self) -> Path:
        if self.images_dir is not None:
            return self.images_dir
        return self.root() / "images" if self.data_dir is not None else coco_like.prepared(self.cache_dir, self.source,
                                                                                            "images_dir")

    def check_paths(self) -> None:
        if self.data_dir is None:
            return
        if not self.annotations_path().is_file():
            raise ConfigError("task.datamodule.data_dir", str(self.data_dir), f"has no COCO/dataset_coco.json; use {WHERE}")
        if self.images_dir is None or not self.images_dir.is_dir():
            raise ConfigError("task.datamodule.images_dir", self.images_dir, "must be the folder of the COCO images")

    def prepare_data(self) -> None:
        if self.data_dir is None:
            coco_like.prepare(self.cache_dir, self.source)

    def images(self) -> list[dict]:
        """The Karpathy file's image records, each checked for the fields the loader reads."""
        path = self.annotations_path()
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: not valid JSON (line {e.lineno}): {e.msg}") from None
        if not isinstance(data, dict) or not isinstance(data.get("images"), list):
            raise DataError(f"{path}: expected an object with an 'images' list (Karpathy's dataset_coco.json)")
        for i, img in enumerate(data["images"], 1):
            missing = [k for k in ("filename", "split", "sentences") if k not in img]
            if missing:
                raise DataError(f"{path}: image record {i} lacks field {missing[0]!r}; records need filename, "
                                "split and sentences")
            if not img["sentences"] or not all(isinstance(s, dict) and "raw" in s for s in img["sentences"]):
                raise DataError(f"{path}: image record {i} ({img['filename']}) has no sentences, or one without 'raw'")
        return data["images"]

    def caption_texts(self) -> list[str]:
        """Every training caption (the tiny scale builds its word-level vocabulary from them)."""
        return [s["raw"] for img in self.images() if img["split"] in self.train_splits for s in img["sentences"]]

    # -- examples ------------------------------------------------------------------------------
    def set_tokenizer(self, tokenizer) -> None:
        self.tokenizer = tokenizer

    def encode(self, caption: str) -> list[int]:
        ids = self.tokenizer(caption.strip(), add_special_tokens=False)["input_ids"][: self.max_length - 1]
        return ids + [self.tokenizer.eos_token_id]

    def setup(self, stage: str | None = None) -> None:
        if self.tokenizer is None:
            raise RuntimeError("set_tokenizer() must be called before setup()")
        if self.examples:
            return
        by_split: dict[str, list[dict]] = {s: [] for s in SPLITS}
        pixels = ImageStore(self.image_size, self.image_mean, self.image_std)
        for img in self.images():
            split = "train" if img["split"] in self.train_splits else img["split"]
            if split not in by_split:
                continue
            key = str(img.get("cocoid", img["filename"]))
            path = inside(self.image_root(), str(Path(img.get("filepath", "")) / img["filename"]), "image file",
                          self.data_dir)
            if not path.is_file():
                raise DataError(f"{self.annotations_path()}: image {img['filename']!r} not found at {path}")
            pixels.add(key, path)
            refs = [s["raw"] for s in img["sentences"]]
            if split == "train":
                by_split[split] += [{"image": key, "input_ids": self.encode(r)} for r in refs]
            else:
                by_split[split].append({"image": key, "image_id": img.get("cocoid", img["filename"]), "references": refs})
        for rows in by_split.values():
            for i, row in enumerate(rows):
                row["idx"] = i
        self.examples, self.pixels = by_split, pixels

    # -- batches -------------------------------------------------------------------------------
    def collate(self, batch: list[dict]) -> dict:
        out = {"pixel_values": torch.stack([self.pixels[b["image"]] for b in batch]),
               "idx": torch.tensor([b["idx"] for b in batch])}
        if "input_ids" in batch[0]:
            ids, mask = pad_right([b["input_ids"] for b in batch], self.tokenizer.pad_token_id)
            out.update(input_ids=ids, attention_mask=mask)
        else:
            out.update(references=[b["references"] for b in batch], image_id=[b["image_id"] for b in batch])
        return out
