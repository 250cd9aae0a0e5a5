"""A 3-D U-Net on one volume: every decoder-layer x class map from one pass vs. one run per map.

The network is MONAI's BasicUNet (3-D, small features), randomly initialised: speed and memory do
not depend on the weights. The approaches:

* predict: the forward pass alone;
* one pass: this package's engine, 4 layers x 3 classes from one forward + one gradient call per class;
* per (layer, class): the textbook recipe, fresh hook and full forward + backward for each map;
* pytorch-grad-cam: its GradCAM, one per layer, one SemanticSegmentationTarget per class (skipped
  when it is not installed; see bench/_shims.py for its torchvision stub).

Times are interleaved rounds in one process; peak memory is measured in a fresh process per
approach. Before timing, each approach's maps are checked against the one-pass maps (Pearson r).

    .venv/bin/python bench/bench_3d.py [--size 64] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
LAYERS = ("upcat_4", "upcat_3", "upcat_2", "upcat_1")
CLASSES = (0, 1, 2)
APPROACHES = ("predict", "one pass", "per (layer, class)", "pytorch-grad-cam")


def build(size: int):
    from monai.networks.nets import BasicUNet

    torch.manual_seed(0)
    net = BasicUNet(spatial_dims=3, in_channels=1, out_channels=len(CLASSES), features=(8, 8, 16, 32, 64, 8)).eval()
    x = torch.rand(1, 1, size, size, size)
    x[..., size // 4 : size // 2, size // 4 : size // 2, size // 3 :] += 1.0
    return net, x


def one_pass(net, x):
    from napari_unet_gradcam.engine import explain_tensor, map_to_input
    from napari_unet_gradcam.methods import get_method

    _, maps = explain_tensor(net, x, LAYERS, CLASSES, get_method("gradcam"), "predicted")
    size = tuple(x.shape[2:])
    return {k: map_to_input(m, size, size)[0].numpy() for k, m in maps.items()}


def per_layer_class(net, x):
    from bench_speed import naive_recipe
    from napari_unet_gradcam.engine import map_to_input

    size = tuple(x.shape[2:])
    maps = naive_recipe(net, x, CLASSES, LAYERS)
    return {k: map_to_input(m, size, size)[0].numpy() for k, m in maps.items()}


def pytorch_grad_cam(net, x):
    from _shims import install_torchvision_stub

    install_torchvision_stub()
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import SemanticSegmentationTarget

    with torch.no_grad():
        pred = net(x).argmax(1)[0]
    maps = {}
    for layer in LAYERS:
        with GradCAM(model=net, target_layers=[dict(net.named_modules())[layer]]) as cam:
            for c in CLASSES:
                target = SemanticSegmentationTarget(c, (pred == c).float().numpy())
                maps[layer, c] = cam(input_tensor=x, targets=[target])[0]
    return maps


def predict_only(net, x):
    with torch.no_grad():
        net(x)
    return {}


RUNS = {"predict": predict_only, "one pass": one_pass, "per (layer, class)": per_layer_class}
RUNS["pytorch-grad-cam"] = pytorch_grad_cam


def agreement(ref: dict, other: dict) -> float:
    rs = [
        np.corrcoef(ref[k].ravel(), np.asarray(other[k], np.float64).ravel())[0, 1]
        for k in ref
        if ref[k].std() > 0 and np.asarray(other[k]).std() > 0
    ]
    return min(rs) if rs else float("nan")


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def peak_memory(approach: str, size: int) -> float:
    """MiB of peak RSS one run of ``approach`` adds to a fresh process that holds the network and volume.

    The high-water mark is reset first (Linux's clear_refs): a child's ru_maxrss starts at the RSS
    its parent had when it forked, which would hide the run's own peak.
    """
    net, x = build(size)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    base = _status_kib("VmRSS")
    RUNS[approach](net, x)
    return (_status_kib("VmHWM") - base) / 1024


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--memory-of", choices=APPROACHES)
    a = p.parse_args()
    if a.memory_of:
        print(json.dumps(peak_memory(a.memory_of, a.size)))
        return
    net, x = build(a.size)
    runs, agree = {}, {}
    ref = one_pass(net, x)
    for name, fn in RUNS.items():
        try:
            maps = fn(net, x)  # warm-up, and the maps to check
        except ImportError as exc:
            print(f"# {name}: skipped ({exc})")
            continue
        runs[name] = fn
        # The finest layer is on the input grid, so no resampling differs there (pytorch-grad-cam zooms
        # coarse 3-D maps with cubic splines, this package interpolates trilinearly).
        fine = {k: v for k, v in ref.items() if k[0] == LAYERS[-1]}
        agree[name] = (agreement(ref, maps), agreement(fine, maps)) if maps else None
    times = {name: [] for name in runs}
    for _ in range(a.rounds):  # interleaved: the machine's drift hits every approach alike
        for name, fn in runs.items():
            t = time.perf_counter()
            fn(net, x)
            times[name].append(time.perf_counter() - t)
    memory = {}
    for name in runs:
        cmd = [sys.executable, __file__, "--memory-of", name, "--size", str(a.size)]
        memory[name] = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
    med = {name: statistics.median(v) for name, v in times.items()}
    print(f"# BasicUNet 3-D (features 8-64), {a.size}^3 volume, {len(LAYERS)} layers x {len(CLASSES)} classes, CPU,")
    print(f"# {torch.get_num_threads()} threads; medians of {a.rounds} interleaved rounds; memory: peak RSS that")
    print("# one run adds to a fresh process holding the network and the volume")
    print(f"| approach | seconds | x predict | x one pass | peak MiB | min r vs one pass: all maps, {LAYERS[-1]} |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name in runs:
        r = "-" if agree[name] is None else f"{agree[name][0]:.4f}, {agree[name][1]:.4f}"
        ratios = f"{med[name] / med['predict']:.2f} | {med[name] / med['one pass']:.2f}"
        print(f"| {name} | {med[name]:.2f} | {ratios} | {memory[name]:.0f} | {r} |")


if __name__ == "__main__":
    main()
