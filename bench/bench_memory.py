"""Peak memory of tiled runs on 2048^2, 4096^2 and 8192^2 images: bounded by the tile, not the image.

Each size runs in its own subprocess and reports its peak RSS. The inputs and outputs (the image,
its float32 copy, labels, probabilities and every map) must exist whatever the method, so the
table separates them from the *working* memory, which is what tiling bounds.

    .venv/bin/python bench/bench_memory.py [--sizes 2048 4096 8192] [--tile 1024]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = r"""
import json, resource, sys, time
import numpy as np
from napari_unet_gradcam import explain, load_model
from napari_unet_gradcam.synthetic import nuclei_2d
size, tile, layers = int(sys.argv[1]), int(sys.argv[2]), tuple(sys.argv[3].split(","))
net = load_model(device="cpu")
img = np.tile(nuclei_2d(7, (512, 512)), (size // 512, size // 512))
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
t = time.perf_counter()
res = explain(img, net, layers=layers, tile_size=tile if tile > 0 else 10**9)
sec = time.perf_counter() - t
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
io = img.nbytes + img.size * 4 + res.labels.nbytes + res.probabilities.nbytes + sum(m.nbytes for m in res.cams.values())
print(json.dumps({"size": size, "tile": res.metadata["tile_size"], "seconds": sec, "peak": peak, "base": base,
                  "io": io, "maps": len(res.cams)}))
"""


def run(size: int, tile: int, layers: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(size), str(tile), layers], capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--sizes", type=int, nargs="+", default=[2048, 4096, 8192])
    p.add_argument("--tile", type=int, default=1024)
    p.add_argument("--layers", default="up1,up2,up3,up4")
    a = p.parse_args()
    gib = 1 << 30
    print(f"# bundled model, explain() all classes x layers {a.layers}, tile {a.tile} (halo 64), CPU float32")
    print("| image | tile | maps | time s | peak RSS GiB | inputs+outputs GiB | working GiB (peak - base - in/out) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    rows = [run(s, a.tile, a.layers) for s in a.sizes]
    rows.append(run(1024, 0, a.layers))  # untiled reference: what tiling saves
    for r in rows:
        work = (r["peak"] - r["base"] - r["io"]) / gib
        tile = r["tile"] or "none"
        print(
            f"| {r['size']}^2 | {tile} | {r['maps']} | {r['seconds']:.1f} | {r['peak'] / gib:.2f} | "
            f"{r['io'] / gib:.2f} | {work:.2f} |"
        )
    ref = rows[-1]
    per_px = (ref["peak"] - ref["base"] - ref["io"]) / (ref["size"] ** 2) / 16
    print(f"# untiled working memory: {per_px:.0f} bytes per pixel per unit of network width (run_plan.py uses this)")


if __name__ == "__main__":
    main()
