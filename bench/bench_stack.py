"""Slices per second for a 32-slice 256x256 stack: batched vs one slice at a time.

.venv/bin/python bench/bench_stack.py [--rounds 3]
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
    a = p.parse_args()
    net = load_model(device="cpu")
    stack = nuclei_3d(11, (32, 256, 256))
    runs = {
        "auto batch size (1 on CPU, up to 16 on GPU)": lambda: explain(stack, net),
        "batch of 16": lambda: explain(stack, net, batch_size=16),
        "batch of 4": lambda: explain(stack, net, batch_size=4),
        "one slice at a time": lambda: explain(stack, net, batch_size=1),
    }
    for fn in runs.values():
        fn()
    times = {k: [] for k in runs}
    for _ in range(a.rounds):
        for k, fn in runs.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    base = statistics.median(times["one slice at a time"])
    print("# bundled model, explain() with 12 maps per slice, 32 x 256 x 256 stack, CPU")
    print("| mode | median s | slices/s | speed-up vs one at a time |\n| --- | --- | --- | --- |")
    for k, v in times.items():
        m = statistics.median(v)
        print(f"| {k} | {m:.2f} | {32 / m:.1f} | {base / m:.2f} |")


if __name__ == "__main__":
    main()
