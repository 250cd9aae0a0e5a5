"""Instance labels before and after the clean-up (specks dropped, fragments folded): right? how fast?

Per source, the F1 score of instances matched one to one at IoU > 0.5 and the number of instances
per true nucleus, for the raw split along the boundary class (``_split_slice``, what
``instance_labels`` returned until stop 24) and for ``instance_labels`` now. Sources: the synthetic
validation images (true instances known), and the real images of ``eval_real_nuclei.py`` (2-D
ones; their labels are instances too; the automatic ones miss dim nuclei, so their F1 is low for
both). Then the time of both on 512x512 synthetic predictions, interleaved, and the ratio.

    .venv/bin/python bench/bench_instance_quality.py [--rounds 7]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from eval_real_nuclei import program_labelled_cases, real_cases  # noqa: E402
from napari_unet_gradcam import instance_labels, load_model, predict  # noqa: E402
from napari_unet_gradcam.instances import _split_slice  # noqa: E402
from napari_unet_gradcam.synthetic import generate  # noqa: E402


def f1(pred: np.ndarray, truth: np.ndarray) -> float:
    """F1 of instances matched at IoU > 0.5 (such a match is one to one)."""
    p, t = pred.ravel().astype(np.int64), truth.ravel().astype(np.int64)
    both = (p > 0) & (t > 0)
    k = int(t.max()) + 1
    pairs, overlap = np.unique(p[both] * k + t[both], return_counts=True)
    ps, ts = np.bincount(p), np.bincount(t)
    iou = overlap / (ps[pairs // k] + ts[pairs % k] - overlap)
    n_pred, n_true = int((ps[1:] > 0).sum()), int((ts[1:] > 0).sum())
    return 2 * int((iou > 0.5).sum()) / max(n_pred + n_true, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    net = load_model(device="cpu")
    cases = [
        (f"synthetic validation{', artefacts' * a}", generate(1_000_000 + s, artefacts=a))
        for a in (0, 1)
        for s in range(16)
    ]
    cases = [(name, (s.image, s.instances)) for name, s in cases]
    cases += [(c.source, (c.image, c.mask)) for c in real_cases() + program_labelled_cases() if c.image.ndim == 2]
    rows: dict[str, list] = {}
    for source, (image, truth) in cases:
        sem = predict(image, net)
        raw, now = _split_slice(sem, [1], [2]), instance_labels(sem)
        n_true = len(np.unique(truth)) - 1
        rows.setdefault(source, []).append((f1(raw, truth), f1(now, truth), raw.max() / n_true, now.max() / n_true))
    print("| source | n | F1 raw split | F1 now | instances per nucleus, raw | now |")
    print("| --- | --- | --- | --- | --- | --- |")
    for source, r in rows.items():
        m = np.mean(r, axis=0)
        print(f"| {source} | {len(r)} | {m[0]:.3f} | {m[1]:.3f} | {m[2]:.2f} | {m[3]:.2f} |")
    sems = [predict(generate(50_000 + i, (512, 512)).image, net) for i in range(6)]
    times: dict[str, list] = {"raw split": [], "instance_labels": []}
    for _ in range(args.rounds):
        for name, fn in (("raw split", lambda s: _split_slice(s, [1], [2])), ("instance_labels", instance_labels)):
            t0 = time.perf_counter()
            for sem in sems:
                fn(sem)
            times[name].append((time.perf_counter() - t0) / len(sems) * 1000)
    ms = {k: statistics.median(v) for k, v in times.items()}
    print(f"\n6 synthetic 512x512 predictions, median of {args.rounds} interleaved rounds, ms per image:")
    print(", ".join(f"{k} {v:.2f}" for k, v in ms.items()), f"; ratio {ms['instance_labels'] / ms['raw split']:.2f}x")


if __name__ == "__main__":
    main()
