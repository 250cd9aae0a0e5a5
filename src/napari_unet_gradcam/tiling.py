"""Explaining one large image in overlapping tiles, with global Grad-CAM channel weights.

Grad-CAM's weights are means over the whole target region, so tiles must not each get their
own. A tiled run makes up to three passes over the tiles:

1. forward only: stitched logits (hence the labels that fix the target region) and the
   activation sums some methods need;
2. forward + gradients: gradient sums over each tile's core, and the maps of local methods;
3. forward only: each tile's map from the now global channel weights.

The passes themselves are the public functions of ``blocks.py``. Tiles overlap by ``halo``
pixels on each side; only each tile's core is kept or counted.
Nothing is padded: every tile starts at a multiple of 16, so its poolings fall on the same
grid as a whole-image pass, and the tiles at the bottom and right end where the image ends,
floored by the poolings exactly as the whole image is.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Protocol

import numpy as np
import torch

from .blocks import (
    Box,
    MapKey,
    Sums,
    box_slices,
    channel_weights,
    forward_block,
    gradient_block,
    job_for_extent,
    maps_block,
)
from .blocks import passes as block_passes
from .engine import Job, labels_from_logits
from .methods import Method
from .model import DOWNSAMPLING


def _span(start: int, stop: int, size: int, halo: int) -> tuple[int, int]:
    """A core's extent along one axis: ``halo`` more each side, starting on the 16-pixel grid, >= 16 long."""
    lo = min(start - halo, (size - DOWNSAMPLING) // DOWNSAMPLING * DOWNSAMPLING)
    return max(0, lo), min(size, stop + halo)


def tile_boxes(h: int, w: int, tile: int, halo: int) -> Iterator[tuple[Box, Box]]:
    """(core, extent) boxes covering an (h, w) image (sides >= 16); ``tile`` and ``halo`` multiples of 16."""
    for y0 in range(0, h, tile):
        for x0 in range(0, w, tile):
            y1, x1 = min(y0 + tile, h), min(x0 + tile, w)
            yield (y0, y1, x0, x1), (*_span(y0, y1, h, halo), *_span(x0, x1, w, halo))


def round_halo(halo: int) -> int:
    """Up to a multiple of 16, so that tiles start on the poolings' grid."""
    return max(0, -(-int(halo) // DOWNSAMPLING) * DOWNSAMPLING)


class TileSink(Protocol):
    """Where a tiled pass puts its results, tile core by tile core."""

    def put_logits(self, core: Box, logits: torch.Tensor) -> None:
        """Pass 1: a core's logits (B, K, cy, cx); the sink keeps what it needs (labels at least)."""

    def labels(self, ext: Box) -> torch.Tensor:
        """The whole image's labels (B, ey, ex) over ``ext``, once pass 1 is done."""

    def put_maps(self, core: Box, maps: Mapping[MapKey, np.ndarray]) -> None:
        """A core's maps (B, cy, cx), raw, on the input grid."""


class ArraySink:
    """Results into in-memory arrays: logits (B, K, *spatial) and maps (B, *spatial), as a whole-image pass.

    ``grid``: the spatial size blocks read, when larger than the image (a volume padded at the
    end of its axes); labels there are -1, so no class score includes the padding.
    """

    def __init__(
        self,
        logits_out: np.ndarray,
        maps_out: Mapping[MapKey, np.ndarray],
        threshold: float,
        grid: tuple[int, ...] | None = None,
    ) -> None:
        self.logits_out, self.maps_out, self.threshold = logits_out, maps_out, threshold
        grid = tuple(logits_out.shape[2:]) if grid is None else tuple(grid)
        self._labels = torch.full((logits_out.shape[0], *grid), -1, dtype=torch.int16)

    def put_logits(self, core: Box, logits: torch.Tensor) -> None:
        cut = box_slices(core)
        self.logits_out[(..., *cut)] = logits.cpu().numpy()
        self._labels[(slice(None), *cut)] = labels_from_logits(logits, self.threshold).cpu().to(torch.int16)

    def labels(self, ext: Box) -> torch.Tensor:
        return self._labels[(slice(None), *box_slices(ext))]

    def put_maps(self, core: Box, maps: Mapping[MapKey, np.ndarray]) -> None:
        cut = box_slices(core)
        for key, m in maps.items():
            self.maps_out[key][(..., *cut)] = m


def explain_tiled(
    job: Job,
    read: Callable[[Box], torch.Tensor],
    size: tuple[int, int],
    tile: int,
    halo: int,
    step: Callable[[], None],
    sink: TileSink,
) -> None:
    """Explain an (h, w) = ``size`` image tile by tile: ``read(extent)`` gives a tile's input.

    The same contract as a whole-image pass. Results go to ``sink`` core by core, so the working
    memory is a few tiles' worth whatever the image size.
    """
    explain_boxes(job, read, list(tile_boxes(*size, tile, halo)), step, sink)


def explain_boxes(
    job: Job, read: Callable[[Box], torch.Tensor], boxes: list[tuple[Box, Box]], step: Callable[[], None], sink
) -> None:
    """The passes over given (core, extent) boxes, 2-D or 3-D (``explain_tiled``'s work)."""
    todo = block_passes(job.method, bool(job.modules) and bool(job.classes))
    total = Sums()
    for core, ext in boxes:
        logits, sums = forward_block(job_for_extent(job, ext), read(ext), core, ext)
        sink.put_logits(core, logits)
        total = total + sums
        step()
    if "gradients" in todo:
        for core, ext in boxes:
            sums, maps = gradient_block(job_for_extent(job, ext), read(ext), core, ext, total, sink.labels(ext))
            total = total + sums
            sink.put_maps(core, maps)
            step()
    if "maps" in todo:
        weights = channel_weights(job, total)
        for core, ext in boxes:
            sink.put_maps(core, maps_block(job, read(ext), core, ext, weights))
            step()


def n_passes(method: Method, explaining: bool) -> int:
    return len(block_passes(method, explaining))
