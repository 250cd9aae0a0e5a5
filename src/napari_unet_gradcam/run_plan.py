"""The run plan, made in one place: memory budget, whole slices or tiles, batch, passes, steps."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from .errors import InputError
from .model import DOWNSAMPLING

# Working bytes per input pixel per unit of network width, untiled, CPU float32. Explaining (all
# four decoder layers, three classes) measured 32 with bench/bench_memory.py (68 before the lean
# backward of fast_paths.py and one class's gradients at a time); forward only, 29. Both leave a margin.
BYTES_PER_PIXEL_PER_WIDTH_FORWARD = 40
BYTES_PER_PIXEL_PER_WIDTH_EXPLAIN = 40
CPU_BUDGET_CAP = 6 << 30


def available_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * 0.6)
    return int(min(system_available_bytes() * 0.4, CPU_BUDGET_CAP))


def bytes_per_pixel(width: int, explaining: bool) -> int:
    per = BYTES_PER_PIXEL_PER_WIDTH_EXPLAIN if explaining else BYTES_PER_PIXEL_PER_WIDTH_FORWARD
    return per * max(int(width), 1)


def auto_tile(h: int, w: int, width: int, explaining: bool, budget: int, halo: int) -> int | None:
    """None when a whole (h, w) slice fits the budget, else the largest tile core that does."""
    bpp = bytes_per_pixel(width, explaining)
    if h * w * bpp <= budget:
        return None
    side = int((budget / bpp) ** 0.5) - 2 * halo
    return max(4 * DOWNSAMPLING, side // DOWNSAMPLING * DOWNSAMPLING)


def auto_batch(h: int, w: int, width: int, explaining: bool, budget: int, cap: int = 16) -> int:
    return int(max(1, min(cap, budget // max(1, h * w * bytes_per_pixel(width, explaining)))))


RAM_SHARE = 0.8  # the share of free RAM a run's results may take


def system_available_bytes() -> int:
    """Free RAM (the results live there whatever the device runs the network)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 1 << 62  # unknown: do not refuse


@dataclass(frozen=True)
class RunPlan:
    """How one run goes over its slices."""

    fed: tuple[int, int]  # the size a whole slice is fed at: its own, or 16 for a smaller side
    tile: int | None  # tile core side; None: whole slices
    halo: int
    batch: int  # slices per pass
    passes: int  # passes over each slice's tiles (1 for whole slices)
    steps: int  # progress steps of the whole run
    budget: int  # bytes the network's working memory may take on its device


def plan_run(
    n: int,
    size: tuple[int, int],
    fed: tuple[int, int],
    width: int,
    explaining: bool,
    tile_passes: int,
    device: torch.device,
    tile_size: int | None,
    halo: int,
    batch_size: int | None,
    budget: int | None = None,
) -> RunPlan:
    """``n`` slices of ``size`` (fed at ``fed``); ``tile_passes`` passes a tiled slice needs.

    ``budget``: bytes the network's working memory may take on a CPU, instead of a share of the
    free RAM (a GPU's own free memory still bounds a run there).
    """
    h, w = size
    budget = available_bytes(device) if budget is None or device.type != "cpu" else int(budget)
    if tile_size is None:
        tile = auto_tile(*fed, width, explaining, budget, halo)
    else:
        tile = max(DOWNSAMPLING, int(tile_size) // DOWNSAMPLING * DOWNSAMPLING)
        if tile >= fed[0] and tile >= fed[1]:
            tile = None
    if fed != (h, w):
        tile = None  # a side below 16: small enough for one pass
    if tile is None:
        # On a CPU one slice at a time is fastest (bench/bench_stack.py); a GPU wants batches.
        cap = 1 if device.type == "cpu" else 16
        batch = batch_size or auto_batch(*fed, width, explaining, budget, cap=cap)
        return RunPlan(fed, None, halo, batch, 1, n, budget)
    steps = n * -(-h // tile) * -(-w // tile) * tile_passes
    return RunPlan(fed, tile, halo, 1, tile_passes, steps, budget)


def result_bytes(
    n: int, size: tuple[int, int], full: tuple[int, int], n_classes: int, n_maps: int, probabilities: bool
) -> int:
    """Bytes of every result array alive at once: model-grid logits and maps, full-size labels and
    probabilities, and full-size maps only where they differ from the model grid (scale != 1)."""
    (h, w), (H, W) = size, full
    model_grid = 4 * n * h * w * (n_classes + n_maps)
    full_size = 4 * n * H * W * (1 + (max(n_classes, 2) if probabilities else 0) + (n_maps if (h, w) != (H, W) else 0))
    return model_grid + full_size


def check_result_size(
    n: int,
    size: tuple[int, int],
    full: tuple[int, int],
    n_classes: int,
    n_maps: int,
    probabilities: bool,
    budget: int | None = None,
) -> int:
    """Refuse, before reading or allocating, a run whose results alone would not fit; return their bytes.

    ``budget`` (bytes) replaces 80% of the machine's free RAM as the limit.
    """
    need = result_bytes(n, size, full, n_classes, n_maps, probabilities)
    limit = int(RAM_SHARE * system_available_bytes()) if budget is None else int(budget)
    if need > limit:
        H, W = full
        what = f"{n_maps} map(s), labels and probabilities" if probabilities else "labels"
        room = (
            f"the memory budget is {limit / 2**30:.1f} GiB"
            if budget is not None
            else (f"only {limit / RAM_SHARE / 2**30:.1f} GiB is free")
        )
        raise InputError(
            f"The results would need {need / 2**30:.1f} GiB ({what} for {n} slice(s) of {H}x{W}), but {room}. "
            "Write them to disk with out='results.ome.zarr', explain fewer layers or classes, a crop or fewer "
            "slices, or pass scale < 1."
        )
    return need
