"""Keep freed activation buffers for reuse in processes this package owns (Linux glibc only).

glibc returns large freed blocks to the kernel by heuristics that depend on the process's
history, so a run often page-faults activation and gradient buffers in afresh (16 MiB
each for the bundled model on 512x512). Pinning the thresholds removes those faults: predict()
79 -> 67 ms and explain() 178 -> 148 ms on repeated runs, and the run-to-run spread with them
(bench/bench_ratio.py). The price is that up to ``TRIM_THRESHOLD`` of freed memory stays in the
process for the next run.

Only the command line calls this, because it owns its process; inside napari the choice
belongs to the user (README, "Speed"). ``UNET_GRADCAM_MALLOC_TUNING=0`` opts out.
"""

from __future__ import annotations

import ctypes
import os
import platform

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # the most mallopt accepts on 64-bit glibc
TRIM_THRESHOLD = 512 << 20


def pin_glibc_thresholds() -> bool:
    """Serve blocks up to 32 MiB from the heap and keep up to 512 MiB freed; True if applied."""
    if os.environ.get("UNET_GRADCAM_MALLOC_TUNING", "1") == "0":
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(None)  # the running process's own libc: no library search
        ok = libc.mallopt(M_MMAP_THRESHOLD, ctypes.c_int(MMAP_THRESHOLD))
        return bool(ok and libc.mallopt(M_TRIM_THRESHOLD, ctypes.c_int(TRIM_THRESHOLD)))
    except (OSError, AttributeError):
        return False
