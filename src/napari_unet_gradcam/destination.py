"""Where a run's results go, RAM or an OME-Zarr store, decided and checked before a pixel is read."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from torch import nn

from .engine import n_outputs
from .errors import InputError
from .run_plan import check_result_size

if TYPE_CHECKING:
    from .zarr_out import ResultStore

MIN_WORK_BYTES = 1 << 20  # what a tight memory_budget leaves the network at least: the smallest tiles


@dataclass
class Destination:
    """Where a run's results go, decided (and checked) before any pixel is read."""

    work_budget: int | None = None  # the network's working memory, when memory_budget= was given
    store: ResultStore | None = None


def destination(
    net: nn.Module,
    n_maps: int,
    probabilities: bool,
    memory_budget: int | None,
    out,
    keys: Sequence[tuple[str, int]],
    threshold: float,
) -> tuple[Destination, Callable]:
    """The check to run before reading (results in RAM, or on disk with ``out``) and what it decides."""
    plan = Destination()
    k = int(net.n_classes)

    def check(stack_shape: tuple[int, ...], size: tuple[int, int], full: tuple[int, int]) -> None:
        n = int(np.prod(stack_shape, dtype=np.int64))
        if out is None:
            need = check_result_size(n, size, full, k, n_maps, probabilities, memory_budget)
            if memory_budget is not None:
                plan.work_budget = max(memory_budget - need, MIN_WORK_BYTES)
            return
        from .zarr_out import ResultStore, check_out, disk_bytes, require_zarr

        require_zarr()
        if size != full:
            raise InputError(
                "out= writes results at the image's own size: leave scale at 1 and pass a coarser pyramid "
                "level (or a downsampled image) to run coarser."
            )
        path = check_out(out, disk_bytes(n, full, n_maps, k, probabilities))
        plan.work_budget = memory_budget
        plan.store = ResultStore(path, stack_shape, full, keys, class_names(net), k, probabilities, threshold)

    return plan, check


def lazy_normalized(raw, scale: tuple[float, float], mode: str):
    """A map over a store, normalised as it is read: ``(raw - low) / (high - low)``; flat maps are zeros."""
    lo, hi = scale
    if mode == "none":
        return raw
    if hi > lo:
        return (raw - np.float32(lo)) * np.float32(1.0 / (hi - lo))
    return raw * np.float32(0.0)


def class_names(net: nn.Module) -> list[str]:
    return list(getattr(net, "class_names", [])) or [str(i) for i in range(n_outputs(net))]
