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

    @property
    def size(self) -> tuple[int, int]:
        """(h, w) on the model's grid: the spatial shape resized by ``scale``."""
        return tuple(self.batch.shape[-2:])

    def read(self, start: int, stop: int, box: tuple[int, int, int, int] | None = None) -> np.ndarray:
        """Slices ``start:stop`` (B, C, y, x) over ``box`` (y0, y1, x0, x1; None: all), preprocessed."""
        part = self.batch[start:stop]
        return part if box is None else part[..., box[0] : box[1], box[2] : box[3]]

    def span(self) -> tuple[float, float]:
        """The preprocessed values' range (for a message)."""
        return float(self.batch.min()), float(self.batch.max())


def _note(notes: list[str], text: str) -> None:
    notes.append(text)
    warnings.warn(text, UserWarning, stacklevel=4)


@dataclass(frozen=True)
class Layout:
    """Where an image's channels, stack and (Y, X) axes are, decided from its shape and dtype alone."""

    shape: tuple[int, ...]  # the source's shape
    channel_axis: int | None  # the source axis holding the channels (>= 0), or None for one channel
    keep: int  # channels read from that axis (3 when an alpha channel is dropped)
    repeat: int  # copies of a single channel fed to the network (repeat_channels)

    @property
    def stack_shape(self) -> tuple[int, ...]:
        rest = [n for i, n in enumerate(self.shape) if i != self.channel_axis]
        return tuple(rest[:-2])

    @property
    def spatial_shape(self) -> tuple[int, int]:
        rest = [n for i, n in enumerate(self.shape) if i != self.channel_axis]
        return rest[-2], rest[-1]

    def index(self, stack_index: tuple[int, ...], ys: slice, xs: slice) -> tuple:
        """The source index of one slice's region: stack axes fixed, channels cut to ``keep``."""
        parts = iter([*stack_index, ys, xs])
        return tuple(slice(0, self.keep) if i == self.channel_axis else next(parts) for i in range(len(self.shape)))

    def channels_first(self, region: np.ndarray) -> np.ndarray:
        """A region read with :meth:`index` (stack axes gone) as (C, y, x), channels repeated if asked."""
        if self.channel_axis is None:
            region = region[None]
        else:
            yx = [i for i in range(len(self.shape)) if i != self.channel_axis][-2:]
            region = np.moveaxis(region, sum(1 for i in yx if i < self.channel_axis), 0)
        return np.repeat(region, self.repeat, axis=0) if self.repeat > 1 else region


def layout(
    shape: tuple[int, ...],
    dtype,
    n_channels: int,
    channel_axis: int | None = None,
    rgb: bool | None = None,
    repeat_channels: bool = False,
    notes: list[str] | None = None,
) -> Layout:
    """Check an image's axes and dtype against the model without reading a pixel."""
    notes = notes if notes is not None else []
    shape, ndim, dtype = tuple(int(n) for n in shape), len(shape), np.dtype(dtype)
    if dtype.kind not in _SUPPORTED_KINDS:
        raise InputError(f"Images of dtype {dtype} are not supported: convert to bool, an integer or a float type.")
    if ndim < 2:
        raise InputError(f"An image needs at least two axes (Y, X); got shape {shape}.")
    axis, keep = None, 1
    if channel_axis is not None:
        if not -ndim <= channel_axis < ndim or ndim < 3:
            raise InputError(f"channel_axis={channel_axis} is not an axis of an image of shape {shape}.")
        axis = channel_axis % ndim
        # The channel axis goes before the last two remaining axes, which are (Y, X).
    else:
        if rgb is None:
            rgb = ndim >= 3 and shape[-1] in (3, 4) and min(shape[-3:-1]) > 4
        if rgb:
            if ndim < 3 or shape[-1] not in (3, 4):
                raise InputError(f"An RGB image needs a last axis of 3 or 4; got shape {shape}.")
            if shape[-1] == 4:
                _note(notes, "The image's alpha channel was dropped; the model sees RGB only.")
            axis = ndim - 1
    if 0 in shape:
        raise InputError(f"The image is empty (shape {shape}).")
    if axis is not None:
        keep = 3 if channel_axis is None and shape[axis] == 4 else shape[axis]
    if keep != n_channels and not (keep == 1 and repeat_channels):
        hint = (
            " Pass repeat_channels=True (CLI: --repeat-channels) to feed a grayscale image to every input channel."
            if keep == 1
            else ""
        )
        raise InputError(
            f"The image has {keep} channel(s) but the model expects {n_channels}; "
            f"choose an image with {n_channels} channel(s) or a model trained for {keep}.{hint}"
        )
    return Layout(shape, axis, keep, n_channels if keep == 1 and keep != n_channels else 1)


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
    lay = layout(arr.shape, arr.dtype, n_channels, channel_axis, rgb, repeat_channels, notes)
    if lay.channel_axis is None:
        arr = arr[..., None, :, :]
    else:
        arr = np.moveaxis(arr, lay.channel_axis, -3)[..., : lay.keep, :, :]
    if lay.repeat > 1:
        arr = np.repeat(arr, lay.repeat, axis=-3)
    with np.errstate(over="ignore"):  # values beyond float32 become inf, reported just below
        out = arr.astype(np.float32)  # always a copy: the caller's array is never written to
    if not np.isfinite(out).all():
        bad = ~np.isfinite(out)
        finite = out[~bad]
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
        _note(notes, f"{int(bad.sum())} NaN/inf value(s) in the image were replaced by the image's finite range.")
        np.nan_to_num(out, copy=False, nan=lo, posinf=hi, neginf=lo)
    return out


