"""The public pipeline: ``predict()`` and ``explain()`` on images of any layout."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch import nn

from . import run_arguments as args
from ._version import __version__
from .destination import Destination, class_names, destination, lazy_normalized
from .engine import (
    Job,
    eval_mode,
    explain_whole,
    labels_from_logits,
    model_lock,
    n_outputs,
    resolve_modules,
    steps_per_pass,
)
from .errors import Cancelled, InputError
from .families import check_image_size, default_layers, spatial_dims
from .image import Prepared, network_size, pad_to, shrink_mask, upsample
from .instances import classes_for_instances, instance_labels
from .methods import Method, get_method
from .model import DECODER_LAYERS
from .normalize import MODES as NORMALIZE_MODES
from .normalize import normalize_maps, scales
from .ood import check_image
from .run_plan import plan_run
from .source import LazyImage, open_source
from .tiling import ArraySink, explain_tiled, n_passes, round_halo
from .volume import explain_volume, predict_volume

Source = Prepared | LazyImage

ProgressCallback = Callable[[int, int], None]
DEFAULT_HALO = 64
DEFAULT_THRESHOLD = 0.5  # upstream predict.py's --mask-threshold
STORE_CHUNK = 1024  # out='s chunk side when whole slices fit (tiled runs use the tile)


@dataclass
class ExplainResult:
    """Everything one run produced; every array has the input's stack and spatial shape."""

    labels: np.ndarray
    probabilities: np.ndarray  # (classes, *stack, Y, X) float32
    cams: dict[tuple[str, int], np.ndarray]
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def class_names(self) -> list[str]:
        """Every class of the model, by index."""
        return list(self.metadata.get("class_names", []))

    @property
    def layers(self) -> list[str]:
        """The explained layers, in the order asked for."""
        return list(dict.fromkeys(k[0] for k in self.cams))

    @property
    def classes(self) -> list[int]:
        """The explained class indices, in the order asked for."""
        return list(dict.fromkeys(k[1] for k in self.cams))

    def stacked(self) -> np.ndarray:
        """Every map in one array: (layer, class, *stack, Y, X), in :attr:`layers` and :attr:`classes` order."""
        if not self.cams:
            return np.zeros((0, 0, *self.labels.shape), np.float32)
        return np.stack([np.stack([self.cams[ly, c] for c in self.classes]) for ly in self.layers])

    def to_json(self) -> str:
        """The run's record (method, layers, classes, preprocessing, ranges, model, version...) as JSON."""
        return json.dumps(self.metadata, indent=2, default=str)

    def instances(self) -> np.ndarray:
        """One label per object (nuclei split along the boundary class), the labels' shape.

        Computed on first use and kept.
        """
        cached = self.__dict__.get("_instances")
        if cached is None:
            interior, boundary = classes_for_instances(self.metadata["class_names"])
            cached = self.__dict__["_instances"] = instance_labels(self.labels, interior, boundary)
        return cached


def _is_cancelled(cancel) -> bool:
    if cancel is None:
        return False
    if hasattr(cancel, "is_set"):
        return bool(cancel.is_set())
    return bool(cancel())


def progress_steps(total: int, progress: ProgressCallback | None, cancel, what: str = "run") -> Callable[..., None]:
    """``step(count=1)``: report ``(done, total)`` and raise Cancelled when asked; checked once now too."""
    if _is_cancelled(cancel):
        raise Cancelled(f"The {what} was cancelled before it started.")
    done = 0

    def step(count: int = 1) -> None:
        nonlocal done
        done += count
        if progress is not None:
            progress(done, total)
        if _is_cancelled(cancel):
            raise Cancelled(f"The {what} was cancelled; no results were kept.")

    return step


def _class_indices(net: nn.Module, classes) -> list[int]:
    names = list(getattr(net, "class_names", None) or [])
    n = n_outputs(net)
    if classes is None:
        return list(range(n))
    if isinstance(classes, (int, str)):
        classes = [classes]
    out = []
    for c in classes:
        if isinstance(c, str) and c in names:
            out.append(names.index(c))
        elif isinstance(c, (int, np.integer)) and not isinstance(c, bool) and 0 <= int(c) < n:
            out.append(int(c))
        else:
            known = ", ".join(f"{i}={nm}" for i, nm in enumerate(names)) or f"0..{n - 1}"
            raise InputError(f"Unknown class {c!r}: this model's classes are {known}.")
    return list(dict.fromkeys(out))


