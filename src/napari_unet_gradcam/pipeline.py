"""The public pipeline: ``predict()`` and ``explain()`` on images of any layout."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch import nn

from . import run_arguments as args
from ._version import __version__
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
from .image import Prepared, network_size, pad_to, prepare, shrink_mask, upsample
from .instances import classes_for_instances, instance_labels
from .methods import Method, get_method
from .model import DECODER_LAYERS
from .normalize import MODES as NORMALIZE_MODES
from .normalize import normalize_maps
from .ood import check_image
from .run_plan import check_result_size, plan_run
from .tiling import explain_tiled, n_passes, round_halo

ProgressCallback = Callable[[int, int], None]
DEFAULT_HALO = 64
DEFAULT_THRESHOLD = 0.5  # upstream predict.py's --mask-threshold


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
    prep: Prepared,
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
) -> tuple[np.ndarray, dict[tuple[str, int], np.ndarray], int | None]:
    """Logits (N, K, h, w) and maps (N, h, w) on the model's (unpadded) grid, and the tile used."""
    device = next(net.parameters()).device
    modules = resolve_modules(net, layers)
    explaining = bool(modules) and bool(classes)
    n, _, h, w = prep.batch.shape
    width = int(getattr(net, "width", 64))
    passes = n_passes(method, explaining)
    plan = plan_run(n, (h, w), network_size(h, w), width, explaining, passes, device, tile_size, halo, batch_size)
    job = Job(net, modules, classes, method, target, threshold)
    # Whole slices report every forward pass and every class, so a single 2-D image moves too.
    total = plan.steps if plan.tile is not None else -(-n // plan.batch) * steps_per_pass(job)
    step = progress_steps(total, progress, cancel)
    check_result_size(n, (h, w), prep.spatial_shape, n_outputs(net) + len(modules) * len(classes))
    logits = np.empty((n, int(net.n_classes), h, w), np.float32)
    maps = {(ly, c): np.empty((n, h, w), np.float32) for ly in modules for c in classes}
    with model_lock(net), eval_mode(net):
        for s in range(0, n, plan.batch):
            e = s + plan.batch
            x = torch.from_numpy(pad_to(prep.batch[s:e], plan.fed)).to(device)
            tgt = target
            if isinstance(target, np.ndarray):
                tgt = torch.from_numpy(_pad_mask(target[s:e], *plan.fed)).to(device)
            batch_job = replace(job, target=tgt)
            part = {k: v[s:e] for k, v in maps.items()}
            if plan.tile is None:
                explain_whole(batch_job, x, logits[s:e], part, on_step=step)
            else:
                explain_tiled(batch_job, x, plan.tile, halo, step, logits[s:e], part)
            _check_finite(prep, logits[s:e], part)
    return logits, maps, plan.tile


def _check_finite(prep: Prepared, probs: np.ndarray, maps: dict) -> None:
    if np.isfinite(probs).all() and all(np.isfinite(m).all() for m in maps.values()):
        return
    lo, hi = float(prep.batch.min()), float(prep.batch.max())
    raise InputError(
        f"The network produced non-finite values: after preprocessing ({prep.preprocess['mode']}) the "
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


def _prepare(image, net, preprocess, channel_axis, rgb, repeat_channels, scale) -> Prepared:
    if not isinstance(net, nn.Module) or not hasattr(net, "n_channels"):
        raise InputError("net must be a Pytorch-UNet model, e.g. from load_model().")
    return prepare(
        image,
        int(net.n_channels),
        preprocess=preprocess,
        model_preprocess=getattr(net, "preprocess", None),
        channel_axis=channel_axis,
        rgb=rgb,
        repeat_channels=repeat_channels,
        scale=scale,
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
) -> np.ndarray:
    """Class-index labels (int32) with the image's stack and spatial shape.

    As upstream's predict.py: the image is resized by ``scale`` (PIL bicubic, ``int(scale * size)``),
    the logits are upsampled (bilinear) to the full size, then labelled by argmax, or for a
    one-channel model by sigmoid > ``threshold`` (default 0.5).
    """
    net = args.model(net)
    tile_size, batch_size, halo = args.tile_size(tile_size), args.batch_size(batch_size), round_halo(args.halo(halo))
    t = _threshold(net, threshold)
    prep = _prepare(args.image(image), net, preprocess, args.channel_axis(channel_axis), rgb, repeat_channels, scale)
    logits, _, _ = _run(
        net, prep, (), (), get_method("gradcam"), "predicted", tile_size, halo, batch_size, t, progress, cancel
    )
    return _finish(prep, logits, {}, t, with_probabilities=False)[0]


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
) -> ExplainResult:
    """Segment ``image`` and explain every (layer, class) pair from one forward pass per batch.

    ``target`` fixes the pixels whose class logits are summed into each class's score:
    ``"predicted"`` (pixels predicted as that class), ``"image"`` (all pixels), a boolean mask
    with the image's shape, or a ``(y, x)`` pixel. ``normalize`` is ``"per-map"`` (min-max per
    map), ``"shared"`` (one scale for every map of the run) or ``"none"`` (raw values).
    ``scale`` and ``threshold`` are upstream predict.py's (see :func:`predict`).
    """
    t0 = time.perf_counter()
    net = args.model(net)
    layers = args.layers(layers)
    tile_size, batch_size, halo = args.tile_size(tile_size), args.batch_size(batch_size), round_halo(args.halo(halo))
    m = get_method(method)
    class_idx = _class_indices(net, classes)
    if normalize not in NORMALIZE_MODES:  # checked before the work, not after it
        raise InputError(f"Unknown normalize {normalize!r}: choose one of {', '.join(NORMALIZE_MODES)}.")
    resolve_modules(net, layers)
    args.explained_modules(net, layers)
    t = _threshold(net, threshold)
    prep = _prepare(args.image(image), net, preprocess, args.channel_axis(channel_axis), rgb, repeat_channels, scale)
    tgt = _target_mask(target, prep, prep.batch.shape[-2:])
    logits, raw, tile = _run(net, prep, layers, class_idx, m, tgt, tile_size, halo, batch_size, t, progress, cancel)
    labels, probabilities, cams = _finish(prep, logits, raw, t, with_probabilities=True)
    del logits, raw
    ranges = normalize_maps(cams, normalize)
    names = list(getattr(net, "class_names", [])) or [str(i) for i in range(n_outputs(net))]
    metadata = {
        "method": m.name,
        "method_title": m.title,
        "target": target if isinstance(target, str) else ("pixel" if isinstance(target, tuple) else "mask"),
        "layers": list(layers),
        "classes": [{"index": c, "name": names[c]} for c in class_idx],
        "class_names": names,
        "preprocess": prep.preprocess,
        "normalize": normalize,
        "ranges": {f"{ly}/{c}": r for (ly, c), r in ranges.items()},
        "scale": scale,
        "threshold": t if int(net.n_classes) == 1 else None,
        "tile_size": tile,
        "halo": halo if tile else None,
        "model": model_identity(net),
        "version": __version__,
        "notes": list(prep.notes),
        "ood_warnings": check_image(args.image(image), labels, names, scale=scale),  # docs/model-card.md
        "seconds": round(time.perf_counter() - t0, 3),
    }
    return ExplainResult(labels, probabilities, cams, metadata)


def model_identity(net: nn.Module) -> dict:
    return {
        "sha256": getattr(net, "checkpoint_sha256", None),
        "path": getattr(net, "checkpoint_path", None),
        "n_channels": int(net.n_channels),
        "n_classes": int(net.n_classes),
        "width": int(getattr(net, "width", 64)),
        "bilinear": bool(getattr(net, "bilinear", False)),
    }
