"""napari sample data: synthetic nuclei made on the fly, the same every time."""

from __future__ import annotations

from .synthetic import nuclei_2d, nuclei_3d


def nuclei_2d_sample():
    return [(nuclei_2d(seed=7), {"name": "nuclei 2D", "colormap": "gray"}, "image")]


def nuclei_3d_sample():
    return [(nuclei_3d(seed=11), {"name": "nuclei 3D", "colormap": "gray", "axis_labels": ("z", "y", "x")}, "image")]
