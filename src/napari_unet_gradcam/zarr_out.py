"""Results written to OME-Zarr tile by tile (``explain(..., out="results.ome.zarr")``).

Layout (OME-NGFF 0.5, Zarr v3), every array with a small pyramid (2x steps down to 1024 pixels
or fewer) for viewing:

* the root image: the raw maps, axes ``c, [t,] [z,] y, x``, one channel per (layer, class),
  named ``up4/nucleus``; each map's global (low, high) range in the channel's ``window`` and in
  the ``napari_unet_gradcam`` attribute (the run's record);
* ``labels/classes``: the class labels, an OME-Zarr labels image;
* ``probabilities``: the class probabilities (``c`` = classes), when asked for.

zarr and ome-zarr are the optional ``[zarr]`` extra; they are imported only here, on first use.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from .engine import labels_from_logits, probabilities_from_logits
from .errors import InputError

PYRAMID_TOP = 1024  # the pyramid stops once a level's longer side is at most this
READ_CHUNK = 256  # the chunk a viewer reads, inside shards of the run's tile
STACK_AXES = {0: [], 1: ["z"], 2: ["t", "z"]}


def require_zarr():
    """zarr and ome_zarr.writer (dask too), or one clear error naming the extra that installs them."""
    try:
        import dask.array  # noqa: F401  (pyramids and the lazy view)
        import zarr
        from ome_zarr import writer
    except ImportError:
        raise InputError(
            "Writing results with out= needs zarr, ome-zarr and dask: pip install napari-unet-gradcam[zarr]"
        ) from None
    return zarr, writer


def _levels(spatial: tuple[int, int]) -> int:
    n, side = 1, max(spatial)
    while side > PYRAMID_TOP:
        side = -(-side // 2)
        n += 1
    return n


def disk_bytes(n: int, spatial: tuple[int, int], n_maps: int, n_classes: int, probabilities: bool) -> int:
    """An upper bound on the store's size: every array uncompressed, plus a third for the pyramid."""
    per_pixel = (1 if n_classes <= 255 else 4) + 4 * n_maps + (4 * max(n_classes, 2) if probabilities else 0)
    return int(n * spatial[0] * spatial[1] * per_pixel * 4 / 3)


def check_out(path, need: int) -> Path:
    """A new store's path, refused if something is there already or the disk cannot hold ``need`` bytes."""
    path = Path(os.fspath(path))
    if path.exists():
        raise InputError(f"{path} already exists: choose a new path for out= (results never overwrite files).")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise InputError(f"The folder {parent} for out= does not exist: create it or choose another path.")
    free = shutil.disk_usage(parent).free
    if need > free:
        raise InputError(
            f"The results may need up to {need / 2**30:.1f} GiB on disk, but {parent} has only "
            f"{free / 2**30:.1f} GiB free. Choose a path on a larger disk, fewer layers or classes, or a crop."
        )
    return path


