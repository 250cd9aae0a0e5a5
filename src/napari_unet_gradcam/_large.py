"""Large images in the widget: which pyramid level, how long it takes, and where its results go.

Results that would not fit in RAM are written to an OME-Zarr store, in a folder the user picks or
in a temporary one, and shown as multiscale layers that napari reads tile by tile
(docs/large-data.md). Temporary stores live as long as a layer shows them, and at most until
Python exits.
"""

from __future__ import annotations

import atexit
import re
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from ._layers import mark
from ._regions import image_shape
from .run_plan import RAM_SHARE, result_bytes, system_available_bytes

# The finest pyramid level explained by default: a whole slide's level 0 takes hours on a CPU.
DEFAULT_MAX_PIXELS = 4096 * 4096
PROBE_SIDES = (256, 512)  # the images a speed probe explains


def file_stem(name: str) -> str:
    """A layer name as a file name's stem (exports, stores)."""
    return re.sub(r"[^\w.-]+", "_", name).strip("_") or "image"


def image_shape_of(snap) -> tuple[int, ...]:
    """A snapshot's image shape without its RGB axis."""
    shape = tuple(snap.data.shape)
    return shape[:-1] if snap.rgb else shape


def results_bytes(shape: tuple[int, ...], n_classes: int, n_maps: int, scale: float = 1.0) -> int:
    """RAM that explain() would take for the results of an image of ``shape`` (stack, y, x)."""
    n = int(np.prod(shape[:-2], dtype=np.int64))
    full = tuple(int(s) for s in shape[-2:])
    fed = tuple(max(1, round(s * scale)) for s in full)
    return result_bytes(n, fed, full, n_classes, n_maps, probabilities=True)


def fits_in_ram(need: int) -> bool:
    return need <= RAM_SHARE * system_available_bytes()


def default_level(layer, n_classes: int = 3, n_maps: int = 12) -> int:
    """The finest level of a pyramid whose planes have at most DEFAULT_MAX_PIXELS pixels and whose
    results fit in RAM; the coarsest level when none does."""
    for i in range(len(layer.data)):
        shape = image_shape(layer, i)
        if int(np.prod(shape[-2:])) <= DEFAULT_MAX_PIXELS and fits_in_ram(results_bytes(shape, n_classes, n_maps)):
            return i
    return len(layer.data) - 1


def duration(seconds: float) -> str:
    """An estimate as a reader wants it: '<1 s', '~40 s', '~12 min', '~3.1 h'."""
    if seconds < 1:
        return "<1 s"
    if seconds < 90:
        return f"~{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"~{seconds / 60:.0f} min"
    return f"~{seconds / 3600:.1f} h"


class Speed:
    """explain()'s time per (model, device) as ``a + b * pixels``: a fixed part (hooks, the
    network's set-up) and a part per pixel, from a probe at two sizes, then from each run."""

    def __init__(self) -> None:
        self._fits: dict[tuple, tuple[float, float]] = {}

    @staticmethod
    def key(net) -> tuple:
        return id(net), str(next(net.parameters()).device)

    def fit(self, net, timings: list[tuple[int, float]]) -> None:
        """Set the fit from (pixels, seconds) at two sizes; noise that makes the slope <= 0 keeps only b."""
        (p1, t1), (p2, t2) = sorted(timings)
        b = (t2 - t1) / (p2 - p1)
        a = t1 - b * p1
        if b <= 0 or a < 0:
            a, b = 0.0, t2 / p2
        self._fits[self.key(net)] = (a, b)

    def record(self, net, pixels: int, seconds: float) -> None:
        """A finished run: its time per pixel, after the fixed part, becomes the slope."""
        if seconds <= 0 or pixels <= 0:
            return
        a = self._fits.get(self.key(net), (0.0, 0.0))[0]
        self._fits[self.key(net)] = (a, max(seconds - a, seconds / 2) / pixels)

    def known(self, net) -> bool:
        return self.key(net) in self._fits

    def estimate(self, net, pixels: int) -> float | None:
        fit = self._fits.get(self.key(net))
        return None if fit is None else fit[0] + fit[1] * pixels

    @staticmethod
    def probe(net) -> list[tuple[int, float]]:
        """Time explain() of the default maps at two small sizes (call it in a worker thread)."""
        from .pipeline import explain

        out = []
        for side in PROBE_SIDES:
            image = np.random.default_rng(0).random((side, side), dtype=np.float32)
            t0 = time.perf_counter()
            explain(image, net)
            out.append((side * side, time.perf_counter() - t0))
        return out


def level_label(i: int, shape: tuple[int, ...], gib: float, seconds: float | None) -> str:
    """'1: 2048x2048, 0.3 GiB, ~39 s': short enough for the dock's combo box; the time once known."""
    where = "" if fits_in_ram(int(gib * 2**30)) else " on disk"
    when = "" if seconds is None else f", {duration(seconds)}"
    return f"{i}: {'x'.join(map(str, shape))}, {gib:.2g} GiB{where}{when}"


class Stores:
    """OME-Zarr stores for results too large for RAM; the temporary ones removed once unused."""

    def __init__(self) -> None:
        self._temp: list[Path] = []
        atexit.register(self.remove_all)

    def new(self, name: str, folder: str | Path | None) -> Path:
        """A fresh store path for a run on ``name``: in ``folder``, or in a new temporary folder."""
        if folder is None:
            root = Path(tempfile.mkdtemp(prefix="unet-gradcam-"))
            self._temp.append(root)
        else:
            root = Path(folder)
        stem = file_stem(name)
        path = root / f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}.ome.zarr"
        k = 1
        while path.exists():
            k += 1
            path = root / f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}-{k}.ome.zarr"
        return path

    def is_temporary(self, path: str | Path) -> bool:
        return any(Path(path).parent == root for root in self._temp)

    def prune(self, viewer) -> None:
        """Remove the temporary stores no layer in the viewer shows any more (re-runs replaced them)."""
        used = {mark(ly).get("store") for ly in viewer.layers} - {None}
        for root in list(self._temp):
            if not any(Path(p).parent == root for p in used):
                shutil.rmtree(root, ignore_errors=True)
                self._temp.remove(root)

    def remove_all(self) -> None:
        for root in self._temp:
            shutil.rmtree(root, ignore_errors=True)
        self._temp = []
