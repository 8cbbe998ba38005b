"""DreamBooth data (MoSLoRA Tab. 6): a subject's instance images and prompt for training, and the evaluation prompts.

``instance_dir`` holds the subject's photos (the DreamBooth dataset's ``dataset/<subject>/``, MoSLoRA's own
``subject_driven_generation/cat/``); with ``instance_dir: null`` a generated subject is written under ``cache_dir``:
a few images of one coloured shape in different places (``write_shape_subject``). Training images go through
diffusers' SDXL DreamBooth transforms (resize to ``resolution``, random crop, no flip, scaled to [-1, 1]) and carry
their original size and crop corner, SDXL's extra conditioning. ``crop``: ``per_image`` draws each image's crop once,
when the data is set up (from a generator seeded with ``seed``), as the official script's dataset does in its
constructor; ``per_batch`` draws it anew each time the image is batched (torch's global RNG). Evaluation batches are the prompts
``templates`` × ``subject`` (MoSLoRA's ``infer.py``), each with its index.
"""

from __future__ import annotations

import random
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader

from rankmix.data.fingerprints import code_fingerprint
from rankmix.data.loading import seeded_loader
from rankmix.errors import ConfigError, DataError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
CROPS = ("per_image", "per_batch")


def write_shape_subject(root: Path, n_images: int, size: int, seed: int) -> Path:
    """``n_images`` JPEGs ``00.jpg``, ``01.jpg``, ... (the layout of MoSLoRA's ``subject_driven_generation/cat``) of
    one red circle, the subject, at different places and scales on a plain background; written whole or not at all
    (``rankmix.atomic.atomic_folder``), so a run never reads a half-written subject."""
    from PIL import Image, ImageDraw

    from rankmix.atomic import atomic_folder

    rng = random.Random(seed)
    with atomic_folder(root) as own:
        for i in range(n_images):
            image = Image.new("RGB", (size, size), tuple(rng.randint(180, 255) for _ in range(3)))
            r = rng.randint(size // 6, size // 3)
            x, y = rng.randint(r, size - r), rng.randint(r, size - r)
            ImageDraw.Draw(image).ellipse((x - r, y - r, x + r, y + r), fill=(200, 30, 30))
            image.save(own / f"{i:02d}.jpg", quality=95)
    return root


class SubjectDataModule(pl.LightningDataModule):
    def __init__(self, instance_dir: str | None, instance_prompt: str, subject: str, templates: list[str],
                 resolution: int, batch_size: int, cache_dir: str, seed: int = 0, generate: dict | None = None,
                 num_workers: int = 0, crop: str = "per_image"):
        super().__init__()
        self.instance_dir = Path(instance_dir) if instance_dir else None
        self.instance_prompt, self.subject, self.templates = instance_prompt, subject, list(templates)
        self.resolution, self.batch_size, self.eval_batch_size = resolution, batch_size, 1
        self.cache_dir, self.seed, self.generate, self.num_workers = Path(cache_dir), seed, dict(generate or {}), num_workers
        self.images: list[dict] = []
        if crop not in CROPS:
            raise ConfigError("task.datamodule.crop", crop, f"must be one of {', '.join(CROPS)}")
        self.crop = crop

    def folder(self) -> Path:
        if self.instance_dir is not None:
            return self.instance_dir
        g = self.generate
        return self.cache_dir / "subjects" / f"shape-{g['n_images']}-{g['size']}-{g['seed']}-{code_fingerprint(__name__)}"

    def prompts(self) -> list[str]:
        """The evaluation prompts, in order."""
        return [t.format(self.subject) for t in self.templates]

    def check_paths(self) -> None:
        if self.instance_dir is not None and not self.instance_dir.is_dir():
            raise ConfigError("task.datamodule.instance_dir", str(self.instance_dir),
                              "directory not found; point it at the subject's images (e.g. DreamBooth's dataset/cat)")

    def prepare_data(self) -> None:
        if self.instance_dir is None and not self.folder().is_dir():
            write_shape_subject(self.folder(), int(self.generate["n_images"]), int(self.generate["size"]),
                                int(self.generate["seed"]))
        if not self._files():
            raise DataError(f"{self.folder()}: no images ({', '.join(IMAGE_SUFFIXES)}) of the subject")

    def reference_images(self) -> list[Path]:
        return self._files()

    def _files(self) -> list[Path]:
        return sorted(p for p in self.folder().iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)

    def setup(self, stage: str | None = None) -> None:
        from PIL import Image

        if self.images:
            return
        draw = torch.Generator().manual_seed(int(self.seed))
        for path in self._files():
            try:
                image = Image.open(path).convert("RGB")
            except OSError as e:
                raise DataError(f"{path}: not a readable image ({e})") from None
            item = {"image": image, "path": str(path)}
            if self.crop == "per_image":  # the official dataset: each image resized and its crop drawn once
                resized = self._resized(image)
                item["crop"] = self._draw_crop(resized, draw)
            self.images.append(item)

    def _resized(self, image):
        """The short side to ``resolution`` (bilinear), as diffusers' ``transforms.Resize(resolution)``."""
        from PIL import Image

        scale = self.resolution / min(image.size)
        return image.resize((max(self.resolution, round(image.width * scale)),
                             max(self.resolution, round(image.height * scale))), Image.BILINEAR)

    def _draw_crop(self, image, generator=None) -> tuple[int, int]:
        """A random ``resolution``-square crop's (top, left), as ``RandomCrop.get_params``."""
        top = int(torch.randint(0, image.height - self.resolution + 1, (1,), generator=generator))
        left = int(torch.randint(0, image.width - self.resolution + 1, (1,), generator=generator))
        return top, left

    def collate_train(self, batch: list[dict]) -> dict:
        """diffusers' SDXL DreamBooth transforms: resize the short side, random crop (``crop``), [-1, 1]."""
        pixels, original, crops = [], [], []
        for item in batch:
            image = item["image"]
            original.append((image.height, image.width))
            image = self._resized(image)
            top, left = item["crop"] if "crop" in item else self._draw_crop(image)
            image = image.crop((left, top, left + self.resolution, top + self.resolution))
            crops.append((top, left))
            pixels.append(torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1))
        return {"pixel_values": torch.stack(pixels), "original_size": torch.tensor(original),
                "crop_top_left": torch.tensor(crops), "prompt": [self.instance_prompt] * len(batch)}

    def collate_prompts(self, batch: list[dict]) -> dict:
        return {"prompt": [b["prompt"] for b in batch], "idx": torch.tensor([b["idx"] for b in batch])}

    def train_dataloader(self) -> DataLoader:
        return seeded_loader(self, self.images, True, self.collate_train)

    def val_dataloader(self) -> DataLoader:
        return seeded_loader(self, self.images, False, self.collate_train)

    def test_dataloader(self) -> DataLoader:
        prompts = [{"prompt": p, "idx": i} for i, p in enumerate(self.prompts())]
        return seeded_loader(self, prompts, False, self.collate_prompts)
