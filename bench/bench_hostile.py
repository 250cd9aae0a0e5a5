"""Peak memory of loading tiny hostile files: with our checks, and along the path without them.

Each row builds one attack (with the builders of tests/test_hostile.py), then runs two fresh
processes and prints their peak RSS side by side:

* unchecked: what the code did before the checks (torch.load the zip as is; build the network
  the tensor shapes declare; decode the TIFF whole);
* checked: ``load_model`` / ``read_image`` as they are now, which refuse from the declared sizes.

The unchecked column needs about 5 GB of free RAM.

    .venv/bin/python bench/bench_hostile.py
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.test_hostile import huge_tiff, tile_bomb_tiff, zero_stride_checkpoint, zip_bomb_checkpoint  # noqa: E402

CHILD = """
import resource, sys
import torch, tifffile
import napari_unet_gradcam.io
from napari_unet_gradcam import load_model
from napari_unet_gradcam.model import UNet
kind, path = sys.argv[1], sys.argv[2]
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    {body}
    print("outcome: no error")
except Exception as exc:
    print("outcome:", type(exc).__name__, str(exc)[:90].replace(path, "<file>"))
print("peak", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024, base // 1024)
"""

CASES = {
    "zip of deflated zeros": (
        zip_bomb_checkpoint,
        "torch.load(path, map_location='cpu', weights_only=True)",
        "load_model(path, device='cpu')",
    ),
    "zero-stride weight, width 512": (
        lambda p: zero_stride_checkpoint(p, width=512),
        "w = torch.load(path, weights_only=True)['inc.double_conv.0.weight']; "
        "UNet(1, 3, bilinear=True, width=w.shape[0])",
        "load_model(path, device='cpu')",
    ),
    "TIFF declaring 50000 x 50000": (
        huge_tiff,
        "tifffile.TiffFile(path).series[0].asarray()",
        "napari_unet_gradcam.io.read_image(path, max_bytes=1 << 30)",
    ),
    "TIFF 16 x 16 in one 32768^2 tile": (
        tile_bomb_tiff,
        "tifffile.TiffFile(path).series[0].asarray()",
        "napari_unet_gradcam.io.read_image(path)",
    ),
}


def run(kind: str, path: Path, body: str) -> tuple[int, int, str]:
    code = CHILD.format(body=body)
    r = subprocess.run([sys.executable, "-c", code, kind, str(path)], capture_output=True, text=True)
    lines = r.stdout.splitlines()
    peak = next((ln.split() for ln in lines if ln.startswith("peak")), ["peak", "-1", "-1"])
    outcome = next((ln[9:] for ln in lines if ln.startswith("outcome")), f"killed (rc {r.returncode})")
    return int(peak[1]), int(peak[2]), outcome


def main() -> int:
    print(f"{'attack':<32}{'file':>9}{'unchecked':>12}{'checked':>10}{'ratio':>8}  checked outcome")
    with tempfile.TemporaryDirectory() as tmp:
        for kind, (build, unchecked, checked) in CASES.items():
            path = build(Path(tmp) / ("attack.tif" if "TIFF" in kind else "attack.pth"))
            size = path.stat().st_size / 2**20
            before, _, _ = run(kind, path, unchecked)
            after, base, outcome = run(kind, path, checked)
            print(
                f"{kind:<32}{size:>7.2f}MB{before:>9} MiB{after:>6} MiB{before / after:>7.1f}x  {outcome}"
                f" (after imports: {base} MiB)"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
