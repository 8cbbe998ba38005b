"""CLIP-ResNet grid features for the CLIP-BART benchmark (routing functions §5, VL-Adapter's protocol).

VL-Adapter's ``feature_extraction/coco_CLIP.py``: each image is resized to 224×224 (bicubic), normalised with
CLIP's mean and std, and passed through CLIP RN101 up to its last residual stage — the 7×7×2048 grid before the
attention pool, not the pooled vector — stored in an h5 file as ``"{img_id}/features"`` (49 × 2048). At load
time (``--downsample --n_boxes 36``) an adaptive max pool turns the grid into 6×6 = 36 visual tokens.

``grid_encoder``: timm's ``resnet101_clip`` (``pretrained`` loads ``resnet101_clip.openai``, the OpenAI
weights) or, at tiny scale, the same CLIP-ResNet design (bottleneck blocks, average-pool downsampling) with one
block per stage and widths 32/64/128/256, random init from a seed. A random network's BatchNorms hold the
init statistics (mean 0, variance 1), which shrink its features to a small offset shared by all images;
``calibrate`` (given a batch of images) sets them to that batch's statistics instead — the data-dependent init
of random networks — so each layer's activations have unit variance over the images. ``extract`` writes the h5 file (with a
progress bar; images already in the file are skipped, so an interrupted run resumes); ``read_features`` reads one
image's tokens back, max-pooled.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn

from rankmix.data.images import load_image
from rankmix.errors import ConfigError, DataError, first_line

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
TINY_WIDTHS = (32, 64, 128, 256)


def grid_encoder(name: str = "resnet101_clip", pretrained: bool = False, image_size: int = 224,
                 seed: int = 0, calibrate: torch.Tensor | None = None) -> nn.Module:
    """A CLIP-ResNet whose ``forward_features`` gives the (B, C, H/32, W/32) grid; ``name="tiny"`` for the tiny one.
    ``calibrate``: normalised pixels (N, 3, H, W) whose statistics a random encoder's BatchNorms take."""
    import timm
    from timm.models.byobnet import ByoBlockCfg, ByobNet, model_cfgs

    if calibrate is not None and pretrained:
        raise ConfigError("calibrate", "images", "only a random encoder is calibrated; pretrained weights keep "
                          "their BatchNorm statistics")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if name == "tiny":
            cfg = dataclasses.replace(model_cfgs["resnet50_clip"], stem_chs=(8, 8, 16), blocks=tuple(
                ByoBlockCfg(type="bottle", d=1, c=c, s=1 if i == 0 else 2, br=0.25) for i, c in enumerate(TINY_WIDTHS)))
            model = ByobNet(cfg, num_classes=0, img_size=image_size)
        else:
            try:
                model = timm.create_model(f"{name}.openai" if pretrained else name, pretrained=pretrained,
                                          num_classes=0, img_size=image_size)
            except (RuntimeError, OSError, ValueError) as e:
                raise ConfigError("model", name, f"could not be built or downloaded ({first_line(e)}); "
                                  "timm names: resnet50_clip, resnet101_clip (weights: <name>.openai from the hub)") from None
    model.requires_grad_(False)
    if calibrate is not None:
        _calibrate_batchnorm(model, calibrate)
    return model.eval()


def _calibrate_batchnorm(model: nn.Module, pixels: torch.Tensor) -> None:
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average: one pass gives the batch's statistics exactly
    model.train()
    with torch.no_grad():
        model.forward_features(pixels)
    for m in norms:
        m.momentum = 0.1


def calibration_images(images: dict[str, Path], image_size: int, n: int = 128) -> torch.Tensor:
    """The first ``n`` images (by id) as CLIP-normalised pixels, to calibrate a random encoder."""
    return torch.stack([load_image(images[k], image_size, CLIP_MEAN, CLIP_STD) for k in sorted(images)[:n]])


def extract(encoder: nn.Module, images: dict[str, Path], out: Path, image_size: int = 224, batch_size: int = 32) -> int:
    """Write ``"{img_id}/features"`` (H·W × C float32) for every image of ``images`` not yet in ``out``."""
    import h5py
    from tqdm import tqdm

    out.parent.mkdir(parents=True, exist_ok=True)
    if out.is_file():
        with h5py.File(out, "r") as f:
            if all(f"{k}/features" in f for k in images):
                return 0
    with h5py.File(out, "a") as f:
        todo = [k for k in images if f"{k}/features" not in f]
        for start in tqdm(range(0, len(todo), batch_size), desc=f"features → {out.name}", disable=None):
            keys = todo[start:start + batch_size]
            pixels = torch.stack([load_image(images[k], image_size, CLIP_MEAN, CLIP_STD) for k in keys])
            with torch.no_grad():
                grid = encoder.forward_features(pixels)
            for k, g in zip(keys, grid, strict=True):
                f.create_dataset(f"{k}/features", data=g.flatten(1).T.float().numpy())
            f.flush()
    return len(todo)


def read_features(h5, img_id: str, n_boxes: int = 36) -> torch.Tensor:
    """(n_boxes, C): the stored grid of ``img_id`` adaptively max-pooled to √n_boxes × √n_boxes."""
    key = f"{img_id}/features"
    if key not in h5:
        raise DataError(f"{h5.filename}: no {key!r}; run scripts/extract_clip_features.py over that image's folder")
    grid = torch.from_numpy(h5[key][()])  # (H·W, C)
    side, pooled = int(round(grid.shape[0] ** 0.5)), int(round(n_boxes ** 0.5))
    if side * side != grid.shape[0] or pooled * pooled != n_boxes:
        raise DataError(f"{h5.filename}: {key} has {grid.shape[0]} positions (not a square grid), or n_boxes "
                        f"{n_boxes} is not a square")
    fmap = grid.T.reshape(1, -1, side, side)
    return nn.functional.adaptive_max_pool2d(fmap, pooled)[0].flatten(1).T


def image_files(folder: Path, patterns: Iterable[str] = ("*.jpg", "*.png")) -> dict[str, Path]:
    """``{file stem: path}`` of the images under ``folder`` (recursively; COCO's train2014/, val2014/)."""
    found = {p.stem: p for pattern in patterns for p in sorted(Path(folder).rglob(pattern))}
    if not found:
        raise DataError(f"{folder}: no .jpg or .png images found")
    return found