def _target_mask(target, prep: Prepared, scaled: tuple[int, int]) -> np.ndarray | str:
    """'predicted'/'image' as they are; a mask or (y, x) pixel as (N, h, w) bool on the model's grid."""
    if isinstance(target, str):
        if target not in ("predicted", "image"):
            raise InputError(f"Unknown target {target!r}: use 'predicted', 'image', a boolean mask or a (y, x) pixel.")
        return target
    H, W = prep.spatial_shape
    if isinstance(target, tuple) and len(target) == 2 and all(isinstance(v, (int, np.integer)) for v in target):
        y, x = int(target[0]), int(target[1])
        if not (0 <= y < H and 0 <= x < W):
            raise InputError(f"Target pixel {(y, x)} lies outside the image's {H}x{W} pixels.")
        mask = np.zeros((H, W), bool)
        mask[y, x] = True
    else:
        mask = np.asarray(target)
        if mask.shape[-2:] != (H, W) or mask.shape[:-2] not in ((), prep.stack_shape):
            raise InputError(
                f"The target mask has shape {mask.shape}; it must be {(H, W)} or {prep.stack_shape + (H, W)} "
                "to match the image."
            )
        mask = mask != 0
    mask = np.broadcast_to(mask, prep.stack_shape + (H, W)).reshape(-1, H, W)
    return np.ascontiguousarray(shrink_mask(mask, scaled))


def _pad_mask(mask: np.ndarray, hp: int, wp: int) -> np.ndarray:
    return np.pad(mask, ((0, 0), (0, hp - mask.shape[1]), (0, wp - mask.shape[2])))


