"""3-D tiling: one volume explained block by block, with global channel weights (blocks.py's passes).

Blocks are boxes ``(z0, z1, y0, y1, x0, x1)`` over the volume padded to the network's size
divisor (``volume.fed_size``). Cores tile the volume itself; each extent is its core plus
``halo`` voxels a side, clipped to the padded volume, both on the divisor's grid, so a block's
poolings fall where the whole volume's do and padding enters no score and no statistic. With
layers that see only their receptive field (batch norm, or none) the result is the whole-volume
pass's once the halo covers that field; instance norms normalise each block by its own statistics,
so there the blocks' logits differ from one whole pass, as nnU-Net's sliding-window patches do.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import replace

import numpy as np
import torch

from .blocks import Box, box_slices, extent_size
from .engine import Job
from .tiling import ArraySink, explain_boxes


def _axis_blocks(size: int, fed: int, d: int, tile: int, halo: int) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    out = []
    for start in range(0, size, tile):
        stop = min(start + tile, size)
        lo, hi = max(0, start - halo), min(fed, -(-stop // d) * d + halo)
        if hi - lo < 2 * d:  # instance norms need two positions a side at the deepest level
            hi = min(fed, lo + 2 * d)
            lo = max(0, hi - 2 * d)
        out.append(((start, stop), (lo, hi)))
    return out


def block_boxes(
    spatial: Sequence[int], fed: Sequence[int], divisor: Sequence[int], tile: int, halo: int
) -> list[tuple[Box, Box]]:
    """(core, extent) boxes of a volume: cores of ``tile`` voxels a side, extents ``halo`` more.

    Both are rounded up to each axis's divisor, so blocks start on the poolings' grid.
    """
    per_axis = []
    for s, f, d in zip(spatial, fed, divisor, strict=True):
        t, h = max(d, -(-tile // d) * d), -(-halo // d) * d
        per_axis.append(_axis_blocks(s, f, d, t, h))
    return [
        (tuple(v for core, _ in combo for v in core), tuple(v for _, ext in combo for v in ext))
        for combo in itertools.product(*per_axis)
    ]


def largest_block(boxes: Sequence[tuple[Box, Box]]) -> int:
    """Voxels of the largest extent: what one block's pass needs memory for."""
    return max(math.prod(extent_size(ext)) for _, ext in boxes)


def choose_tile(
    spatial: Sequence[int], fed: Sequence[int], divisor: Sequence[int], halo: int, fits: Callable[[int], bool]
) -> int | None:
    """The largest tile (a multiple of the largest divisor) whose largest block fits; None if none does."""
    step = max(divisor)
    for tile in range(-(-max(spatial) // step) * step, 0, -step):
        if fits(largest_block(block_boxes(spatial, fed, divisor, tile, halo))):
            return tile
    return None


def explain_blocks(
    job: Job,
    x: torch.Tensor,
    valid: tuple[int, ...],
    boxes: Sequence[tuple[Box, Box]],
    step: Callable[[], None],
    logits_out: np.ndarray,
    maps_out: dict,
) -> None:
    """One padded volume ``x`` (1, C, *fed), on the CPU, block by block into ``logits_out`` (1, K, *valid) and maps.

    The contract of ``engine.explain_whole``; blocks move to the model's device one at a time.
    """
    device = next(job.net.parameters()).device
    fed = tuple(x.shape[2:])
    if isinstance(job.target, str) and job.target == "image":
        mask = torch.zeros(1, *fed, dtype=torch.bool)
        mask[(slice(None), *(slice(0, v) for v in valid))] = True  # the padding is in no score
        job = replace(job, target=mask)
    sink = ArraySink(logits_out, maps_out, job.threshold, grid=fed)
    explain_boxes(job, lambda ext: x[(..., *box_slices(ext))].to(device), list(boxes), step, sink)
