"""Which layers the widget offers, kept in step with the viewer's layer list.

The image choice is an explicit value (the user's pick) rather than whatever the combo box
happens to hold after a reset: it survives renames, other layers becoming active (a heatmap
after a run, a Labels layer when the widget opens), and the widget being closed and reopened.
"""

from __future__ import annotations

from ._layers import mark


def _unwrap(obj):
    """napari hands plugins proxies of its objects; identity checks need the objects themselves."""
    return getattr(obj, "__wrapped__", obj)


def image_layers(viewer) -> list:
    from napari.layers import Image

    return [ly for ly in viewer.layers if isinstance(ly, Image) and not mark(ly)]


def region_layers(viewer) -> list:
    from napari.layers import Labels, Points, Shapes

    # Our own result labels are a fine region ("why these nuclei?"); grid views are not.
    return [ly for ly in viewer.layers if isinstance(ly, (Labels, Shapes, Points))]


def pick_source(viewer, current) -> object | None:
    """The user's choice while it exists, else the active image, else the top-most image."""
    images = image_layers(viewer)
    if any(current is ly for ly in images):
        return current
    active = _unwrap(viewer.layers.selection.active)
    if any(active is ly for ly in images):
        return active
    return images[-1] if images else None
