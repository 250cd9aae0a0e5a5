"""All decoder-layer x class maps at once vs. predict() alone vs. the per-(layer, class) recipe.

Each approach runs interleaved in one process (medians of several rounds), so the ratios hold
on a noisy shared machine even when absolute times drift. All approaches make the same maps;
the script checks that (Pearson r per map) before it prints timings.

    .venv/bin/python bench/bench_speed.py [--size 512] [--rounds 5] [--full-width]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import numpy as np
import torch

from napari_unet_gradcam import UNet, explain, load_model, predict
from napari_unet_gradcam.checkpoint import default_model_path
from napari_unet_gradcam.methods import get_method
from napari_unet_gradcam.synthetic import nuclei_2d

LAYERS = ("up1", "up2", "up3", "up4")


def naive_recipe(net, x, classes):
    """The common recipe: fresh hooks and a full forward + backward for every (layer, class)."""
    gradcam = get_method("gradcam")
    maps = {}
    with torch.no_grad():
        pred = net(x).argmax(1)
    for layer in LAYERS:
        module = dict(net.named_modules())[layer]
        for c in classes:
            store = {}
            h = module.register_forward_hook(lambda m, i, o, store=store: store.update(a=o) or o.retain_grad())
            try:
                net.zero_grad()
                logits = net(x)
                (logits[:, c] * (pred == c)).sum().backward()
            finally:
                h.remove()
            maps[layer, c] = gradcam(store["a"].detach(), store["a"].grad)
    return maps


def timed(fn, rounds):
    out = []
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return statistics.median(out)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--full-width", action="store_true", help="an upstream-size U-Net (width 64) instead")
    a = p.parse_args()
    if a.full_width:
        torch.manual_seed(0)
        net = UNet(1, 3, bilinear=False, width=64).eval()
        net.class_names = ["background", "nucleus", "boundary"]
        name = "upstream-size U-Net (width 64, transposed conv), random weights"
    else:
        net = load_model(default_model_path(), device="cpu")
        name = "bundled model (width 16, bilinear)"
    img = nuclei_2d(7, (a.size, a.size))
    classes = list(range(max(net.n_classes, 2)))
    x = torch.from_numpy((img / img.max()).astype(np.float32))[None, None]

    # Same maps? (raw Grad-CAM at layer resolution vs. explain()'s, compared after upsampling)
    res = explain(img, net, layers=LAYERS, normalize="none", preprocess="none")
    ref = naive_recipe(net, torch.from_numpy(img.astype(np.float32))[None, None], classes)
    rs = []
    for k, m in ref.items():
        up = torch.nn.functional.interpolate(m[:, None], size=img.shape, mode="bilinear", align_corners=False)[0, 0]
        if up.std() > 0:
            rs.append(np.corrcoef(up.numpy().ravel(), res.cams[k].ravel())[0, 1])
    runs = {
        "predict()": lambda: predict(img, net, preprocess="none"),
        f"explain() all {len(LAYERS) * len(classes)} maps": lambda: explain(img, net, layers=LAYERS, preprocess="none"),
        "per-(layer, class) recipe": lambda: naive_recipe(net, x, classes),
    }
    for fn in runs.values():  # warm-up
        fn()
    times = {k: [] for k in runs}
    for _ in range(a.rounds):
        for k, fn in runs.items():
            times[k].append(timed(fn, 1))
    med = {k: statistics.median(v) for k, v in times.items()}
    base = med["predict()"]
    print(f"# {name}; {a.size}x{a.size} image, {len(classes)} classes x {len(LAYERS)} layers")
    print(
        f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, threads {torch.get_num_threads()}"
    )
    print(f"# maps agree with the recipe: min Pearson r = {min(rs):.4f} over {len(rs)} non-empty maps")
    print("| approach | median s | x predict() |\n| --- | --- | --- |")
    for k, v in med.items():
        print(f"| {k} | {v:.3f} | {v / base:.2f} |")
    budget = 1 + 0.5 * len(classes)
    print(f"# target: explain() <= {budget:.1f} x predict(); measured {med[list(runs)[1]] / base:.2f}")


if __name__ == "__main__":
    main()
