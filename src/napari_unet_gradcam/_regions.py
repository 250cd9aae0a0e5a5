"""A Shapes, Labels or Points layer as a Grad-CAM target on the image's own pixel grid.

Regions are drawn in world coordinates: a rectangle on a Shapes layer with the default scale
covers other pixels of an image with scale (0.5, 0.5) and a translate. Every region is mapped
through both layers' transforms (data -> world -> image data), never compared by array index.
"""

from __future__ import annotations

import numpy as np

from .errors import UnetGradcamError


def _affine(src_to_dst, ndim: int) -> tuple[np.ndarray, np.ndarray]:
    """Matrix and offset of an affine map, sampled at the origin and the unit vectors."""
    origin = np.asarray(src_to_dst(np.zeros(ndim)), float)
    cols = [np.asarray(src_to_dst(np.eye(ndim)[i]), float) - origin for i in range(ndim)]
    return np.stack(cols, axis=1), origin


def _image_to_region(image, region) -> tuple[np.ndarray, np.ndarray]:
    """Image data coords -> region data coords (region.ndim rows, image.ndim columns)."""
    return _affine(lambda p: region.world_to_data(image.data_to_world(p)), image.ndim)


def _region_to_image(image, region) -> tuple[np.ndarray, np.ndarray]:
    return _affine(lambda p: image.world_to_data(region.data_to_world(p)), region.ndim)


def image_shape(layer, level: int = 0) -> tuple[int, ...]:
    """The layer's data shape without an RGB(A) axis (one level of a pyramid)."""
    data = layer.data[level] if getattr(layer, "multiscale", False) else layer.data
    return tuple(data.shape[:-1] if getattr(layer, "rgb", False) else data.shape)


def level_placement(layer, level: int = 0) -> tuple[tuple, tuple]:
    """(scale, translate) of one pyramid level as a layer of its own, as napari's 'extract level'
    action places it: scale times the downsample factor, centres shifted by (factor - 1) / 2."""
    scale, translate = np.asarray(layer.scale, float), np.asarray(layer.translate, float)
    if getattr(layer, "multiscale", False) and level:
        f = np.asarray(layer.downsample_factors[level], float)
        translate = translate + (f - 1) / 2 * scale
        scale = scale * f
    return tuple(scale), tuple(translate)


def level_grid(layer, level: int = 0):
    """The pixel grid of one pyramid level as a throwaway layer (its data a zero-stride view)."""
    if not getattr(layer, "multiscale", False) or not level:
        return layer
    from napari.layers import Image

    scale, translate = level_placement(layer, level)
    zeros = np.broadcast_to(np.zeros((), np.uint8), image_shape(layer, level))
    return Image(zeros, scale=scale, translate=translate)


def _labels_mask(layer, image, shape) -> np.ndarray:
    from scipy.ndimage import affine_transform

    data = np.asarray(layer.data[0] if getattr(layer, "multiscale", False) else layer.data) > 0
    k = min(len(shape), data.ndim)  # a 2-D region over a stack applies to every slice
    matrix, offset = _image_to_region(image, layer)
    matrix, offset = matrix[-k:, -k:], offset[-k:]
    sub = data[(0,) * (data.ndim - k)] if data.ndim > k else data
    mask = affine_transform(sub.astype(np.uint8), matrix, offset, output_shape=shape[-k:], order=0, cval=0) > 0
    return np.broadcast_to(mask, shape)


def _onto_image(region, image, shape):
    """The trailing dims both layers share, and a map of region data coords onto image data coords."""
    k = min(len(shape), region.ndim)  # a 2-D region over a stack applies to every slice
    matrix, offset = _region_to_image(image, region)
    matrix, offset = matrix[-k:, -k:], offset[-k:]
    return k, lambda points: np.asarray(points, float)[:, -k:] @ matrix.T + offset


