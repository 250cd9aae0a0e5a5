"""From what a user holds (any axes, any dtype) to the network's (N, C, H, W) float32 batch, and back.

Nothing here modifies the caller's array: every path copies before it writes.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

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
            hint = (
                " Pass repeat_channels=True (CLI: --repeat-channels) to feed a grayscale image to every input channel."
                if c == 1
                else ""
            )
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


def _pil_plane_dtype(dtype: np.dtype) -> np.dtype:
    """The dtype whose PIL image mode resamples as upstream's ``Image.open`` file would.

    uint8 is mode ``L`` (results rounded to uint8), uint16 ``I;16``, smaller signed integers
    ``I`` (int32); everything else is resampled as float32 (mode ``F``), without rounding.
    """
    if dtype in (np.uint8, np.uint16):
        return np.dtype(dtype)
    if dtype in (np.int8, np.int16):
        return np.dtype(np.int32)
    return np.dtype(np.float32)


def resize_like_pil(stack: np.ndarray, size: tuple[int, int], source_dtype: np.dtype) -> np.ndarray:
    """Bicubic resize of the last two axes to ``size`` = (h, w) with PIL, as upstream's preprocess.

    ``stack`` holds the values of an image of ``source_dtype`` (as float32); each plane is
    resampled in that dtype's PIL mode, so uint8 images are rounded to uint8 exactly as
    ``PIL.Image.resize`` rounds them. Returns float32.
    """
    h, w = size
    if stack.shape[-2:] == (h, w):
        return stack
    plane = _pil_plane_dtype(np.dtype(source_dtype))
    flat = stack.reshape(-1, *stack.shape[-2:])
    out = np.empty((flat.shape[0], h, w), np.float32)
    for i, s in enumerate(flat):
        out[i] = np.asarray(Image.fromarray(s.astype(plane)).resize((w, h), Image.Resampling.BICUBIC))
    return out.reshape(*stack.shape[:-2], h, w)


def upsample(t: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(N, C, h, w) to (N, C, *size), bilinear without corner alignment (upstream's predict.py)."""
    if tuple(t.shape[-2:]) == tuple(size):
        return t
    return F.interpolate(t, size=size, mode="bilinear", align_corners=False)


def shrink_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(N, H, W) bool to (N, *size): a pixel is set when any pixel of the area it covers is set.

    A scaled-down single target pixel must survive, so this is a max over areas, not a resample.
    """
    if mask.shape[-2:] == tuple(size):
        return mask
    t = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[:, None]
    return (F.adaptive_max_pool2d(t, size)[:, 0] > 0).numpy()


def scaled_size(shape: tuple[int, int], scale: float) -> tuple[int, int]:
    """Upstream's ``int(scale * size)``: the network's input size for ``scale``."""
    try:
        scale = float(scale)
    except (TypeError, ValueError):
        raise InputError(f"scale must be a positive number; got {scale!r}.") from None
    if not (math.isfinite(scale) and scale > 0):
        raise InputError(f"scale must be a positive, finite number; got {scale}.")
    h, w = int(scale * shape[0]), int(scale * shape[1])
    if h < 1 or w < 1:
        raise InputError(
            f"scale={scale} would shrink the {shape[0]}x{shape[1]} image to no pixels; use a larger scale."
        )
    return h, w


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
    """As upstream's ``BasicDataset.preprocess``: resize (PIL bicubic, ``int(scale * size)``), then normalise."""
    notes: list[str] = []
    source_dtype = np.asarray(image).dtype
    arr = to_channels_first(image, n_channels, channel_axis, rgb, repeat_channels, notes)
    stack_shape = arr.shape[:-3]
    spatial = arr.shape[-2:]
    if scale != 1.0:
        arr = resize_like_pil(arr, scaled_size(spatial, scale), source_dtype)
    # Upstream decides on dividing by 255 after resizing: bicubic overshoot counts.
    rule = resolve_preprocess(preprocess, model_preprocess, arr)
    apply_preprocess(arr, rule)
    batch = arr.reshape(-1, *arr.shape[-3:])
    return Prepared(np.ascontiguousarray(batch), tuple(stack_shape), tuple(spatial), rule, notes)


def padded_size(h: int, w: int) -> tuple[int, int]:
    """The smallest size >= (h, w) that the U-Net's four poolings divide evenly (tiled runs)."""
    m = DOWNSAMPLING
    return max(m, -(-h // m) * m), max(m, -(-w // m) * m)


def network_size(h: int, w: int) -> tuple[int, int]:
    """The size a whole image is fed at: as it is, as upstream does, unless a side is below 16.

    The four 2x poolings floor odd sizes and ``Up`` pads its upsampled input to the skip
    connection's size, so any side >= 16 runs unpadded; a smaller side would pool to nothing.
    """
    return max(h, DOWNSAMPLING), max(w, DOWNSAMPLING)


def pad_to(batch: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Reflect-pad (N, C, h, w) at the bottom and right to ``size``."""
    h, w = batch.shape[-2:]
    ph, pw = size
    if (ph, pw) == (h, w):
        return batch
    # Reflection needs at least two pixels along an axis; a single row or column is repeated.
    mode = "reflect" if min(h, w) > 1 else "edge"
    return np.pad(batch, ((0, 0), (0, 0), (0, ph - h), (0, pw - w)), mode=mode)
