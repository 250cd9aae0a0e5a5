"""Peak RSS and time of explain()/predict() from a zarr image to an OME-Zarr store, by image size.

The goal (issue 14): memory flat in the image size, under 3 GiB for all 12 maps. Each size runs
in its own subprocess: it writes a uint16 zarr input in 1000^2 chunks (the bundled sample tiled,
a chunk at a time), then runs the bundled model with ``out=`` and ``memory_budget`` and reports
its peak RSS (``getrusage``) and the time of the run alone.

    nice -n 10 .venv/bin/python bench/bench_large.py [--sizes 4096 8192] [--predict] [--budget-gib 2]
    nice -n 10 .venv/bin/python bench/bench_large.py --sizes 20000 --minutes 10   # a partial run

With ``--minutes M`` each run is cancelled after M minutes (the store is then removed, as for any
cancelled run): the table gives the peak RSS up to then, the share of the run's steps done, and
the whole run's time projected from that share.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = r"""
import json, os, resource, shutil, sys, tempfile, time
import numpy as np
import zarr
from napari_unet_gradcam import explain, load_model, predict
from napari_unet_gradcam.synthetic import nuclei_2d
size, budget, mode, minutes = int(sys.argv[1]), int(float(sys.argv[2]) * 2**30), sys.argv[3], float(sys.argv[4])
from napari_unet_gradcam.errors import Cancelled
steps = [0, 1]
def progress(done, total):
    steps[:] = [done, total]
def cancel():
    return minutes > 0 and time.perf_counter() - t > 60 * minutes
net = load_model(device="cpu")
tmp = tempfile.mkdtemp(prefix="bench_large_")
z = zarr.create_array(store=os.path.join(tmp, "in.zarr"), shape=(size, size), chunks=(1000, 1000), dtype="uint16")
base_tile = nuclei_2d(7, (1000, 1000)).astype(np.uint16) * 16 + 300
for y in range(0, size, 1000):
    for x in range(0, size, 1000):
        z[y : y + 1000, x : x + 1000] = base_tile[: min(1000, size - y), : min(1000, size - x)]
del base_tile
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
t = time.perf_counter()
out = os.path.join(tmp, "out.ome.zarr")
tile, maps, disk = None, 0, 0
try:
    if mode == "predict":
        res = predict(z, net, out=out, memory_budget=budget, progress=progress, cancel=cancel)
    else:
        res = explain(z, net, out=out, memory_budget=budget, progress=progress, cancel=cancel)
        tile, maps = res.metadata["tile_size"], len(res.cams)
    disk = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(out) for f in fs)
except Cancelled:
    pass
sec = time.perf_counter() - t
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
shutil.rmtree(tmp)
print(json.dumps({"size": size, "seconds": sec, "peak": peak, "before": before, "tile": tile, "maps": maps,
                  "disk": disk, "done": steps[0] / max(steps[1], 1)}))
"""


def run(size: int, budget: float, mode: str, minutes: float = 0) -> dict:
    cmd = [sys.executable, "-c", CHILD, str(size), str(budget), mode, str(minutes)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--sizes", type=int, nargs="+", default=[4096, 8192])
    p.add_argument("--budget-gib", type=float, default=2.0)
    p.add_argument("--predict", action="store_true", help="labels only (no maps)")
    p.add_argument("--minutes", type=float, default=0, help="cancel each run after this long (0: run to the end)")
    a = p.parse_args()
    mode = "predict" if a.predict else "explain"
    gib = 1 << 30
    print(f"# bundled model, {mode}() from zarr (uint16, 1000^2 chunks) to OME-Zarr, memory_budget {a.budget_gib} GiB")
    print("| image | Mpx | maps | tile | time s | done | s/Mpx | peak RSS GiB | RSS / smallest's | store GiB |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    first = None
    for size in a.sizes:
        r = run(size, a.budget_gib, mode, a.minutes)
        first = first or r
        mpx = size * size / 1e6
        whole = r["seconds"] / max(r["done"], 1e-9)  # projected from the share of steps done
        done = "all" if r["done"] >= 1 else f"{100 * r['done']:.1f} % (whole run ~{whole / 3600:.1f} h)"
        print(
            f"| {size}^2 | {mpx:.0f} | {r['maps'] or '-'} | {r['tile'] or 'auto'} | {r['seconds']:.0f} | {done} | "
            f"{whole / mpx:.2f} | {r['peak'] / gib:.2f} | {r['peak'] / first['peak']:.2f} | "
            f"{r['disk'] / gib:.2f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
