"""Image loading shared by the vision-language data modules: RGB, bicubic resize to a square, normalised.

``ImageStore`` maps image keys to files and loads them when a batch needs them, keeping the most recent
``cache_size`` tensors: COCO's 123k images at 224×224 would need ~74 GB held in memory at once.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch


def load_image(path: Path, size: int, mean: tuple, std: tuple) -> torch.Tensor:
    """(3, size, size) float tensor: (pixel / 255 − mean) / std per channel."""
    from PIL import Image

    img = Image.open(path).convert("RGB").resize((size, size), Image.BICUBIC)
    x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)
    return (x - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]


class ImageStore:
    """``key → path``, loaded on demand with an LRU cache of ``cache_size`` tensors."""

    def __init__(self, size: int, mean: tuple, std: tuple, cache_size: int = 2048):
        self.size, self.mean, self.std, self.cache_size = size, tuple(mean), tuple(std), cache_size
        self.paths: dict[str, Path] = {}
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()

    def add(self, key: str, path: Path) -> None:
        self.paths[key] = path

    def __contains__(self, key: str) -> bool:
        return key in self.paths

    def __getitem__(self, key: str) -> torch.Tensor:
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        x = load_image(self.paths[key], self.size, self.mean, self.std)
        self._cache[key] = x
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return x
