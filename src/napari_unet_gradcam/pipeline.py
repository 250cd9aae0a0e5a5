"""The public pipeline: ``predict()`` and ``explain()`` on images of any layout."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import __version__
from .engine import (
    eval_mode,
    explain_tensor,
    model_lock,
    n_outputs,
    probabilities_from_logits,
    resolve_modules,
)
from .errors import Cancelled, InputError
from .image import Prepared, pad_for_network, padded_size, prepare, resize_stack
from .instances import classes_for_instances, instance_labels
from .methods import Method, get_method
from .model import DECODER_LAYERS
from .normalize import MODES as NORMALIZE_MODES
from .normalize import normalize_maps
from .resources import auto_batch, auto_tile, available_bytes, system_available_bytes
from .tiling import explain_tiled, n_passes, round_tile

ProgressCallback = Callable[[int, int], None]
DEFAULT_HALO = 64


@dataclass
class ExplainResult:
    """Everything one run produced; every array has the input's stack and spatial shape."""

    labels: np.ndarray
    probabilities: np.ndarray  # (classes, *stack, Y, X) float32
    cams: dict[tuple[str, int], np.ndarray]
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def class_names(self) -> list[str]:
        return list(self.metadata.get("class_names", []))

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
    if scaled != (H, W):
        # A scaled-down single pixel must survive: take the max over the area it falls in.
        mask = resize_stack(mask.astype(np.uint8), scaled, nearest=True).astype(bool) | (
            resize_stack(mask.astype(np.float32), scaled) > 0
        )
    return np.ascontiguousarray(mask)


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
    progress: ProgressCallback | None,
    cancel,
) -> tuple[np.ndarray, dict[tuple[str, int], np.ndarray], int | None]:
    """Probabilities (N, K, h, w), maps (N, h, w) on the model's unpadded grid, and the tile used."""
    device = next(net.parameters()).device
    modules = resolve_modules(net, layers)
    explaining = bool(modules) and bool(classes)
    n, _, h, w = prep.batch.shape
    hp, wp = padded_size(h, w)
    width = int(getattr(net, "width", 64))
    budget = available_bytes(device)
    if tile_size is None:
        tile = auto_tile(hp, wp, width, explaining, budget, halo)
    else:
        tile = round_tile(tile_size)
        if tile >= hp and tile >= wp:
            tile = None
    if tile is None:
        # On a CPU one slice at a time is fastest (bench/bench_stack.py); a GPU wants batches.
        cap = 1 if device.type == "cpu" else 16
        bs = batch_size or auto_batch(hp, wp, width, explaining, budget, cap=cap)
        steps_per_slice = 1
    else:
        bs = 1
        steps_per_slice = -(-hp // tile) * -(-wp // tile) * n_passes(method, explaining)
    total, done = n * steps_per_slice, 0

    def step(count: int = 1) -> None:
        nonlocal done
        done += count
        if progress is not None:
            progress(done, total)
        if _is_cancelled(cancel):
            raise Cancelled("The run was cancelled; no results were kept.")

    if _is_cancelled(cancel):
        raise Cancelled("The run was cancelled before it started.")
    _check_result_size(prep, n_outputs(net) + len(modules) * len(classes))
    probs = np.empty((n, n_outputs(net), h, w), np.float32)
    maps = {(ly, c): np.empty((n, h, w), np.float32) for ly in modules for c in classes}
    with model_lock(net), eval_mode(net):
        for s in range(0, n, bs):
            x = torch.from_numpy(pad_for_network(prep.batch[s : s + bs])).to(device)
            tgt = target
            if isinstance(target, np.ndarray):
                tgt = torch.from_numpy(_pad_mask(target[s : s + bs], hp, wp)).to(device)
            part = {k: v[s : s + bs] for k, v in maps.items()}
            if tile is None:
                logits, raw = explain_tensor(net, x, list(modules), classes, method, tgt)
                probs[s : s + bs] = probabilities_from_logits(logits)[..., :h, :w].cpu().numpy()
                for k, m in raw.items():
                    up = F.interpolate(m[:, None], size=(hp, wp), mode="bilinear", align_corners=False)[:, 0]
                    part[k][...] = up[..., :h, :w].cpu().numpy()
                step(x.shape[0])
            else:
                explain_tiled(net, x, modules, classes, method, tgt, tile, halo, step, probs[s : s + bs], part)
            _check_finite(prep, probs[s : s + bs], part)
    return probs, maps, tile


def _check_result_size(prep: Prepared, n_arrays: int) -> None:
    """Refuse, before allocating, a run whose results alone would not fit in memory."""
    n, _, h, w = prep.batch.shape
    H, W = prep.spatial_shape
    need = 4 * n * (h * w + H * W) * n_arrays + 4 * n * H * W
    free = system_available_bytes()
    if need > 0.8 * free:
        raise InputError(
            f"The results would need {need / 2**30:.1f} GiB ({n_arrays - 1 if n_arrays > 1 else 0} maps and "
            f"probabilities for {n} slice(s) of {H}x{W}), but only {free / 2**30:.1f} GiB is free. Explain fewer "
            "layers or classes, a crop or fewer slices, or pass scale < 1."
        )


def _check_finite(prep: Prepared, probs: np.ndarray, maps: dict) -> None:
    if np.isfinite(probs).all() and all(np.isfinite(m).all() for m in maps.values()):
        return
    lo, hi = float(prep.batch.min()), float(prep.batch.max())
    raise InputError(
        f"The network produced non-finite values: after preprocessing ({prep.preprocess['mode']}) the "
        f"image spans {lo:.3g} to {hi:.3g}, far outside what the model expects. "
        "Use preprocess='percentile' or rescale the image."
    )


def _finish_shape(prep: Prepared, arr: np.ndarray, nearest: bool = False) -> np.ndarray:
    """(N, ..., h, w) on the model's grid to (*stack, ..., H, W) on the image's."""
    arr = resize_stack(arr, prep.spatial_shape, nearest=nearest)
    return arr.reshape(*prep.stack_shape, *arr.shape[1:])


def _labels_from_probs(probs: np.ndarray) -> np.ndarray:
    return probs.argmax(1).astype(np.int32) if probs.shape[1] > 2 else (probs[:, 1] > 0.5).astype(np.int32)


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
    halo: int = DEFAULT_HALO,
    batch_size: int | None = None,
    progress: ProgressCallback | None = None,
    cancel=None,
) -> np.ndarray:
    """Class-index labels (int32) with the image's stack and spatial shape."""
    prep = _prepare(image, net, preprocess, channel_axis, rgb, repeat_channels, scale)
    probs, _, _ = _run(
        net, prep, (), (), get_method("gradcam"), "predicted", tile_size, halo, batch_size, progress, cancel
    )
    return _finish_shape(prep, _labels_from_probs(probs), nearest=True)


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
    """
    t0 = time.perf_counter()
    if isinstance(layers, str):
        layers = (layers,)
    layers = tuple(layers)
    m = get_method(method)
    class_idx = _class_indices(net, classes)
    if normalize not in NORMALIZE_MODES:  # checked before the work, not after it
        raise InputError(f"Unknown normalize {normalize!r}: choose one of {', '.join(NORMALIZE_MODES)}.")
    resolve_modules(net, layers)
    prep = _prepare(image, net, preprocess, channel_axis, rgb, repeat_channels, scale)
    tgt = _target_mask(target, prep, prep.batch.shape[-2:])
    probs, raw, tile = _run(net, prep, layers, class_idx, m, tgt, tile_size, halo, batch_size, progress, cancel)
    labels = _finish_shape(prep, _labels_from_probs(probs), nearest=True)
    probabilities = np.moveaxis(_finish_shape(prep, probs), len(prep.stack_shape), 0)
    cams = {k: _finish_shape(prep, v) for k, v in raw.items()}
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
        "tile_size": tile,
        "halo": halo if tile else None,
        "model": model_identity(net),
        "version": __version__,
        "notes": list(prep.notes),
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
