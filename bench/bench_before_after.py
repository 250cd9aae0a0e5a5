"""predict() and explain() of this tree against an earlier copy of the package, interleaved.

Both versions run in one process, alternating call by call, on one thread, timed in CPU
seconds of the process (minimum over rounds): on a machine shared with other work, wall time
measures the neighbours as much as the code. The earlier copy is a ``src/napari_unet_gradcam`` folder
exported from another commit, imported under another name:

    git archive <commit> src | tar -x -C /tmp/before
    PYTHONPATH=src .venv/bin/python bench/bench_before_after.py /tmp/before/src/napari_unet_gradcam
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time

import torch

import napari_unet_gradcam as now
from napari_unet_gradcam.synthetic import nuclei_2d


def load_copy(path: str):
    spec = importlib.util.spec_from_file_location("napari_unet_gradcam_before", f"{path}/__init__.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("before", help="folder of the earlier napari_unet_gradcam package")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    before = load_copy(a.before)
    net = now.load_model(device="cpu")
    cases = [((512, 512), 1.0), ((512, 512), 0.5), ((203, 299), 1.0)]
    print(f"# torch {torch.__version__}, threads {torch.get_num_threads()}, {a.rounds} rounds, min CPU seconds")
    print("| call | image | scale | before s | now s | now / before |\n| --- | --- | --- | --- | --- | --- |")
    for shape, scale in cases:
        img = nuclei_2d(7, shape)
        for name in ("predict", "explain"):
            fns = {"before": getattr(before, name), "now": getattr(now, name)}
            for fn in fns.values():
                fn(img, net, scale=scale)  # warm-up
            times = {k: [] for k in fns}
            for _ in range(a.rounds):
                for k, fn in fns.items():
                    t0 = time.process_time()
                    fn(img, net, scale=scale)
                    times[k].append(time.process_time() - t0)
            b, n = min(times["before"]), min(times["now"])
            print(f"| {name}() | {shape[1]}x{shape[0]} | {scale} | {b:.3f} | {n:.3f} | {n / b:.2f} |")


if __name__ == "__main__":
    main()
