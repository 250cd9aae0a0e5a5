"""Map normalisation, kept apart from the maps themselves so raw values stay available.

``shared`` puts every map of a run on one scale, so a weak layer looks weak next to a strong one;
``per-map`` stretches each map to [0, 1] on its own, which shows shape but hides magnitude.
"""

from __future__ import annotations

from .errors import InputError

MODES = ("per-map", "shared", "none")


def scales(ranges: dict, mode: str) -> dict:
    """Each map's (low, high) that becomes [0, 1]: its own range, or with ``shared`` the run's."""
    if mode == "shared" and ranges:
        lo = min(r[0] for r in ranges.values())
        hi = max(r[1] for r in ranges.values())
        return {k: (lo, hi) for k in ranges}
    return dict(ranges)


def normalize_maps(cams: dict, mode: str) -> dict:
    """Rescale ``cams`` in place; return each map's (low, high) raw range that became [0, 1]."""
    if mode not in MODES:
        raise InputError(f"Unknown normalize {mode!r}: choose one of {', '.join(MODES)}.")
    ranges = scales({k: (float(v.min()), float(v.max())) if v.size else (0.0, 0.0) for k, v in cams.items()}, mode)
    if mode != "none":
        for k, v in cams.items():
            lo, hi = ranges[k]
            if hi > lo:
                v -= lo
                v /= hi - lo
            else:  # a flat map (an empty target, say) is all zeros, never NaN
                v[...] = 0.0
    return ranges
