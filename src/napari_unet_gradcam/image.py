"""From what a user holds (any axes, any dtype) to the network's (N, C, H, W) float32 batch, and back.

Nothing here modifies the caller's array: every path copies before it writes.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import cv2
import numpy as np

from .errors import InputError
from .model import DOWNSAMPLING

PREPROCESS_MODES = ("auto", "percentile", "divide255", "none")
PERCENTILES = (1.0, 99.8)
_SUPPORTED_KINDS = "buif"
_PERCENTILE_SAMPLE = 1 << 24  # beyond this many values, percentiles come from an even subsample


@dataclass
class Prepared:
    """An image as the network sees it, and what is needed to map results back."""

    batch: np.ndarray  # (N, C, h, w) float32, preprocessed, resized by ``scale``, not padded
    stack_shape: tuple[int, ...]
    spatial_shape: tuple[int, int]
    preprocess: dict
    notes: list[str] = field(default_factory=list)

    @property
    def n_slices(self) -> int:
        return self.batch.shape[0]


def _note(notes: list[str], text: str) -> None:
    notes.append(text)
    warnings.warn(text, UserWarning, stacklevel=4)


def to_channels_first(
    image,
    n_channels: int,
    channel_axis: int | None = None,
    rgb: bool | None = None,
    repeat_channels: bool = False,
    notes: list[str] | None = None,
) -> np.ndarray:
    """Return a float32 copy shaped (..., C, Y, X) with C == ``n_channels``."""
    notes = notes if notes is not None else []
    arr = np.asarray(image)
    if arr.dtype.kind not in _SUPPORTED_KINDS:
        raise InputError(f"Images of dtype {arr.dtype} are not supported: convert to bool, an integer or a float type.")
    if arr.ndim < 2:
        raise InputError(f"An image needs at least two axes (Y, X); got shape {arr.shape}.")
    if channel_axis is not None:
        if not -arr.ndim <= channel_axis < arr.ndim or arr.ndim < 3:
            raise InputError(f"channel_axis={channel_axis} is not an axis of an image of shape {arr.shape}.")
        arr = np.moveaxis(arr, channel_axis, -3)
    else:
        if rgb is None:
            rgb = arr.ndim >= 3 and arr.shape[-1] in (3, 4) and min(arr.shape[-3:-1]) > 4
        if rgb:
            if arr.ndim < 3 or arr.shape[-1] not in (3, 4):
                raise InputError(f"An RGB image needs a last axis of 3 or 4; got shape {arr.shape}.")
            if arr.shape[-1] == 4:
                _note(notes, "The image's alpha channel was dropped; the model sees RGB only.")
                arr = arr[..., :3]
            arr = np.moveaxis(arr, -1, -3)
        else:
            arr = arr[..., None, :, :]
    if 0 in arr.shape:
        raise InputError(f"The image is empty (shape {np.shape(image)}).")
    c = arr.shape[-3]
    if c != n_channels:
        if c == 1 and repeat_channels:
            arr = np.repeat(arr, n_channels, axis=-3)
        else:
            hint = " Pass repeat_channels=True to feed a grayscale image to every input channel." if c == 1 else ""
            raise InputError(
                f"The image has {c} channel(s) but the model expects {n_channels}; "
                f"choose an image with {n_channels} channel(s) or a model trained for {c}.{hint}"
            )
    with np.errstate(over="ignore"):  # values beyond float32 become inf, reported just below
        out = arr.astype(np.float32)  # always a copy: the caller's array is never written to
    if not np.isfinite(out).all():
        bad = ~np.isfinite(out)
        finite = out[~bad]
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
        _note(notes, f"{int(bad.sum())} NaN/inf value(s) in the image were replaced by the image's finite range.")
        np.nan_to_num(out, copy=False, nan=lo, posinf=hi, neginf=lo)
    return out


def _percentiles(channel: np.ndarray) -> tuple[float, float]:
    flat = channel.reshape(-1)
    if flat.size > _PERCENTILE_SAMPLE:
        flat = flat[:: math.ceil(flat.size / _PERCENTILE_SAMPLE)]
    lo, hi = np.percentile(flat, PERCENTILES)
    return float(lo), float(hi)


def resolve_preprocess(preprocess: str | dict, model_preprocess: dict | None, arr: np.ndarray) -> dict:
    """The concrete rule for this image: ``{"mode": ...}`` plus its parameters."""
    if isinstance(preprocess, dict):
        rule = dict(preprocess)
    elif preprocess not in PREPROCESS_MODES:
        raise InputError(f"Unknown preprocess {preprocess!r}: choose one of {', '.join(PREPROCESS_MODES)}.")
    elif preprocess == "auto":
        # Upstream Pytorch-UNet divides by 255 whenever a value exceeds 1.
        rule = dict(model_preprocess) if model_preprocess else {"mode": "divide255" if (arr > 1).any() else "none"}
    else:
        rule = {"mode": preprocess}
    if rule.get("mode") not in PREPROCESS_MODES[1:]:
        raise InputError(f"Unknown preprocess rule {rule!r}.")
    if rule["mode"] == "percentile":
        rule.setdefault("low", PERCENTILES[0])
        rule.setdefault("high", PERCENTILES[1])
    return rule


def apply_preprocess(arr: np.ndarray, rule: dict) -> np.ndarray:
    """Normalise in place (``arr`` is already our own copy), per channel over the whole stack."""
    mode = rule["mode"]
    if mode == "divide255":
        arr /= 255.0
    elif mode == "percentile":
        for c in range(arr.shape[-3]):
            ch = arr[..., c, :, :]
            lo, hi = (
                _percentiles(ch)
                if (rule["low"], rule["high"]) == PERCENTILES
                else (tuple(float(v) for v in np.percentile(ch, [rule["low"], rule["high"]])))
            )
            if hi > lo:
                # Scale first: with values near float32's limits, ch - lo could overflow to inf.
                s = 1.0 / (hi - lo)
                ch *= np.float32(s)
                ch -= np.float32(lo * s)
            else:  # a constant image carries no contrast: map it to zero instead of dividing by zero
                ch[...] = 0.0
    return arr


def resize_stack(stack: np.ndarray, size: tuple[int, int], nearest: bool = False) -> np.ndarray:
    """Resize the last two axes of (..., Y, X) to ``size`` = (h, w)."""
    h, w = size
    if stack.shape[-2:] == (h, w):
        return stack
    lead = stack.shape[:-2]
    flat = stack.reshape(-1, *stack.shape[-2:])
    shrink = h * w < flat.shape[1] * flat.shape[2]
    interp = cv2.INTER_NEAREST if nearest else (cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    src_dtype = flat.dtype
    work = flat.astype(np.float32) if not nearest and src_dtype != np.float32 else flat
    if nearest and src_dtype not in (np.uint8, np.uint16, np.int16, np.float32):
        work = flat.astype(np.int32 if src_dtype.kind in "iub" else np.float32)
    out = np.stack([cv2.resize(s, (w, h), interpolation=interp) for s in work])
    return out.astype(src_dtype, copy=False).reshape(*lead, h, w)


def scaled_size(shape: tuple[int, int], scale: float) -> tuple[int, int]:
    if not scale > 0:
        raise InputError(f"scale must be positive; got {scale}.")
    return max(1, round(shape[0] * scale)), max(1, round(shape[1] * scale))


def prepare(
    image,
    n_channels: int,
    *,
    preprocess: str | dict = "auto",
    model_preprocess: dict | None = None,
    channel_axis: int | None = None,
    rgb: bool | None = None,
    repeat_channels: bool = False,
    scale: float = 1.0,
) -> Prepared:
    notes: list[str] = []
    arr = to_channels_first(image, n_channels, channel_axis, rgb, repeat_channels, notes)
    stack_shape = arr.shape[:-3]
    spatial = arr.shape[-2:]
    rule = resolve_preprocess(preprocess, model_preprocess, arr)
    apply_preprocess(arr, rule)
    batch = arr.reshape(-1, *arr.shape[-3:])
    if scale != 1.0:
        batch = resize_stack(batch, scaled_size(spatial, scale))
    return Prepared(np.ascontiguousarray(batch), tuple(stack_shape), tuple(spatial), rule, notes)


def padded_size(h: int, w: int) -> tuple[int, int]:
    """The smallest size >= (h, w) that the U-Net's four poolings divide evenly."""
    m = DOWNSAMPLING
    return max(m, -(-h // m) * m), max(m, -(-w // m) * m)


def pad_for_network(batch: np.ndarray) -> np.ndarray:
    """Reflect-pad (N, C, h, w) at the bottom and right to :func:`padded_size`."""
    h, w = batch.shape[-2:]
    ph, pw = padded_size(h, w)
    if (ph, pw) == (h, w):
        return batch
    # Reflection needs at least two pixels along an axis; a single row or column is repeated.
    mode = "reflect" if min(h, w) > 1 else "edge"
    return np.pad(batch, ((0, 0), (0, 0), (0, ph - h), (0, pw - w)), mode=mode)