class ResultStore:
    """An OME-Zarr store being filled; :meth:`sink` gives a tiler's sink for slices ``start:stop``."""

    def __init__(
        self,
        path: Path,
        stack_shape: tuple[int, ...],
        spatial: tuple[int, int],
        keys: Sequence[tuple[str, int]],
        class_names: Sequence[str],
        n_classes: int,
        probabilities: bool,
        threshold: float,
    ) -> None:
        if len(stack_shape) > 2:
            raise InputError(
                f"out= writes 2-D images and stacks with up to two leading axes (t, z); this image's stack is "
                f"{stack_shape}. Write a slice at a time."
            )
        self.path, self.stack_shape, self.spatial = path, tuple(stack_shape), tuple(spatial)
        self.keys, self.names, self.threshold = list(keys), list(class_names), threshold
        self.n_classes, self.with_probabilities = n_classes, probabilities
        self.ranges = {k: [np.inf, -np.inf] for k in self.keys}
        self.root = self.labels = self.maps = self.probs = None

    def create(self, chunk: int) -> None:
        """The store and its level-0 arrays: each of the run's tiles writes whole shards (or chunks).

        A viewer panning at full resolution reads chunks, so large tiles are sharded into
        READ_CHUNK-sided chunks: napari then decodes a quarter-megabyte per chunk, not 4 MiB.
        """
        zarr, _ = require_zarr()
        n_classes = self.n_classes
        self.root = zarr.open_group(str(self.path), mode="w-", zarr_format=3)
        shape = (*self.stack_shape, *self.spatial)
        tile = (1,) * len(self.stack_shape) + (min(chunk, self.spatial[0]), min(chunk, self.spatial[1]))
        layout = {"chunks": tile}
        if all(side % READ_CHUNK == 0 and side > READ_CHUNK for side in tile[-2:]):
            layout = {"shards": tile, "chunks": (*tile[:-2], READ_CHUNK, READ_CHUNK)}
        per_class = {key: (1, *value) for key, value in layout.items()}
        label_type = np.uint8 if n_classes <= 255 else np.int32
        labels = self.root.require_group("labels").require_group("classes")
        self.labels = labels.create_array("0", shape=shape, dtype=label_type, fill_value=0, **layout)
        if self.keys:
            self.maps = self.root.create_array(
                "0", shape=(len(self.keys), *shape), dtype=np.float32, fill_value=0.0, **per_class
            )
        if self.with_probabilities:
            group = self.root.require_group("probabilities")
            k = max(n_classes, 2)
            self.probs = group.create_array("0", shape=(k, *shape), dtype=np.float32, fill_value=0, **per_class)

    def discard(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)

    def map_ranges(self) -> dict[tuple[str, int], tuple[float, float]]:
        """Each map's global raw (low, high), from every tile written."""
        return {k: (float(lo), float(hi)) if lo <= hi else (0.0, 0.0) for k, (lo, hi) in self.ranges.items()}

    def sink(self, start: int, stop: int) -> StoreSink:
        return StoreSink(self, [np.unravel_index(i, self.stack_shape) for i in range(start, stop)])

    # -- finishing ----------------------------------------------------------------------------------
    def finish(self, metadata: dict) -> None:
        """Pyramids, then the NGFF metadata and the run's record (with each map's raw range)."""
        _, writer = require_zarr()
        stack = STACK_AXES[len(self.stack_shape)]
        n = _levels(self.spatial)
        ranges = self.map_ranges()
        record = json.loads(
            json.dumps({**metadata, "raw_ranges": {_name(k, self.names): r for k, r in ranges.items()}}, default=str)
        )
        if self.maps is not None:
            self._pyramid(self.root, n, np.mean)
            channels = [
                {
                    "label": _name(k, self.names),
                    "active": True,
                    "color": "FFFFFF",
                    "window": {"min": lo, "max": hi, "start": lo, "end": hi},
                }
                for k, (lo, hi) in ranges.items()
            ]
            writer.write_multiscales_metadata(
                self.root,
                _datasets(n, len(stack) + 1),
                axes=["c", *stack, "y", "x"],
                name="maps",
                metadata={"omero": {"channels": channels}},
            )
        labels = self.root["labels"]
        self._pyramid(labels["classes"], n, None)
        writer.write_multiscales_metadata(
            labels["classes"], _datasets(n, len(stack)), axes=[*stack, "y", "x"], name="classes"
        )
        writer.write_label_metadata(
            labels,
            "classes",
            properties=[{"label-value": i, "class": nm} for i, nm in enumerate(self.names)],
            source={"image": "../../"},  # the maps they segment
        )
        if self.probs is not None:
            group = self.root["probabilities"]
            self._pyramid(group, n, np.mean)
            writer.write_multiscales_metadata(
                group, _datasets(n, len(stack) + 1), axes=["c", *stack, "y", "x"], name="probabilities"
            )
        self.root.attrs["napari_unet_gradcam"] = record

    def _pyramid(self, group, n: int, reduce) -> None:
        """Levels 1..n-1 from the level below: 2x2 means (maps, probabilities) or every other pixel (labels)."""
        import dask.array as da

        for level in range(1, n):
            src = da.from_zarr(group[str(level - 1)])
            if reduce is None:
                down = src[..., ::2, ::2]
            else:
                axes = {src.ndim - 2: 2, src.ndim - 1: 2}
                padded = da.pad(src, [(0, 0)] * (src.ndim - 2) + [(0, s % 2) for s in src.shape[-2:]], mode="edge")
                down = da.coarsen(reduce, padded, axes, trim_excess=True).astype(np.float32)
            chunks = group["0"].chunks
            target = group.create_array(str(level), shape=down.shape, chunks=chunks, dtype=down.dtype, fill_value=0)
            da.store(down.rechunk(chunks), target, lock=False)

    # -- the lazy view --------------------------------------------------------------------------------
    def lazy(self) -> tuple:
        """Labels (int32), probabilities (or None) and raw maps by key, as dask arrays over the store."""
        import dask.array as da

        labels = da.from_zarr(self.root["labels/classes/0"]).astype(np.int32)
        probs = None if self.probs is None else da.from_zarr(self.root["probabilities/0"])
        maps = {}
        if self.maps is not None:
            stack = da.from_zarr(self.root["0"])
            maps = {k: stack[i] for i, k in enumerate(self.keys)}
        return labels, probs, maps