def _shapes_mask(layer, image, shape) -> np.ndarray:
    from napari.layers import Shapes

    if len(layer.data) == 0:
        raise UnetGradcamError(f"The Shapes layer '{layer.name}' is empty: draw a region first.")
    k, to_image = _onto_image(layer, image, shape)
    moved = [to_image(v) for v in layer.data]
    # A throwaway layer (never added to a viewer) rasterises every shape type the way napari draws it.
    mask = Shapes(moved, shape_type=list(layer.shape_type)).to_masks(mask_shape=shape[-k:]).any(0)
    return np.broadcast_to(mask, shape)


def _points_mask(layer, image, shape) -> np.ndarray:
    if len(layer.data) == 0:
        raise UnetGradcamError(f"The Points layer '{layer.name}' has no point: click one onto the image first.")
    k, to_image = _onto_image(layer, image, shape)
    pix = np.rint(to_image(layer.data)).astype(int)
    inside = np.all((pix >= 0) & (pix < np.asarray(shape[-k:])), axis=1)
    mask = np.zeros(shape[-k:], bool)
    mask[tuple(pix[inside].T)] = True
    return np.broadcast_to(mask, shape)


MIN_VISIBLE = 16  # pixels a side: the network halves an image four times


def visible_box(layer, level: int = 0) -> tuple[slice, slice]:
    """The (y, x) pixels of one pyramid level that the canvas shows now, as slices.

    napari keeps each layer's ``corner_pixels`` (the data bounding box of the view, at the level
    it displays) up to date on every draw; it is what napari itself reads tiles by.
    """
    shape = image_shape(layer, level)[-2:]
    corners = np.asarray(layer.corner_pixels, float)[:, -2:]
    if getattr(layer, "multiscale", False):
        shown = np.asarray(layer.downsample_factors[layer.data_level], float)[-2:]
        corners = corners * shown / np.asarray(layer.downsample_factors[level], float)[-2:]
    lo = np.clip(np.floor(corners[0]), 0, shape).astype(int)
    hi = np.clip(np.ceil(corners[1]) + 1, 0, shape).astype(int)
    # napari clips the view's corners to the image, so a view beside it leaves a sliver at its edge.
    if np.any(hi - lo < MIN_VISIBLE):
        raise UnetGradcamError(
            f"No part of '{layer.name}' is on screen (or under {MIN_VISIBLE} pixels a side at this level): pan or "
            "zoom to the part to explain, or untick 'visible region only'."
        )
    return slice(lo[0], hi[0]), slice(lo[1], hi[1])


def region_mask(
    region, image, slice_index: tuple = (), level: int = 0, box: tuple[slice, slice] | None = None
) -> np.ndarray:
    """Boolean mask on the image's grid (stack and spatial shape) marking the region's pixels;
    with ``box`` (from :func:`visible_box`), on that part of the grid only."""
    from napari.layers import Labels, Points, Shapes

    image = level_grid(image, level)

    if region is None:
        raise UnetGradcamError(
            "Target 'region from layer' needs a Labels, Shapes or Points layer: draw one, then pick it."
        )
    shape = image_shape(image)
    if isinstance(region, Shapes):
        mask = _shapes_mask(region, image, shape)
    elif isinstance(region, Points):
        mask = _points_mask(region, image, shape)
    elif isinstance(region, Labels):
        mask = _labels_mask(region, image, shape)
    else:
        raise UnetGradcamError(f"'{region.name}' is not a Labels, Shapes or Points layer.")
    if slice_index:
        mask = mask[slice_index][(np.newaxis,) * len(slice_index)]
    if box is not None:
        mask = mask[..., box[0], box[1]]
    if not mask.any():
        where = " in the explained slice" if slice_index else ""
        where += " in the visible region" if box is not None else ""
        raise UnetGradcamError(
            f"The region layer '{region.name}' marks no pixel of the image{where}: draw or paint the region "
            "over the image (regions are matched in world coordinates, through both layers' scale and translate)."
        )
    return np.ascontiguousarray(mask)
