"""200 consecutive runs on one model: no hook left behind, no memory growth beyond noise.

.venv/bin/python bench/bench_soak.py [--runs 200]
"""

from __future__ import annotations

import argparse
import gc
import resource

import numpy as np

from napari_unet_gradcam import explain, load_model
from napari_unet_gradcam.synthetic import nuclei_2d


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / (1 << 20)


def hooks(net) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in net.modules())


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--runs", type=int, default=200)
    a = p.parse_args()
    net = load_model(device="cpu")
    img = nuclei_2d(7, (256, 256))
    methods = ["gradcam", "hirescam", "gradcam++", "xgradcam", "layercam", "eigencam"]
    samples = []
    for i in range(a.runs):
        explain(img, net, method=methods[i % len(methods)], tile_size=128 if i % 4 == 0 else None)
        if i % 20 == 19:
            gc.collect()
            samples.append(rss_mib())
    first, last = samples[0], samples[-1]
    slope = np.polyfit(np.arange(len(samples)) * 20, samples, 1)[0]
    print(f"| runs | hooks left | RSS after 20 runs MiB | RSS after {a.runs} MiB | growth per run KiB |")
    print("| --- | --- | --- | --- | --- |")
    print(f"| {a.runs} | {hooks(net)} | {first:.0f} | {last:.0f} | {slope * 1024:.1f} |")


if __name__ == "__main__":
    main()
