"""CLIP-ResNet grid features of a folder of images into an h5 file keyed ``"{img_id}/features"`` (VL-Adapter's
``feature_extraction/coco_CLIP.py``; rankmix.data.clip_features). The CLIP-BART data modules read these files and
never run the network while training.

    python scripts/extract_clip_features.py --images /data/coco/images --out /data/features/coco_RN101.h5 --pretrained
    python scripts/extract_clip_features.py --images .cache/prepared/shapes-xxxx/images --out feats.h5 --model tiny --calibrate 128

Interrupted runs resume: images already in the file are skipped.
"""

import argparse
import sys
from pathlib import Path

from rankmix.data.clip_features import calibration_images, extract, grid_encoder, image_files
from rankmix.errors import RankmixError


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=Path, required=True, help="folder of .jpg/.png images (searched recursively)")
    p.add_argument("--out", type=Path, required=True, help="h5 file to write (appended to when it exists)")
    p.add_argument("--model", default="resnet101_clip", help="timm CLIP-ResNet (resnet101_clip, resnet50_clip) or tiny")
    p.add_argument("--pretrained", action="store_true", help="load the OpenAI CLIP weights (<model>.openai, from the hub)")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0, help="init seed of a random (not --pretrained) encoder")
    p.add_argument("--calibrate", type=int, default=0, metavar="N",
                   help="random encoder: set its BatchNorm statistics from the first N images (the tiny scale uses 128)")
    a = p.parse_args(argv)
    try:
        images = image_files(a.images)
        pixels = calibration_images(images, a.image_size, a.calibrate) if a.calibrate else None
        encoder = grid_encoder(a.model, a.pretrained, a.image_size, a.seed, calibrate=pixels)
        n = extract(encoder, images, a.out, a.image_size, a.batch_size)
    except RankmixError as e:
        print(f"rankmix: error: {e}", file=sys.stderr)
        return 1
    print(f"rankmix: {n} new images ({len(images)} in all) -> {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
