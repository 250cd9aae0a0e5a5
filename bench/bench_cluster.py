"""A batch of images on a local dask cluster of 1 vs 2 workers: throughput and per-worker memory.

Each run is the CLI's own path (``explain FILES --workers N``, ``cli_cluster.py``): the model is
loaded once per worker (``cluster.ModelPreload``), each file is explained and written on a worker,
all 12 maps of the bundled model. Each worker first explains one file (not timed), then the
batch is timed from submission to the last file written. Memory is
each worker process's peak RSS (``VmHWM``) after the batch. Both cluster sizes run in one
invocation, side by side.

    nice -n 10 .venv/bin/python bench/bench_cluster.py [--images 64] [--size 256] [--workers 1 2]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import tifffile

from napari_unet_gradcam.cli import build_parser
from napari_unet_gradcam.cli_cluster import explain_file_task
from napari_unet_gradcam.cluster import (
    ModelSpec,
    StopFlag,
    as_completed_with_stop,
    cluster_client,
    local_torch_threads,
    preloaded,
)
from napari_unet_gradcam.synthetic import nuclei_2d


def peak_rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def run(files: list[Path], out: Path, workers: int) -> dict:
    args = build_parser().parse_args(["explain", *map(str, files), "--out", str(out), "--device", "cpu"])
    spec = ModelSpec.of(None, "cpu")
    t0 = time.perf_counter()
    with cluster_client(workers=workers) as client, preloaded(client, spec, local_torch_threads(workers)):
        started = time.perf_counter() - t0
        stop = StopFlag(client)

        def submit(batch):
            return {
                client.submit(explain_file_task, spec, args, f.name, str(f), stop.name, pure=False): f for f in batch
            }

        for _ in as_completed_with_stop(client, submit(files[:workers]), stop):  # warm-up, one file per worker
            pass
        stop = StopFlag(client)
        t = time.perf_counter()
        failed = sum(fut.result()[0] for _, fut in as_completed_with_stop(client, submit(files), stop))
        seconds = time.perf_counter() - t
        rss = client.run(peak_rss)
    return {"workers": workers, "startup": started, "seconds": seconds, "failed": failed, "rss": list(rss.values())}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    a = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench_cluster_"))
    files = []
    for i in range(a.images):
        files.append(tmp / f"img{i:03d}.tif")
        tifffile.imwrite(files[-1], nuclei_2d(i, (a.size, a.size)))
    print(f"{a.images} images of {a.size}^2, bundled model, all 12 maps; {os.cpu_count()} cores")
    rows = [run(files, tmp / f"out{n}", n) for n in a.workers]
    base = rows[0]["seconds"]
    print("| workers | startup (cluster + model) | batch | images/s | speed-up | peak RSS per worker |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        rss = ", ".join(f"{v / 2**20:.0f}" for v in r["rss"])
        print(
            f"| {r['workers']} | {r['startup']:.1f} s | {r['seconds']:.1f} s | {a.images / r['seconds']:.2f} | "
            f"{base / r['seconds']:.2f}x | {rss} MiB |" + (f" ({r['failed']} failed)" if r["failed"] else "")
        )


if __name__ == "__main__":
    main()
