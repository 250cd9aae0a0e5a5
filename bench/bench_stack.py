"""Slices per second for a 32-slice 256x256 stack: batched vs one slice at a time.

.venv/bin/python bench/bench_stack.py [--rounds 3] [--slices 32] [--size 256]
"""

from __future__ import annotations

import argparse
import statistics
import time

from napari_unet_gradcam import explain, load_model
from napari_unet_gradcam.synthetic import nuclei_3d


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--slices", type=int, default=32)
    p.add_argument("--size", type=int, default=256)
    a = p.parse_args()
    net = load_model(device="cpu")
    stack = nuclei_3d(11, (a.slices, a.size, a.size))
    runs = {"auto batch size": lambda: explain(stack, net)}
    for b in (16, 8, 4, 2):
        runs[f"batch of {b}"] = lambda b=b: explain(stack, net, batch_size=b)
    runs["one slice at a time"] = lambda: explain(stack, net, batch_size=1)
    for fn in runs.values():
        fn()
    times = {k: [] for k in runs}
    for _ in range(a.rounds):
        for k, fn in runs.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    base = statistics.median(times["one slice at a time"])
    print(f"# bundled model, explain() with 12 maps per slice, {a.slices} x {a.size} x {a.size} stack, CPU")
    print("| mode | median s | slices/s | speed-up vs one at a time |\n| --- | --- | --- | --- |")
    for k, v in times.items():
        m = statistics.median(v)
        print(f"| {k} | {m:.2f} | {a.slices / m:.1f} | {base / m:.2f} |")


if __name__ == "__main__":
    main()
