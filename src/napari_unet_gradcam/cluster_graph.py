"""One large image explained on a dask cluster: the block passes as a graph, results into OME-Zarr.

Grad-CAM's channel weights are global, and every method's statistics are spatial sums
(``blocks.py``), so one image becomes up to three waves of block tasks with a small reduction
between them, per slice:

1. ``forward_block`` on every block: its core's labels (and probabilities) go into the store; it
   returns the activation sums;
2. the slice's sums, added in a tree (a few hundred floats per layer), then ``gradient_block``
   on every block, reading the whole image's labels over its extent back from the store;
3. the sums again, then ``maps_block`` with the slice's global channel weights: each core's
   maps go into the store.

Blocks are the sequential tiler's tiles (``tiling.tile_boxes``) and the store is chunked by the
tile, so each task writes whole chunks and no two tasks write one chunk. Tasks carry the model's
spec, the image (a zarr array pickles as its path) and the store's path, never the model.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import run_arguments as args
from ._version import __version__
from .blocks import Sums, channel_weights, forward_block, gradient_block, maps_block
from .blocks import passes as block_passes
from .cluster import ModelSpec, StopFlag, as_completed_with_stop, stop_check, worker_model
from .destination import class_names, lazy_normalized
from .engine import Job, eval_mode, model_lock, resolve_modules
from .errors import Cancelled, InputError
from .image import layout
from .methods import get_method
from .normalize import MODES as NORMALIZE_MODES
from .normalize import scales
from .pipeline import DEFAULT_THRESHOLD, ExplainResult, _class_indices, model_identity
from .pipeline import _check_finite as check_finite
from .source import LazyImage
from .tiling import round_halo, tile_boxes

DEFAULT_TILE = 1024
FAN_IN = 8  # partial sums added per reduction task


@dataclass
class Part:
    """What block tasks return and reductions add: statistic sums and each map's (low, high) so far."""

    sums: Sums = field(default_factory=Sums)
    ranges: dict = field(default_factory=dict)

    def __add__(self, other: Part) -> Part:
        ranges = dict(self.ranges)
        for k, (lo, hi) in other.ranges.items():
            a, b = ranges.get(k, (lo, hi))
            ranges[k] = (min(a, lo), max(b, hi))
        return Part(self.sums + other.sums, ranges)


@dataclass(frozen=True)
class BlockRun:
    """Everything a block task needs; pickles to a few kB (the image as its zarr path, the store as its path)."""

    spec: ModelSpec
    src: LazyImage
    store: object  # zarr_out.ResultStore
    layers: tuple[str, ...]
    classes: tuple[int, ...]
    method: str
    target: str
    threshold: float
    stop: str | None = None

    def job(self) -> Job:
        net = worker_model(self.spec)
        modules = resolve_modules(net, self.layers)
        return Job(net, modules, list(self.classes), get_method(self.method), self.target, self.threshold)

    def read(self, job: Job, i: int, ext) -> torch.Tensor:
        if stop_check(self.stop)():
            raise Cancelled("The run was cancelled; the store was removed.")
        device = next(job.net.parameters()).device
        return torch.from_numpy(np.ascontiguousarray(self.src.read(i, i + 1, ext))).to(device)

    def put_maps(self, i: int, core, maps: dict) -> Part:
        check_finite(self.src, np.zeros(1, np.float32), maps)
        self.store.sink(i, i + 1).put_maps(core, maps)
        return Part(ranges={k: (float(m.min()), float(m.max())) for k, m in maps.items()})


def forward_task(run: BlockRun, i: int, core, ext) -> Part:
    job = run.job()
    x = run.read(job, i, ext)
    with model_lock(job.net), eval_mode(job.net):
        logits, sums = forward_block(job, x, core, ext)
    check_finite(run.src, logits.cpu().numpy(), {})
    run.store.sink(i, i + 1).put_logits(core, logits)
    return Part(sums)


def gradient_task(run: BlockRun, i: int, core, ext, before: Part) -> Part:
    job = run.job()
    x = run.read(job, i, ext)
    labels = run.store.sink(i, i + 1).labels(ext) if job.target == "predicted" else None
    with model_lock(job.net), eval_mode(job.net):
        sums, maps = gradient_block(job, x, core, ext, before.sums, labels)
    return Part(sums) + run.put_maps(i, core, maps)


def maps_task(run: BlockRun, i: int, core, ext, total: Part) -> Part:
    job = run.job()
    x = run.read(job, i, ext)
    with model_lock(job.net), eval_mode(job.net):
        maps = maps_block(job, x, core, ext, channel_weights(job, total.sums))
    return run.put_maps(i, core, maps)


def total(parts: Sequence[Part]) -> Part:
    return functools.reduce(lambda a, b: a + b, parts, Part())


def tree_sum(client, parts: list, fan_in: int = FAN_IN):
    """One future adding ``parts`` (futures) in a tree of tasks of ``fan_in`` each."""
    while len(parts) > 1:
        parts = [client.submit(total, parts[j : j + fan_in], pure=False) for j in range(0, len(parts), fan_in)]
    return parts[0] if parts else client.submit(Part, pure=False)


def model_facts(spec: ModelSpec, layers: tuple[str, ...], classes) -> dict:
    """On a worker: the checks explain() makes of layers and classes, and what the client needs of the model."""
    net = worker_model(spec)
    resolve_modules(net, layers)
    args.explained_modules(net, layers)
    return {
        "n_channels": int(net.n_channels),
        "n_classes": int(net.n_classes),
        "class_names": class_names(net),
        "classes": _class_indices(net, classes),
        "preprocess": getattr(net, "preprocess", None),
        "model": model_identity(net),
    }