def _percentiles(channel: np.ndarray, q: tuple[float, float]) -> tuple[float, float]:
    flat = channel.reshape(-1)
    if flat.size > _PERCENTILE_SAMPLE:
        flat = flat[:: math.ceil(flat.size / _PERCENTILE_SAMPLE)]
    lo, hi = np.percentile(flat, q)
    return float(lo), float(hi)


def _fixed(rule: dict, key: str, n: int) -> list[float]:
    value = rule[key]
    values = [value] * n if np.ndim(value) == 0 else list(value)
    try:
        values = [float(v) for v in values]
    except (TypeError, ValueError):
        values = []
    if len(values) != n or not all(math.isfinite(v) for v in values):
        raise InputError(f"preprocess {key!r} must be one finite number or one per channel ({n}); got {value!r}.")
    return values


def resolve_preprocess(preprocess: str | dict, model_preprocess: dict | None, arr: np.ndarray) -> dict:
    """The concrete rule for this image: ``{"mode": ...}`` plus its parameters.

    ``arr`` is the (..., C, Y, X) image, or an even sample of a lazy one. A percentile rule gets
    each channel's values ``lo`` and ``hi``; given in the rule, they are used as they are, so
    blocks of one image, or many images, normalise alike.
    """
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
        n = arr.shape[-3]
        if ("lo" in rule) != ("hi" in rule):
            raise InputError("A percentile rule with fixed values needs both 'lo' and 'hi'.")
        if "lo" in rule:
            rule["lo"], rule["hi"] = _fixed(rule, "lo", n), _fixed(rule, "hi", n)
        else:
            rule.setdefault("low", PERCENTILES[0])
            rule.setdefault("high", PERCENTILES[1])
            q = (float(rule["low"]), float(rule["high"]))
            values = [_percentiles(arr[..., c, :, :], q) for c in range(n)]
            rule["lo"], rule["hi"] = [v[0] for v in values], [v[1] for v in values]
    return rule


def apply_preprocess(arr: np.ndarray, rule: dict) -> np.ndarray:
    """Normalise (..., C, y, x) in place (``arr`` is already our own copy) by a rule.

    A percentile rule without values takes them from ``arr`` itself (per channel, over all of it).
    """
    mode = rule["mode"]
    if mode == "percentile" and "lo" not in rule:
        rule = resolve_preprocess(rule, None, arr)
    if mode == "divide255":
        arr /= 255.0
    elif mode == "percentile":
        for c in range(arr.shape[-3]):
            ch = arr[..., c, :, :]
            lo, hi = rule["lo"][c], rule["hi"][c]
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
