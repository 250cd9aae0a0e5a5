"""Images read region by region: dask, zarr, a napari multiscale level, a memory map...

A lazy input is never read whole. Its axes are checked from its shape and dtype alone
(``image.layout``); a percentile rule is resolved from an even, strided sample of at most
:data:`SAMPLE_VALUES` values per channel; then each region the run needs is sliced from the
source, converted to float32 and preprocessed by that one rule, so every region (and every block
on any worker) is normalised alike.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import numpy as np
from torch import nn

from .errors import InputError
from .image import Layout, Prepared, apply_preprocess, layout, prepare, resolve_preprocess, scaled_size

SAMPLE_VALUES = 1 << 22  # per channel; 4 M values put the 1st/99.8th percentiles within ~0.1% of the full ones
SAMPLE_SLICES = 16  # slices of a stack the sample visits at most


def is_lazy(image) -> bool:
    """An array-like to be read region by region: anything sliceable with a shape and dtype but a plain
    in-memory NumPy array (memory maps count as lazy: their float32 copy would be the whole file)."""
    if isinstance(image, np.ndarray):
        return isinstance(image, np.memmap)
    return all(hasattr(image, a) for a in ("shape", "dtype", "__getitem__")) and len(image.shape) >= 2


def sample_strides(n: int, size: tuple[int, int], values: int | None = None) -> tuple[int, int]:
    """(slice stride, pixel stride) so that a strided sample holds at most about ``values`` per channel."""
    values = SAMPLE_VALUES if values is None else values
    t = max(1, math.ceil(n / SAMPLE_SLICES))
    per_slice = values / math.ceil(n / t)
    return t, max(1, math.ceil(math.sqrt(size[0] * size[1] / per_slice)))


class LazyImage:
    """A lazy image with the reading interface of ``image.Prepared`` (``read``, ``size``, ``span``)."""

    def __init__(self, array, lay: Layout, notes: list[str]) -> None:
        self.array, self.layout, self.notes = array, lay, notes
        self.stack_shape = lay.stack_shape
        self.spatial_shape = lay.spatial_shape
        self.n_slices = int(np.prod(self.stack_shape, dtype=np.int64))
        self.preprocess: dict = {"mode": "none"}
        self._fill = (0.0, 0.0)
        self._span = (0.0, 0.0)

    @property
    def size(self) -> tuple[int, int]:
        return self.spatial_shape

    def _raw(self, i: int, ys: slice, xs: slice) -> np.ndarray:
        index = np.unravel_index(i, self.stack_shape) if self.stack_shape else ()
        region = np.asarray(self.array[self.layout.index(tuple(int(k) for k in index), ys, xs)])
        with np.errstate(over="ignore"):  # beyond float32: inf, filled below
            return self.layout.channels_first(region).astype(np.float32)

    def resolve(self, preprocess, model_preprocess: dict | None) -> None:
        """Fix the preprocessing rule (and the fill for NaN/inf) from a strided sample."""
        t, s = sample_strides(self.n_slices, self.spatial_shape)
        sample = np.stack(
            [self._raw(i, slice(None, None, s), slice(None, None, s)) for i in range(0, self.n_slices, t)]
        )
        bad = ~np.isfinite(sample)
        finite = sample[~bad]
        self._fill = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
        if bad.any():
            text = "NaN/inf values in the image are replaced by its finite range (from a strided sample)."
            self.notes.append(text)
            warnings.warn(text, UserWarning, stacklevel=3)
            np.nan_to_num(sample, copy=False, nan=self._fill[0], posinf=self._fill[1], neginf=self._fill[0])
        self.preprocess = resolve_preprocess(preprocess, model_preprocess, sample)
        if t > 1 or s > 1:
            self.preprocess["sampled"] = {"slice_stride": t, "pixel_stride": s}
        apply_preprocess(sample, self.preprocess)
        self._span = (float(sample.min()), float(sample.max()))

    def read(self, start: int, stop: int, box: tuple[int, int, int, int] | None = None) -> np.ndarray:
        """Slices ``start:stop`` over ``box`` read from the source: (B, C, y, x) float32, preprocessed."""
        h, w = self.spatial_shape
        y0, y1, x0, x1 = box if box is not None else (0, h, 0, w)
        out = np.stack([self._raw(i, slice(y0, y1), slice(x0, x1)) for i in range(start, stop)])
        if not np.isfinite(out).all():
            np.nan_to_num(out, copy=False, nan=self._fill[0], posinf=self._fill[1], neginf=self._fill[0])
        return apply_preprocess(out, self.preprocess)

    def span(self) -> tuple[float, float]:
        return self._span


def open_source(
    image,
    net: nn.Module,
    preprocess,
    channel_axis: int | None,
    rgb: bool | None,
    repeat_channels: bool,
    scale: float,
    before_reading: Callable[[tuple[int, ...], tuple[int, int], tuple[int, int]], None],
) -> Prepared | LazyImage:
    """The image as the run reads it: a lazy one region by region, a NumPy one prepared whole.

    ``before_reading(stack_shape, size, full)`` (the memory or disk check) runs before a pixel is read.
    """
    if not isinstance(net, nn.Module) or not hasattr(net, "n_channels"):
        raise InputError("net must be a Pytorch-UNet model, e.g. from load_model().")
    lazy = is_lazy(image)
    arr = image if lazy else np.asarray(image)
    n_channels, model_preprocess = int(net.n_channels), getattr(net, "preprocess", None)
    with warnings.catch_warnings():  # the notes come again from the reading below
        warnings.simplefilter("ignore")
        lay = layout(arr.shape, arr.dtype, n_channels, channel_axis, rgb, repeat_channels)
    full = lay.spatial_shape
    size = scaled_size(full, scale)
    before_reading(lay.stack_shape, size, full)
    if lazy and size == full:
        notes: list[str] = []
        src = LazyImage(arr, layout(arr.shape, arr.dtype, n_channels, channel_axis, rgb, repeat_channels, notes), notes)
        src.resolve(preprocess, model_preprocess)
        return src
    # scale != 1 resizes whole slices (as upstream does): a lazy image is read whole, so it must fit.
    return prepare(
        np.asarray(arr),
        n_channels,
        preprocess=preprocess,
        model_preprocess=model_preprocess,
        channel_axis=channel_axis,
        rgb=rgb,
        repeat_channels=repeat_channels,
        scale=scale,
    )
