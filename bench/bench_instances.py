"""Instance splitting with scipy.ndimage vs. the OpenCV version it replaced: same labels? how fast?

The semantic labels come from the bundled model on synthetic images (seeds outside its training
set). Both versions run interleaved on the same slices; the script first checks the labels are
identical, pixel for pixel, then prints median times and the ratio. Needs opencv-python-headless
for the reference (no longer a dependency: `pip install opencv-python-headless`).

    .venv/bin/python bench/bench_instances.py [--size 512] [--images 6] [--rounds 7]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _cv2_instances import split_slice_cv2  # noqa: E402
from napari_unet_gradcam import load_model, predict  # noqa: E402
from napari_unet_gradcam.instances import _split_slice, classes_for_instances  # noqa: E402
from napari_unet_gradcam.synthetic import generate  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--images", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    import cv2

    net = load_model()
    interior, boundary = classes_for_instances(net.class_names)
    sems = [predict(generate(50_000 + i, (args.size, args.size)).image, net) for i in range(args.images)]
    n_objects = 0
    for sem in sems:
        new, old = _split_slice(sem, interior, boundary), split_slice_cv2(sem, interior, boundary)
        if not np.array_equal(new, old):
            print(f"DIFFERENT labels: {(new != old).sum()} pixels differ")
            return 1
        n_objects += int(new.max())
    impls = {"scipy.ndimage": _split_slice, "OpenCV": split_slice_cv2}
    times = {k: [] for k in impls}
    for _ in range(args.rounds):
        for k, f in impls.items():
            t = time.perf_counter()
            for sem in sems:
                f(sem, interior, boundary)
            times[k].append((time.perf_counter() - t) / len(sems))
    print(
        f"# {args.images} images {args.size}x{args.size} from the bundled model, {n_objects} nuclei: labels identical;"
        f" opencv {cv2.__version__}, median of {args.rounds} rounds"
    )
    ms = {k: 1000 * statistics.median(v) for k, v in times.items()}
    for k, v in ms.items():
        print(f"{k:>14}: {v:7.2f} ms per image")
    print(f"scipy / OpenCV time: {ms['scipy.ndimage'] / ms['OpenCV']:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
