"""Pixels on which our labels agree with upstream predict.py's, untiled and tiled.

The reference is tests/upstream_reference.py (upstream's documented pipeline, rebuilt). Cases:
the bundled model saved as a plain upstream checkpoint on grey synthetic nuclei, and random
RGB networks (transposed and bilinear) given a trained net's logit spread; odd sizes; scales 1
and 0.5; tiles of 64 and 128 with the default 64-pixel halo. Figures go to docs/images.md.

    PYTHONPATH=src .venv/bin/python bench/upstream_agreement.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.conftest import tiny_unet  # noqa: E402
from tests.test_upstream import balanced, grey_uint8  # noqa: E402
from tests.upstream_reference import upstream_predict  # noqa: E402

from napari_unet_gradcam import load_model, predict  # noqa: E402

SIZES = [(203, 299), (237, 301), (512, 512)]
TILES = [None, 128, 64]


def row(name, net, img, shape, scale):
    ref = upstream_predict(net, img, scale)
    cells = [f"{(predict(img, net, scale=scale, tile_size=t) == ref).mean():.4%}" for t in TILES]
    print(f"| {name} | {shape[1]}x{shape[0]} | {scale} | " + " | ".join(cells) + " |")


def main() -> None:
    print("| network | image (WxH) | scale | untiled | tiles of 128 | tiles of 64 |")
    print("| --- | --- | --- | --- | --- | --- |")
    trained = load_model(device="cpu")
    trained.preprocess = None  # as a plain upstream checkpoint: upstream's /255 rule
    for shape in SIZES:
        for scale in (1.0, 0.5):
            row("bundled (trained), grey", trained, grey_uint8(5, shape), shape, scale)
    rng = np.random.default_rng(1)
    for bilinear in (False, True):
        for shape in SIZES[:2]:
            rgb = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
            rgb[50:150, 60:200] //= 3
            for scale in (1.0, 0.5):
                net = balanced(tiny_unet(n_channels=3, n_classes=3, bilinear=bilinear, width=8, seed=3), rgb, scale)
                kind = "bilinear" if bilinear else "transposed"
                row(f"random width 8, {kind}, RGB", net, rgb, shape, scale)


if __name__ == "__main__":
    main()
