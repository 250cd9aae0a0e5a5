"""Instance labels from semantic labels: nuclei split along the predicted boundary class."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

_GROW_STEPS = 8
_FOUR = ndimage.generate_binary_structure(2, 1)
_EIGHT = ndimage.generate_binary_structure(2, 2)


def _max3x3(a: np.ndarray) -> np.ndarray:
    """Maximum over each pixel's 3x3 neighbourhood (inside the image): a grey dilation.

    Two shifted maxima per axis; four times faster than ndimage.maximum_filter on int32 labels.
    """
    rows = a.copy()
    np.maximum(rows[:, 1:], a[:, :-1], out=rows[:, 1:])
    np.maximum(rows[:, :-1], a[:, 1:], out=rows[:, :-1])
    out = rows.copy()
    np.maximum(out[1:], rows[:-1], out=out[1:])
    np.maximum(out[:-1], rows[1:], out=out[:-1])
    return out


def _split_slice(sem: np.ndarray, interior: Sequence[int], boundary: Sequence[int]) -> np.ndarray:
    core = np.isin(sem, interior)
    edge = np.isin(sem, boundary)
    inst, n = ndimage.label(core, _FOUR, output=np.int32)
    # Each interior grows into the boundary pixels around it, so touching nuclei stay apart.
    for _ in range(_GROW_STEPS):
        free = edge & (inst == 0)
        if not free.any():
            break
        grown = _max3x3(inst)  # where two nuclei meet, the higher label wins
        take = free & (grown > 0)
        if not take.any():
            break
        inst[take] = grown[take]
    # Boundary pieces with no interior (very small nuclei) become nuclei of their own.
    rest = edge & (inst == 0)
    if rest.any():
        extra, _ = ndimage.label(rest, _EIGHT, output=np.int32)
        inst[extra > 0] = extra[extra > 0] + n
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
