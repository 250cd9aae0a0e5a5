"""Import cost of the package, napari's sample data and the full API, each in a fresh interpreter.

Every case runs in its own subprocess (nothing cached in ``sys.modules``), rounds interleaved, medians
reported. With ``--baseline REF`` the same cases also run against the package as it was at git
revision REF (exported to a temporary folder), side by side, with the ratio:

    .venv/bin/python bench/bench_import.py [--rounds 7] [--baseline REF]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CASES = {
    "import napari_unet_gradcam": "import napari_unet_gradcam",
    "sample data (2-D and 3-D)": (
        "from napari_unet_gradcam._sample_data import nuclei_2d_sample, nuclei_3d_sample\n"
        "nuclei_2d_sample(); nuclei_3d_sample()"
    ),
    "from napari_unet_gradcam import load_model, predict, explain": (
        "from napari_unet_gradcam import load_model, predict, explain"
    ),
}
PROBE = """
import json, sys, time
t = time.perf_counter()
exec(compile({code!r}, "<case>", "exec"))
print(json.dumps({{"s": time.perf_counter() - t, "torch": "torch" in sys.modules, "cv2": "cv2" in sys.modules}}))
"""


def run_case(src: Path, code: str) -> dict:
    env = dict(os.environ, PYTHONPATH=str(src))
    r = subprocess.run(
        [sys.executable, "-c", PROBE.format(code=code)], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(r.stdout.strip().splitlines()[-1])


def export(ref: str, dest: Path) -> Path:
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref, "src"], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest / "src"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--baseline", help="git revision to compare against, e.g. main")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        trees = {"this tree": ROOT / "src"}
        if args.baseline:
            trees[args.baseline] = export(args.baseline, Path(tmp))
        times = {(t, c): [] for t in trees for c in CASES}
        pulls = {}
        for _ in range(args.rounds):
            for c, code in CASES.items():
                for t, src in trees.items():
                    r = run_case(src, code)
                    times[t, c].append(r["s"])
                    pulls[t, c] = ", ".join(m for m in ("torch", "cv2") if r[m]) or "-"
    print(f"# python {sys.version.split()[0]}, {args.rounds} fresh interpreters per cell, median seconds")
    names = list(trees)
    head = " | ".join(f"{n} (s) | imports" for n in names)
    print(f"| case | {head} |" + (f" {names[1]} ÷ this tree |" if len(names) == 2 else ""))
    print("|---" * (1 + 2 * len(names) + (len(names) == 2)) + "|")
    for c in CASES:
        med = [statistics.median(times[n, c]) for n in names]
        cells = " | ".join(f"{m:.3f} | {pulls[n, c]}" for n, m in zip(names, med, strict=True))
        ratio = f" {med[1] / med[0]:.1f}x |" if len(names) == 2 else ""
        print(f"| {c} | {cells} |{ratio}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
