"""check_maps(): its cost against predict(), and which method and decoder layer is most faithful.

1. Cost: the check of all 12 maps (4 decoder layers x 3 classes, Grad-CAM) of the bundled model
   on a synthetic 512x512 nuclei image, beside predict() on the same image, interleaved rounds,
   medians: the curves alone (default steps and the quick ones), and the randomisation alone,
   with estimate_cost()'s figure (what the widget states before it runs) beside the measured one.
2. Faithfulness: for all six methods, every map's deletion and insertion AUC against the random
   order, and the cascading-randomisation correlation, on a crop of the synthetic image and, when
   bench/eval_real_nuclei.py has cached the DSB2018 image in bench/.data, on a crop of it.

    .venv/bin/python bench/bench_faithfulness.py [--size 512] [--rounds 3] [--table-size 256] [--json out.json]

The "region" rows are a reference, not a method: each class's own predicted region used as its map.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

from napari_unet_gradcam import explain, load_model, predict
from napari_unet_gradcam.faithfulness import (
    BASELINES,
    DEFAULT_STEPS,
    QUICK_STEPS,
    SUMMARY_COLUMNS,
    check_maps,
    estimate_cost,
    fold_batchnorm,
    randomised_copy,
)
from napari_unet_gradcam.methods import METHODS
from napari_unet_gradcam.synthetic import nuclei_2d

DATA = Path(__file__).parent / ".data"


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def cost(net, size: int, rounds: int) -> None:
    img = nuclei_2d(7, (size, size))
    result = explain(img, net)
    # label -> (steps, randomisation); steps (0, 1) run no curve, so that row is the randomisation alone
    checks = {
        "curves, default steps (0, 5, 10, 20, 40, 80, 100 %)": (DEFAULT_STEPS, False),
        "curves, QUICK_STEPS (0, 10, 30, 100 %)": (QUICK_STEPS, False),
        "randomisation only": ((0.0, 1.0), True),
    }
    runs = {"predict()": lambda: predict(img, net)}
    for k, (steps, rand) in checks.items():
        runs[k] = lambda steps=steps, rand=rand: check_maps(img, net, result, steps=steps, randomisation=rand)

    def explain_per_map():  # how randomisation ran before: one explain() per map on the randomised copy
        for ly in result.layers:
            rnet = randomised_copy(net, ly)
            for c in result.classes:
                explain(img, rnet, layers=[ly], classes=[c], target=result.labels == c, normalize="none")

    runs["randomisation as 12 explain() runs (before)"] = explain_per_map
    predict(img, net)
    t: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(rounds):
        for k, fn in runs.items():
            t[k].append(timed(fn))
    p = statistics.median(t["predict()"])
    print(f"# bundled model, {size}x{size}, 12 Grad-CAM maps; median of {rounds} interleaved round(s)")
    print(
        "| run | forward passes | randomised networks (backward passes) | s | x predict() | estimated x |\n"
        "| --- | --- | --- | --- | --- | --- |"
    )
    for k in runs:
        c = estimate_cost(result, steps=checks[k][0], randomisation=checks[k][1]) if k in checks else None
        rand = f"{c.explain_runs} ({c.backward_passes})" if c else "-"
        passes, est = (c.forward_passes, f"{c.times_predict:.0f}") if c else (1, "-")
        m = statistics.median(t[k])
        print(f"| {k} | {passes} | {rand} | {m:.1f} | {m / p:.1f} | {est} |")


def layouts(net, size: int, rounds: int) -> None:
    """Per-image time of one forward pass: the module's layout or channels-last, one image or six."""
    import copy

    import torch

    img = nuclei_2d(7, (size, size))
    cl = copy.deepcopy(net).eval().to(memory_format=torch.channels_last)
    folded = fold_batchnorm(copy.deepcopy(net).eval()).to(memory_format=torch.channels_last)
    x1, x6 = torch.rand(1, 1, size, size), torch.rand(6, 1, size, size)
    runs = {
        "predict()": (lambda: predict(img, net), 1),
        "net(x), module layout, 1 image": (lambda: net(x1), 1),
        "net(x), module layout, 6 images": (lambda: net(x6), 6),
        "channels-last copy, 1 image": (lambda: cl(x1.contiguous(memory_format=torch.channels_last)), 1),
        "channels-last copy, 6 images": (lambda: cl(x6.contiguous(memory_format=torch.channels_last)), 6),
        "BN folded, channels-last, 1 image": (lambda: folded(x1.contiguous(memory_format=torch.channels_last)), 1),
    }
    t: dict[str, list[float]] = {k: [] for k in runs}
    with torch.inference_mode():
        for fn, _ in runs.values():
            fn()
        for _ in range(rounds):
            for k, (fn, n) in runs.items():
                t[k].append(timed(fn) / n)
    print(f"\n# one forward pass per image, {size}x{size}, median of {rounds} interleaved rounds")
    print("| pass | ms per image |\n| --- | --- |")
    for k in runs:
        print(f"| {k} | {statistics.median(t[k]) * 1000:.0f} |")


def table(net, img: np.ndarray, label: str, rows: list[dict], methods: list[str], baseline: str) -> None:
    print(f"\n# {label}: {img.shape}, {baseline} baseline; AUCs also as ratios to the random order's")
    print("| method | layer | class | deletion AUC | vs random | insertion AUC | vs random | randomisation rho |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for method in [*methods, "region"]:
        if method == "region":  # reference: each class's own predicted region as its map (no randomisation)
            result = explain(img, net, layers=["up4"])
            result.cams = {k: (result.labels == k[1]).astype(np.float32) for k in result.cams}
            checks = check_maps(img, net, result, randomisation=False, baseline=baseline)
        else:
            checks = check_maps(img, net, explain(img, net, method=method), baseline=baseline)
        for c, row in zip(checks.checks, checks.summary_rows(), strict=True):
            rows.append({"image": label, "method": method, **dict(zip(SUMMARY_COLUMNS, row, strict=True))})
            print(
                f"| {method} | {c.layer} | {c.class_name} | {c.deletion_auc:.3f} | {c.deletion_vs_random:.2f} | "
                f"{c.insertion_auc:.3f} | {c.insertion_vs_random:.2f} | {c.randomisation_rho:.2f} |"
            )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--table-size", type=int, default=256)
    p.add_argument("--skip-cost", action="store_true")
    p.add_argument("--baseline", default="blur", choices=BASELINES)
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated; empty: the reference rows only")
    p.add_argument("--json", default=None, help="also write every map's figures here")
    a = p.parse_args()
    net = load_model(device="cpu")
    if not a.skip_cost:
        layouts(net, a.size, a.rounds)
        cost(net, a.size, a.rounds)
    n = a.table_size
    rows: list[dict] = []
    methods = [m for m in a.methods.split(",") if m]
    if n <= 0:
        return
    table(net, nuclei_2d(7, (512, 512))[:n, :n], "synthetic nuclei_2d(7)", rows, methods, a.baseline)
    real = DATA / "img2d.tif"
    if real.exists():
        import tifffile

        table(net, tifffile.imread(real)[:n, :n], "DSB2018 (stardist img2d)", rows, methods, a.baseline)
    else:
        print(f"\n# real image skipped: {real} is not cached (bench/eval_real_nuclei.py fetches it)")
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1, default=str))


if __name__ == "__main__":
    main()
