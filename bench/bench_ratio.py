"""explain()/predict() on the bundled model, across fresh processes, with glibc's malloc as is and pinned.

Within one process the ratio is steady, but it moves between processes: glibc returns large
freed blocks to the kernel by heuristics that depend on the process's history, so some
processes page-fault every activation buffer afresh on every run and others reuse them. This
script runs the interleaved measurement in several fresh processes, first as a user's process
runs it, then with glibc's thresholds pinned as the CLI pins them (malloc_tuning.py), which removes
the page faults and leaves the compute ratio.

    .venv/bin/python bench/bench_ratio.py [--processes 5] [--size 512] [--rounds 15]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

CHILD = r"""
import json, resource, statistics, sys, time
import numpy as np
from napari_unet_gradcam import explain, load_model, predict
from napari_unet_gradcam.malloc_tuning import pin_glibc_thresholds
from napari_unet_gradcam.synthetic import nuclei_2d
size, rounds, pin = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "pin"
if pin:
    assert pin_glibc_thresholds(), "not glibc, or UNET_GRADCAM_MALLOC_TUNING=0"
net = load_model(device="cpu")
raw = nuclei_2d(7, (size, size))
img = (raw / raw.max()).astype(np.float32)
runs = {"predict": lambda: predict(img, net, preprocess="none"),
        "explain": lambda: explain(img, net, preprocess="none")}
for fn in runs.values():
    fn(); fn()
t = {k: [] for k in runs}
faults = {k: [] for k in runs}
for _ in range(rounds):
    for k, fn in runs.items():
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        t0 = time.perf_counter()
        fn()
        t[k].append(time.perf_counter() - t0)
        faults[k].append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
print(json.dumps({k: [statistics.median(t[k]), statistics.median(faults[k])] for k in runs}))
"""


def child(size: int, rounds: int, pin: bool) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(size), str(rounds), "pin" if pin else "as-is"], capture_output=True, text=True
    )
    if out.returncode:
        raise SystemExit(out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--processes", type=int, default=5)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--rounds", type=int, default=15)
    a = p.parse_args()
    print(f"# bundled model, {a.size}x{a.size}, all 12 maps; {a.processes} fresh processes per row, each")
    print(f"# the median of {a.rounds} interleaved rounds; ratio = explain() / predict() in that process")
    print("| malloc | predict ms | explain ms | page faults per predict / explain | ratio median | min | max |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for label, pin in (("glibc as is", False), ("thresholds pinned (malloc_tuning.py, as the CLI does)", True)):
        rows = [child(a.size, a.rounds, pin) for _ in range(a.processes)]
        ratios = [r["explain"][0] / r["predict"][0] for r in rows]
        pm = statistics.median(r["predict"][0] for r in rows) * 1000
        em = statistics.median(r["explain"][0] for r in rows) * 1000
        pf = statistics.median(r["predict"][1] for r in rows)
        ef = statistics.median(r["explain"][1] for r in rows)
        print(
            f"| {label} | {pm:.1f} | {em:.1f} | {pf:.0f} / {ef:.0f} | {statistics.median(ratios):.2f} | "
            f"{min(ratios):.2f} | {max(ratios):.2f} |"
        )
    print("# target: explain() <= 1 + 0.5 x 3 classes = 2.5 x predict()")


if __name__ == "__main__":
    main()
