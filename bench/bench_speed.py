"""All decoder-layer x class maps at once vs. predict() alone vs. the per-(layer, class) recipe.

Each approach runs interleaved in one process (medians of several rounds), so the ratios hold
on a noisy shared machine even when absolute times drift. All approaches make the same maps;
the script checks that (Pearson r per map) before it prints timings.

    .venv/bin/python bench/bench_speed.py [--size 512] [--rounds 5] [--full-width]

pytorch-grad-cam and captum are benchmark-only: `make bench` installs them (grad-cam with
--no-deps, see bench/_shims.py); without them those rows are skipped.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from napari_unet_gradcam import UNet, explain, load_model, predict
from napari_unet_gradcam.checkpoint import default_model_path
from napari_unet_gradcam.methods import get_method
from napari_unet_gradcam.synthetic import nuclei_2d

LAYERS = ("up1", "up2", "up3", "up4")
sys.path.insert(0, str(Path(__file__).parent))


def naive_recipe(net, x, classes, layers=LAYERS):
    """The common recipe: fresh hooks and a full forward + backward for every (layer, class); 2-D or 3-D."""
    gradcam = get_method("gradcam")
    maps = {}
    with torch.no_grad():
        pred = net(x).argmax(1)
    for layer in layers:
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


def pytorch_grad_cam_maps(net, x, classes, pred):
    """pytorch-grad-cam: one GradCAM per layer, one SemanticSegmentationTarget per class."""
    from _shims import install_torchvision_stub

    install_torchvision_stub()
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import SemanticSegmentationTarget

    maps = {}
    for layer in LAYERS:
        with GradCAM(model=net, target_layers=[dict(net.named_modules())[layer]]) as cam:
            for c in classes:
                mask = (pred[0] == c).float().numpy()
                maps[layer, c] = cam(input_tensor=x, targets=[SemanticSegmentationTarget(c, mask)])[0]
    return maps


def captum_maps(net, x, classes, pred):
    """captum's LayerGradCam, one per layer; the forward returns each class's Seg-Grad-CAM score."""
    from captum.attr import LayerGradCam

    masks = torch.stack([(pred[0] == c).float() for c in classes])

    def scores(inp):
        return (net(inp) * masks[None]).sum((2, 3))

    maps = {}
    for layer in LAYERS:
        lgc = LayerGradCam(scores, dict(net.named_modules())[layer])
        for c in classes:
            a = lgc.attribute(x, target=c, relu_attributions=True)
            maps[layer, c] = F.interpolate(a, size=x.shape[-2:], mode="bilinear", align_corners=False)[0, 0]
    return maps


def agreement(ref: dict, other: dict) -> float:
    rs = []
    for k, m in ref.items():
        o = np.asarray(other[k].detach() if isinstance(other[k], torch.Tensor) else other[k], np.float64).ravel()
        if m.std() > 0 and o.std() > 0:
            rs.append(np.corrcoef(m.ravel(), o)[0, 1])
    return min(rs) if rs else float("nan")


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
    p.add_argument("--no-external", action="store_true", help="skip pytorch-grad-cam and captum")
    a = p.parse_args()
    if a.full_width:
        torch.manual_seed(0)
        net = UNet(1, 3, bilinear=False, width=64).eval()
        net.class_names = ["background", "nucleus", "boundary"]
        name = "upstream-size U-Net (width 64, transposed conv), random weights"
    else:
        net = load_model(default_model_path(), device="cpu")
        name = "bundled model (width 16, bilinear)"
    raw = nuclei_2d(7, (a.size, a.size))
    img = (raw / raw.max()).astype(np.float32)  # every approach gets this same input
    classes = list(range(max(net.n_classes, 2)))
    x = torch.from_numpy(img)[None, None]

    # Same maps? (raw Grad-CAM at layer resolution vs. explain()'s, compared after upsampling)
    res = explain(img, net, layers=LAYERS, normalize="none", preprocess="none")
    ref = naive_recipe(net, x, classes)
    rs = []
    for k, m in ref.items():
        up = torch.nn.functional.interpolate(m[:, None], size=img.shape, mode="bilinear", align_corners=False)[0, 0]
        if up.std() > 0:
            rs.append(np.corrcoef(up.numpy().ravel(), res.cams[k].ravel())[0, 1])
    with torch.no_grad():
        pred = net(x).argmax(1)
    runs = {
        "predict()": lambda: predict(img, net, preprocess="none"),
        f"explain() all {len(LAYERS) * len(classes)} maps": lambda: explain(img, net, layers=LAYERS, preprocess="none"),
        "per-(layer, class) recipe": lambda: naive_recipe(net, x, classes),
    }
    others = {}
    if not a.no_external:
        others = {
            "pytorch-grad-cam": lambda: pytorch_grad_cam_maps(net, x, classes, pred),
            "captum LayerGradCam": lambda: captum_maps(net, x, classes, pred),
        }
    agree = {}
    for k, fn in others.items():
        try:
            agree[k] = agreement(res.cams, fn())
            runs[k] = fn
        except ImportError as exc:
            print(f"# {k} skipped: {exc} (pip install -e '.[bench]')")
    for fn in runs.values():  # warm-up
        fn()
    times = {k: [] for k in runs}
    # Interleaved rounds (so drift hits every approach alike); within a round, the median of
    # three back-to-back calls, so no approach pays for the caches another one just cooled.
    for _ in range(a.rounds):
        for k, fn in runs.items():
            times[k].append(timed(fn, 3))
    med = {k: statistics.median(v) for k, v in times.items()}
    base = med["predict()"]
    print(f"# {name}; {a.size}x{a.size} image, {len(classes)} classes x {len(LAYERS)} layers")
    print(
        f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, threads {torch.get_num_threads()}"
    )
    print(f"# maps agree with the recipe: min Pearson r = {min(rs):.4f} over {len(rs)} non-empty maps")
    for k, r in agree.items():
        print(f"# maps agree with {k}: min Pearson r = {r:.4f}")
    print("| approach | median s | x predict() |\n| --- | --- | --- |")
    for k, v in med.items():
        print(f"| {k} | {v:.3f} | {v / base:.2f} |")
    budget = 1 + 0.5 * len(classes)
    ours = med[list(runs)[1]]
    print(f"# target: explain() <= {budget:.1f} x predict(); measured {ours / base:.2f}")
    for k in others:
        if k in med:
            print(f"# explain() is {med[k] / ours:.1f}x faster than {k} for the same maps")


if __name__ == "__main__":
    main()