def _name(key: tuple[str, int], names: Sequence[str]) -> str:
    layer, cls = key
    return f"{layer}/{names[cls] if cls < len(names) else cls}"


def _datasets(n: int, lead: int) -> list[dict]:
    return [
        {"path": str(i), "coordinateTransformations": [{"type": "scale", "scale": [1.0] * lead + [2.0**i, 2.0**i]}]}
        for i in range(n)
    ]


class StoreSink:
    """A tiler's sink (``tiling.TileSink``) writing one batch of slices into a :class:`ResultStore`."""

    def __init__(self, store: ResultStore, index: list[tuple]) -> None:
        self.store, self.index = store, [tuple(int(i) for i in ix) for ix in index]

    def put_logits(self, core, logits: torch.Tensor) -> None:
        y0, y1, x0, x1 = core
        labels = labels_from_logits(logits, self.store.threshold).cpu().numpy()
        probs = probabilities_from_logits(logits).cpu().numpy() if self.store.probs is not None else None
        for b, ix in enumerate(self.index):
            self.store.labels[(*ix, slice(y0, y1), slice(x0, x1))] = labels[b]
            if probs is not None:
                self.store.probs[(slice(None), *ix, slice(y0, y1), slice(x0, x1))] = probs[b]

    def labels(self, ext) -> torch.Tensor:
        y0, y1, x0, x1 = ext
        parts = [np.asarray(self.store.labels[(*ix, slice(y0, y1), slice(x0, x1))]) for ix in self.index]
        return torch.from_numpy(np.stack(parts).astype(np.int64))

    def put_maps(self, core, maps: Mapping) -> None:
        y0, y1, x0, x1 = core
        for key, m in maps.items():
            c = self.store.keys.index(key)
            r = self.store.ranges[key]
            r[0], r[1] = min(r[0], float(m.min())), max(r[1], float(m.max()))
            for b, ix in enumerate(self.index):
                self.store.maps[(c, *ix, slice(y0, y1), slice(x0, x1))] = m[b]


def open_levels(path) -> tuple[list, list]:
    """A finished store's pyramids as dask arrays, finest first: (labels levels, maps levels).

    Each maps level is ``(c, ..., y, x)`` in the store's channel order; ``[]`` when it holds no maps.
    napari shows a list of levels as one multiscale layer and reads only what is on screen.
    """
    import dask.array as da

    zarr, _ = require_zarr()
    root = zarr.open_group(str(path), mode="r")

    def levels(group) -> list:
        n = len(group.attrs["ome"]["multiscales"][0]["datasets"]) if "ome" in group.attrs else 1
        return [da.from_zarr(group[str(i)]) for i in range(n)]

    labels = [level.astype(np.int32) for level in levels(root["labels/classes"])]
    maps = levels(root) if "0" in root else []
    return labels, maps
