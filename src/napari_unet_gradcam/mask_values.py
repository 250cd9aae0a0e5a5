"""A checkpoint's ``mask_values``: the pixel value of each class in the masks it was trained on.

Upstream's train.py records the sorted distinct values of the training masks (scalars, or RGB
triples for colour masks). With ``--classes`` larger than the masks' values the list is shorter
than the network's outputs; upstream's predict.py loads that and writes 0 for a class without a
value, and so do we.
"""

from __future__ import annotations

from numbers import Real

import numpy as np

from .errors import CheckpointError


def _is_value(v) -> bool:
    if isinstance(v, (list, tuple)):
        return len(v) > 0 and all(isinstance(c, Real) and not isinstance(c, bool) for c in v)
    return isinstance(v, Real) and not isinstance(v, bool)


def checked_mask_values(values, n_outputs: int, source: str) -> list:
    """``values`` as a list; one value per class at most, each a number or an RGB triple."""
    if values is None:
        return list(range(n_outputs))
    if not isinstance(values, (list, tuple)) or not values or not all(_is_value(v) for v in values):
        raise CheckpointError(
            f"Checkpoint {source}: 'mask_values' must be a list of numbers (or of RGB triples); got "
            f"{str(values)[:80]!r}. Fix or remove 'mask_values'."
        )
    if len(values) > n_outputs:
        raise CheckpointError(
            f"Checkpoint {source}: 'mask_values' has {len(values)} entries but the network predicts only "
            f"{n_outputs} classes; fix or remove 'mask_values'."
        )
    if len({len(v) if isinstance(v, (list, tuple)) else 0 for v in values}) > 1:
        raise CheckpointError(f"Checkpoint {source}: 'mask_values' mixes numbers and RGB triples; fix it.")
    return [list(v) if isinstance(v, (list, tuple)) else v for v in values]


def labels_as_mask_values(labels: np.ndarray, mask_values: list) -> np.ndarray:
    """Class indices to the checkpoint's mask values, as upstream's predict.py writes its masks.

    A binary ``[0, 1]`` becomes 0/255 (upstream saves a 1-bit image, which viewers show as 0/255);
    RGB triples add a last axis of 3; a class without a value (a short list) is 0.
    """
    table = np.asarray([0, 255] if list(mask_values) == [0, 1] else mask_values)
    lo, hi = float(table.min()), float(table.max())
    if table.dtype.kind == "f" and not np.array_equal(table, np.round(table)):
        dtype = np.float32
    elif lo >= 0 and hi <= 255:
        dtype = np.uint8
    elif lo >= 0 and hi <= 65535:
        dtype = np.uint16
    else:
        dtype = np.int32
    out = np.zeros(labels.shape + table.shape[1:], dtype)
    for i, v in enumerate(table):
        out[labels == i] = v
    return out
