"""CLIP-ResNet grid features: the extraction script writes VL-Adapter's h5 layout, resumes, and reads back max-pooled."""

import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch

from conftest import OFFLINE_ENV, REPO
from rankmix.data.clip_features import grid_encoder, read_features
from rankmix.data.shapes import generate_shapes
from rankmix.errors import DataError


def test_tiny_encoder_gives_the_7x7_grid_before_the_attention_pool():
    enc = grid_encoder("tiny", image_size=224)
    grid = enc.forward_features(torch.randn(2, 3, 224, 224))
    assert grid.shape == (2, 256, 7, 7)
    assert torch.equal(grid_encoder("tiny").forward_features(torch.ones(1, 3, 224, 224)),
                       grid_encoder("tiny").forward_features(torch.ones(1, 3, 224, 224)))  # same seed, same net


def test_calibration_gives_the_random_encoder_unit_scale_features_and_keeps_it_deterministic():
    pixels = torch.randn(16, 3, 96, 96)
    raw = grid_encoder("tiny", image_size=96).forward_features(pixels)
    calibrated = grid_encoder("tiny", image_size=96, calibrate=pixels)
    out = calibrated.forward_features(pixels)
    assert not calibrated.training
    assert raw.std(0).mean() < 0.1 < 0.5 < out.std(0).mean()  # spread across images: tiny before, ~1 after
    assert torch.equal(out, grid_encoder("tiny", image_size=96, calibrate=pixels).forward_features(pixels))
    from rankmix.errors import ConfigError
    with pytest.raises(ConfigError, match="only a random encoder"):
        grid_encoder("resnet50_clip", pretrained=True, calibrate=pixels)


def test_max_pool_to_36_tokens(tmp_path):
    grid = np.arange(49 * 2, dtype=np.float32).reshape(49, 2)  # position-major, like the extractor writes
    with h5py.File(tmp_path / "f.h5", "w") as f:
        f.create_dataset("img1/features", data=grid)
    with h5py.File(tmp_path / "f.h5", "r") as f:
        tokens = read_features(f, "img1")
        assert tokens.shape == (36, 2)
        # the 6x6 adaptive max pool of a 7x7 map takes 2x2 windows: token 0 is the max of positions 0, 1, 7, 8
        assert tokens[0].tolist() == grid[[0, 1, 7, 8]].max(0).tolist()
        assert tokens[-1].tolist() == grid[-1].tolist()
        with pytest.raises(DataError, match="no 'img2/features'.*extract_clip_features"):
            read_features(f, "img2")


def test_extraction_script_writes_and_resumes(tmp_path):
    root = generate_shapes(tmp_path / "shapes", {"train": 3, "val": 0, "test": 1}, seed=0)
    out = tmp_path / "feats.h5"
    cmd = [sys.executable, str(REPO / "scripts" / "extract_clip_features.py"), "--images", str(root / "images"),
           "--out", str(out), "--model", "tiny", "--batch-size", "2"]
    env = {**__import__("os").environ, **OFFLINE_ENV}
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "4 new images (4 in all)" in r.stdout
    with h5py.File(out, "r") as f:
        assert sorted(f.keys()) == ["SHAPES_test_000004", "SHAPES_train_000001", "SHAPES_train_000002",
                                    "SHAPES_train_000003"]
        assert f["SHAPES_train_000001/features"].shape == (49, 256)
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert "0 new images (4 in all)" in r.stdout
    r = subprocess.run(cmd[:3] + [str(tmp_path / "empty")] + cmd[4:], capture_output=True, text=True, env=env)
    assert r.returncode == 1 and "no .jpg or .png images" in r.stderr
