"""How much memory a run may take, and the tile and batch sizes that keep it there."""

from __future__ import annotations

import os

import torch

from .model import DOWNSAMPLING

# Working bytes per input pixel per unit of network width, untiled, CPU float32. Explaining (all
# four decoder layers, three classes) measured 32 with bench/bench_memory.py (68 before the lean
# backward of frozen.py and one class's gradients at a time); forward only, 29. Both leave a margin.
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