def _run(
    net: nn.Module,
    src: Source,
    layers: Sequence[str],
    classes: Sequence[int],
    method: Method,
    target,
    tile_size: int | None,
    halo: int,
    batch_size: int | None,
    threshold: float,
    progress: ProgressCallback | None,
    cancel,
    where: Destination,
) -> tuple[np.ndarray | None, dict[tuple[str, int], np.ndarray], int | None]:
    """Logits (N, K, h, w) and maps (N, h, w) on the model's (unpadded) grid, and the tile used.

    With ``where.store``, the results go there instead, tile by tile, and logits and maps are not kept.
    """
    work_budget, store = where.work_budget, where.store
    device = next(net.parameters()).device
    modules = resolve_modules(net, layers)
    explaining = bool(modules) and bool(classes)
    n, (h, w) = src.n_slices, src.size
    check_image_size(net, (h, w))
    width = int(getattr(net, "width", 64))
    passes = n_passes(method, explaining)
    plan = plan_run(
        n, (h, w), network_size(h, w), width, explaining, passes, device, tile_size, halo, batch_size, work_budget
    )
    job = Job(net, modules, classes, method, target, threshold)
    # Whole slices report every forward pass and every class, so a single 2-D image moves too.
    total = plan.steps if plan.tile is not None else -(-n // plan.batch) * steps_per_pass(job)
    step = progress_steps(total, progress, cancel)
    keys = [(ly, c) for ly in modules for c in classes]
    logits = maps = None
    if store is None:
        logits = np.empty((n, int(net.n_classes), h, w), np.float32)
        maps = {k: np.empty((n, h, w), np.float32) for k in keys}

        def sinks(s: int, e: int) -> ArraySink:
            return ArraySink(logits[s:e], {k: v[s:e] for k, v in maps.items()}, threshold)
    else:
        store.create(plan.tile or STORE_CHUNK)
        sinks = store.sink
    try:
        with model_lock(net), eval_mode(net):
            for s in range(0, n, plan.batch):
                e = min(n, s + plan.batch)
                _batch(job, src, s, e, plan, sinks(s, e), step, device)
    except BaseException:
        if store is not None:
            store.discard()  # a partial store is no result, and its path was new
        raise
    return logits, maps, plan.tile


def _batch(job: Job, src: Source, s: int, e: int, plan, sink, step, device: torch.device) -> None:
    """Slices ``s:e`` of ``src`` through one pass (whole slices) or a tiled run, into ``sink``."""
    if isinstance(job.target, np.ndarray):
        job = replace(job, target=torch.from_numpy(_pad_mask(job.target[s:e], *plan.fed)).to(device))
    h, w = src.size
    if plan.tile is not None:

        def read(box):
            return torch.from_numpy(np.ascontiguousarray(src.read(s, e, box))).to(device)

        explain_tiled(job, read, (h, w), plan.tile, plan.halo, step, _Checked(sink, src))
        return
    if isinstance(sink, ArraySink):
        logits, maps = sink.logits_out, sink.maps_out
    else:
        logits = np.empty((e - s, int(job.net.n_classes), h, w), np.float32)
        maps = {(ly, c): np.empty((e - s, h, w), np.float32) for ly in job.modules for c in job.classes}
    x = torch.from_numpy(pad_to(src.read(s, e), plan.fed)).to(device)
    explain_whole(job, x, logits, maps, on_step=step)
    _check_finite(src, logits, maps)
    if not isinstance(sink, ArraySink):
        sink.put_logits((0, h, 0, w), torch.from_numpy(logits))
        sink.put_maps((0, h, 0, w), maps)


class _Checked:
    """A sink that refuses non-finite results (an image far outside the model's range) as they arrive."""

    def __init__(self, sink, src: Source) -> None:
        self.sink, self.src = sink, src

    def put_logits(self, core, logits: torch.Tensor) -> None:
        _check_finite(self.src, logits.cpu().numpy(), {})
        self.sink.put_logits(core, logits)

    def labels(self, ext) -> torch.Tensor:
        return self.sink.labels(ext)

    def put_maps(self, core, maps) -> None:
        _check_finite(self.src, np.zeros(1, np.float32), maps)
        self.sink.put_maps(core, maps)


def _check_finite(src: Source, logits: np.ndarray, maps: dict) -> None:
    if np.isfinite(logits).all() and all(np.isfinite(m).all() for m in maps.values()):
        return
    lo, hi = src.span()
    raise InputError(
        f"The network produced non-finite values: after preprocessing ({src.preprocess['mode']}) the "
        f"image spans {lo:.3g} to {hi:.3g}, far outside what the model expects. "
        "Use preprocess='percentile' or rescale the image."
    )


def _decide(logits: torch.Tensor, threshold: float, with_probabilities: bool) -> tuple[np.ndarray, torch.Tensor | None]:
    """Labels and probabilities of full-size logits, as upstream's predict.py decides them.

    Both come from the same upsampled logits, so a label is always its pixel's most probable
    class (or, for a one-channel model, the foreground where its probability exceeds ``threshold``).
    """
    if logits.shape[1] == 1:
        p = torch.sigmoid(logits[:, 0])
        probs = torch.stack([1 - p, p], 1) if with_probabilities else None
        return (p > threshold).numpy().astype(np.int32), probs
    labels = labels_from_logits(logits).numpy().astype(np.int32)
    return labels, torch.softmax(logits, 1) if with_probabilities else None


def _finish(
    prep: Prepared, logits: np.ndarray, maps: dict, threshold: float, with_probabilities: bool
) -> tuple[np.ndarray, np.ndarray | None, dict]:
    """Model-grid logits and maps to the image's grid: logits upsampled (bilinear) before the decision.

    Returns labels (*stack, H, W), probabilities (K, *stack, H, W) or None, and the maps.
    """
    H, W = prep.spatial_shape
    n, k = logits.shape[:2]
    labels = np.empty((n, H, W), np.int32)
    probs = np.empty((max(k, 2), n, H, W), np.float32) if with_probabilities else None
    same = logits.shape[-2:] == (H, W)  # scale 1: the maps are already on the image's grid
    out_maps = maps if same else {key: np.empty((n, H, W), np.float32) for key in maps}
    for i in range(n):  # one slice at a time: full-size logits of a whole stack need not fit
        lab, p = _decide(upsample(torch.from_numpy(logits[i : i + 1]), (H, W)), threshold, probs is not None)
        labels[i] = lab[0]
        if p is not None:
            probs[:, i] = p[0].numpy()
        for key, m in () if same else maps.items():
            out_maps[key][i] = upsample(torch.from_numpy(m[i : i + 1, None]), (H, W))[0, 0].numpy()
    stack = prep.stack_shape
    return (
        labels.reshape(*stack, H, W),
        None if probs is None else probs.reshape(-1, *stack, H, W),
        {key: v.reshape(*stack, H, W) for key, v in out_maps.items()},
    )


def _threshold(net: nn.Module, threshold: float | None) -> float:
    if threshold is None:
        return DEFAULT_THRESHOLD
    if int(net.n_classes) != 1:
        raise InputError(
            f"threshold applies to one-channel (sigmoid) models; this model has {net.n_classes} output "
            "channels and labels each pixel with its most probable class. Leave threshold unset."
        )
    try:
        t = float(threshold)
    except (TypeError, ValueError):
        t = float("nan")
    if not 0.0 <= t < 1.0:
        raise InputError(f"threshold must be a probability in [0, 1); got {threshold!r}.")
    return t


def _volume_in_ram(out) -> None:
    if out is not None:
        raise InputError(
            "out= writes 2-D results to OME-Zarr; a 3-D network's results are returned in memory: "
            "leave out= unset, or explain the volume in parts."
        )


def predict(
    image,
    net: nn.Module,
    preprocess: str | dict = "auto",
    tile_size: int | None = None,
    *,
    channel_axis: int | None = None,
    rgb: bool | None = None,
    repeat_channels: bool = False,
    scale: float = 1.0,
    threshold: float | None = None,
    halo: int = DEFAULT_HALO,
    batch_size: int | None = None,
    progress: ProgressCallback | None = None,
    cancel=None,
    memory_budget: int | None = None,
    out: str | os.PathLike | None = None,
) -> np.ndarray:
    """Class-index labels (int32) with the image's stack and spatial shape.

    As upstream's predict.py: the image is resized by ``scale`` (PIL bicubic, ``int(scale * size)``),
    the logits are upsampled (bilinear) to the full size, then labelled by argmax, or for a
    one-channel model by sigmoid > ``threshold`` (default 0.5).

    ``image`` may be lazy (dask, zarr, a napari multiscale level, a memory map): it is read tile by
    tile. ``memory_budget`` (bytes) replaces the free RAM as the limit; with ``out`` (a new
    ``.ome.zarr`` path, the ``[zarr]`` extra) the labels are written there and returned as a dask
    array over the store. See docs/large-data.md.
    """
    net = args.model(net)
    tile_size, batch_size, halo = args.tile_size(tile_size), args.batch_size(batch_size), round_halo(args.halo(halo))
    t = _threshold(net, threshold)
    if spatial_dims(net) == 3:
        _volume_in_ram(out)
        volume_args = {"tile_size": tile_size, "halo": halo, "scale": scale, "threshold": t}
        volume_args["repeat_channels"] = repeat_channels
        return predict_volume(
            args.image(image), net, preprocess, channel_axis=args.channel_axis(channel_axis), progress=progress,
            cancel=cancel, **volume_args,
        )  # fmt: skip
    where, check = destination(net, 0, False, args.memory_budget(memory_budget), out, [], t)
    src = open_source(
        args.image(image), net, preprocess, args.channel_axis(channel_axis), rgb, repeat_channels, scale, check
    )
    gradcam = get_method("gradcam")
    logits, _, _ = _run(net, src, (), (), gradcam, "predicted", tile_size, halo, batch_size, t, progress, cancel, where)
    if where.store is not None:
        where.store.finish({"model": model_identity(net), "version": __version__, "preprocess": src.preprocess})
        return where.store.lazy()[0]
    return _finish(src, logits, {}, t, with_probabilities=False)[0]


def explain(
    image,
    net: nn.Module,
    layers: Sequence[str] = DECODER_LAYERS,
    classes: Sequence[int | str] | None = None,
    method: str = "gradcam",
    target: str | np.ndarray | tuple[int, int] = "predicted",
    preprocess: str | dict = "auto",
    normalize: str = "per-map",
    tile_size: int | None = None,
    *,
    channel_axis: int | None = None,
    rgb: bool | None = None,
    repeat_channels: bool = False,
    scale: float = 1.0,
    threshold: float | None = None,
    halo: int = DEFAULT_HALO,
    batch_size: int | None = None,
    progress: ProgressCallback | None = None,
    cancel=None,
    memory_budget: int | None = None,
    out: str | os.PathLike | None = None,
    probabilities: bool = False,
) -> ExplainResult:
    """Segment ``image`` and explain every (layer, class) pair from one forward pass per batch.

    ``target`` fixes the pixels whose class logits are summed into each class's score:
    ``"predicted"`` (pixels predicted as that class), ``"image"`` (all pixels), a boolean mask
    with the image's shape, or a ``(y, x)`` pixel. ``normalize`` is ``"per-map"`` (min-max per
    map), ``"shared"`` (one scale for every map of the run) or ``"none"`` (raw values).
    ``scale`` and ``threshold`` are upstream predict.py's (see :func:`predict`).

    Lazy images, ``memory_budget`` and ``out`` as in :func:`predict`. With ``out``, the maps are
    stored raw (their ranges in the store's attributes), the probabilities only when
    ``probabilities=True``, and the result holds dask arrays over the store, the maps
    normalised lazily as ``normalize`` says. See docs/large-data.md.
    """
    t0 = time.perf_counter()
    net = args.model(net)
    layers = default_layers(net, args.layers(layers))
    tile_size, batch_size, halo = args.tile_size(tile_size), args.batch_size(batch_size), round_halo(args.halo(halo))
    m = get_method(method)
    class_idx = _class_indices(net, classes)
    if normalize not in NORMALIZE_MODES:  # checked before the work, not after it
        raise InputError(f"Unknown normalize {normalize!r}: choose one of {', '.join(NORMALIZE_MODES)}.")
    resolve_modules(net, layers)
    args.explained_modules(net, layers)
    t = _threshold(net, threshold)
    image = args.image(image)
    if spatial_dims(net) == 3:
        _volume_in_ram(out)
        volume_args = {"tile_size": tile_size, "halo": halo, "scale": scale, "threshold": t}
        volume_args["repeat_channels"] = repeat_channels
        return explain_volume(
            image, net, layers, class_idx, m, target, preprocess, normalize,
            channel_axis=args.channel_axis(channel_axis), progress=progress, cancel=cancel, **volume_args,
        )  # fmt: skip
    keys = [(ly, c) for ly in layers for c in class_idx]
    where, check = destination(
        net, len(keys), out is None or probabilities, args.memory_budget(memory_budget), out, keys, t
    )
    src = open_source(image, net, preprocess, args.channel_axis(channel_axis), rgb, repeat_channels, scale, check)
    tgt = _target_mask(target, src, src.size)
    logits, raw, tile = _run(
        net, src, layers, class_idx, m, tgt, tile_size, halo, batch_size, t, progress, cancel, where
    )
    if where.store is None:
        labels, probs, cams = _finish(src, logits, raw, t, with_probabilities=True)
        del logits, raw
        ranges = normalize_maps(cams, normalize)
    else:
        labels, probs, raw = where.store.lazy()
        ranges = scales(where.store.map_ranges(), normalize)
        cams = {k: lazy_normalized(v, ranges[k], normalize) for k, v in raw.items()}
    names = class_names(net)
    metadata = run_metadata(m, target, layers, class_idx, names, src.preprocess, normalize, ranges, t, net)
    metadata.update(
        scale=scale,
        tile_size=tile,
        halo=halo if tile else None,
        notes=list(src.notes),
        out=None if where.store is None else str(where.store.path),
        # A lazy input is not read whole for a warning about its look (docs/large-data.md).
        ood_warnings=check_image(image, labels, names, scale=scale) if isinstance(src, Prepared) else [],
        seconds=round(time.perf_counter() - t0, 3),
    )
    if where.store is not None:
        where.store.finish(metadata)
    return ExplainResult(labels, probs, cams, metadata)


def run_metadata(
    m: Method, target, layers, class_idx, names, preprocess, normalize, ranges, threshold, net, point="pixel"
) -> dict:
    """The metadata every explain() result carries, 2-D or 3-D (docs/images.md lists the keys)."""
    return {
        "method": m.name,
        "method_title": m.title,
        "target": target if isinstance(target, str) else (point if isinstance(target, tuple) else "mask"),
        "layers": list(layers),
        "classes": [{"index": c, "name": names[c]} for c in class_idx],
        "class_names": names,
        "preprocess": preprocess,
        "normalize": normalize,
        "ranges": {f"{ly}/{c}": r for (ly, c), r in ranges.items()},
        "threshold": threshold if int(net.n_classes) == 1 else None,
        "model": model_identity(net),
        "version": __version__,
    }


def model_identity(net: nn.Module) -> dict:
    identity = {
        "class": type(net).__name__,
        "sha256": getattr(net, "checkpoint_sha256", None),
        "path": getattr(net, "checkpoint_path", None),
        "n_channels": int(net.n_channels),
        "n_classes": int(net.n_classes),
    }
    if hasattr(net, "bilinear"):  # Pytorch-UNet's own knobs (upstream's class has no width: it is 64)
        identity.update(width=int(getattr(net, "width", 64)), bilinear=bool(net.bilinear))
    return identity