def explain_on_cluster(
    client,
    image,
    spec: ModelSpec,
    out: str | os.PathLike,
    layers: Sequence[str] = ("up1", "up2", "up3", "up4"),
    classes: Sequence[int | str] | None = None,
    method: str = "gradcam",
    target: str = "predicted",
    preprocess: str | dict = "auto",
    normalize: str = "per-map",
    tile_size: int = DEFAULT_TILE,
    halo: int = 64,
    *,
    channel_axis: int | None = None,
    rgb: bool | None = None,
    repeat_channels: bool = False,
    threshold: float | None = None,
    probabilities: bool = False,
    progress=None,
):
    """Explain one image on the cluster behind ``client``, block by block, into the new OME-Zarr ``out``.

    ``image``: a zarr array (or anything sliceable that pickles small and every worker can read; a
    NumPy array is sent with each task, so only for small images). The store is laid out as
    ``explain(..., out=)`` writes it, and the result is the same: an ExplainResult of dask arrays
    over the store. ``progress(done, total)`` counts block tasks. On any error or Ctrl-C the
    running tasks stop at their next block and the store is removed.
    """
    from .zarr_out import ResultStore, check_out, disk_bytes, require_zarr

    t0 = time.perf_counter()
    require_zarr()
    layers = args.layers(layers)
    m = get_method(method)
    if normalize not in NORMALIZE_MODES:
        raise InputError(f"Unknown normalize {normalize!r}: choose one of {', '.join(NORMALIZE_MODES)}.")
    if target not in ("predicted", "image"):
        raise InputError(f"On a cluster the target is 'predicted' or 'image'; got {target!r}.")
    tile = max(16, (args.tile_size(tile_size) or DEFAULT_TILE) // 16 * 16)
    halo = round_halo(args.halo(halo))
    facts = client.submit(model_facts, spec, layers, classes, pure=False).result()
    t = DEFAULT_THRESHOLD if threshold is None else float(threshold)
    notes: list[str] = []
    axis = args.channel_axis(channel_axis)
    lay = layout(image.shape, image.dtype, facts["n_channels"], axis, rgb, repeat_channels, notes)
    src = LazyImage(image, lay, notes)
    if min(lay.spatial_shape) < 16:
        raise InputError(f"The image is {lay.spatial_shape} pixels; below 16 a side, use explain() instead.")
    src.resolve(preprocess, facts["preprocess"])
    keys = [(ly, c) for ly in layers for c in facts["classes"]]
    n_classes, names = facts["n_classes"], facts["class_names"]
    need = disk_bytes(src.n_slices, src.size, len(keys), n_classes, probabilities)
    store = ResultStore(
        Path(check_out(out, need)).resolve(), src.stack_shape, src.size, keys, names, n_classes, probabilities, t
    )
    store.create(tile)
    stop = StopFlag(client)
    run = BlockRun(spec, src, store, layers, tuple(facts["classes"]), m.name, target, t, stop.name)
    try:
        totals = _submit(client, run, m, bool(keys), tile, halo, stop, progress)
        ranges = total(totals).ranges
        for k in keys:
            store.ranges[k] = list(ranges.get(k, (0.0, 0.0)))
        store.finish({"model": facts["model"], "version": __version__, "preprocess": src.preprocess})
    except BaseException:
        store.discard()
        raise
    labels, probs, raw = store.lazy()
    scale = scales(store.map_ranges(), normalize)
    cams = {k: lazy_normalized(v, scale[k], normalize) for k, v in raw.items()}
    metadata = {
        "method": m.name,
        "method_title": m.title,
        "target": target,
        "layers": list(layers),
        "classes": [{"index": c, "name": names[c]} for c in facts["classes"]],
        "class_names": names,
        "preprocess": src.preprocess,
        "normalize": normalize,
        "ranges": {f"{ly}/{c}": r for (ly, c), r in scale.items()},
        "threshold": t if n_classes == 1 else None,
        "tile_size": tile,
        "halo": halo,
        "model": facts["model"],
        "version": __version__,
        "notes": notes,
        "out": str(store.path),
        "cluster": {"workers": len(client.scheduler_info().get("workers", {}))},
        "seconds": round(time.perf_counter() - t0, 3),
    }
    return ExplainResult(labels, probs, cams, metadata)


def _submit(client, run: BlockRun, method, explaining: bool, tile: int, halo: int, stop: StopFlag, progress) -> list:
    """Submit every slice's waves of block tasks and reductions; wait for them; each slice's final Part."""
    todo = block_passes(method, explaining)
    boxes = list(tile_boxes(*run.src.size, tile, halo))
    blocks, finals = {}, []
    for i in range(run.src.n_slices):
        wave = [client.submit(forward_task, run, i, core, ext, pure=False) for core, ext in boxes]
        blocks.update({f: i for f in wave})
        so_far = tree_sum(client, wave)
        for name, task in (("gradients", gradient_task), ("maps", maps_task)):
            if name in todo:
                wave = [client.submit(task, run, i, core, ext, so_far, pure=False) for core, ext in boxes]
                blocks.update({f: i for f in wave})
                so_far = tree_sum(client, [so_far, *wave])
        finals.append(so_far)
    for done, (_, fut) in enumerate(as_completed_with_stop(client, blocks, stop), 1):
        fut.result()  # a block's error, raised here as it was raised on its worker
        if progress is not None:
            progress(done, len(blocks))
    return client.gather(finals)
