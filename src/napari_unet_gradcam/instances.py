"""Instance labels from semantic labels: nuclei split along the predicted boundary class."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

_GROW_STEPS = 8


def _split_slice(sem: np.ndarray, interior: Sequence[int], boundary: Sequence[int]) -> np.ndarray:
    core = np.isin(sem, interior).astype(np.uint8)
    edge = np.isin(sem, boundary)
    n, inst = cv2.connectedComponents(core, connectivity=4, ltype=cv2.CV_32S)
    # Each interior grows into the boundary pixels around it, so touching nuclei stay apart.
    kernel = np.ones((3, 3), np.uint8)
    for _ in range(_GROW_STEPS):
        free = edge & (inst == 0)
        if not free.any():
            break
        grown = cv2.dilate(inst.astype(np.float32), kernel).astype(np.int32)
        take = free & (grown > 0)
        if not take.any():
            break
        inst[take] = grown[take]
    # Boundary pieces with no interior (very small nuclei) become nuclei of their own.
    rest = (edge & (inst == 0)).astype(np.uint8)
    if rest.any():
        m, extra = cv2.connectedComponents(rest, connectivity=8, ltype=cv2.CV_32S)
        inst[extra > 0] = extra[extra > 0] + n - 1
    return inst


def instance_labels(labels: np.ndarray, interior: Sequence[int] = (1,), boundary: Sequence[int] = (2,)) -> np.ndarray:
    """One label per nucleus (int32), slice by slice for stacks, numbered uniquely across the stack.

    ``interior`` and ``boundary`` are class indices. With no boundary class this is connected
    components of the foreground.
    """
    labels = np.asarray(labels)
    if labels.ndim < 2:
        raise ValueError(f"labels need at least two axes; got shape {labels.shape}")
    flat = labels.reshape(-1, *labels.shape[-2:])
    out = np.zeros(flat.shape, np.int32)
    offset = 0
    for i, sem in enumerate(flat):
        inst = _split_slice(sem, interior, boundary)
        inst[inst > 0] += offset
        offset = max(offset, int(inst.max(initial=0)))
        out[i] = inst
    return out.reshape(labels.shape)


def classes_for_instances(class_names: Sequence[str]) -> tuple[list[int], list[int]]:
    """Interior and boundary class indices from a model's class names."""
    names = [n.lower() for n in class_names]
    boundary = [i for i, n in enumerate(names) if "boundary" in n or "border" in n or "contour" in n]
    interior = [i for i in range(1, len(names)) if i not in boundary]
    return interior, boundary
