"""The OpenCV instance splitting this project used until it dropped OpenCV, kept as the reference.

bench/bench_instances.py and tests/test_instances.py check that the scipy version gives the very
same labels; both skip that check where OpenCV is not installed (it is no longer a dependency).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def split_slice_cv2(sem: np.ndarray, interior: Sequence[int], boundary: Sequence[int]) -> np.ndarray:
    import cv2

    core = np.isin(sem, interior).astype(np.uint8)
    edge = np.isin(sem, boundary)
    n, inst = cv2.connectedComponents(core, connectivity=4, ltype=cv2.CV_32S)
    kernel = np.ones((3, 3), np.uint8)
    for _ in range(8):
        free = edge & (inst == 0)
        if not free.any():
            break
        grown = cv2.dilate(inst.astype(np.float32), kernel).astype(np.int32)
        take = free & (grown > 0)
        if not take.any():
            break
        inst[take] = grown[take]
    rest = (edge & (inst == 0)).astype(np.uint8)
    if rest.any():
        _, extra = cv2.connectedComponents(rest, connectivity=8, ltype=cv2.CV_32S)
        inst[extra > 0] = extra[extra > 0] + n - 1
    return inst
