"""Image loading shared by the vision-language data modules: RGB, bicubic resize to a square, normalised."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def load_image(path: Path, size: int, mean: tuple, std: tuple) -> torch.Tensor:
    """(3, size, size) float tensor: (pixel / 255 − mean) / std per channel."""
    from PIL import Image

    img = Image.open(path).convert("RGB").resize((size, size), Image.BICUBIC)
    x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)
    return (x - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
