"""Regions and points are matched in world coordinates, through both layers' transforms."""

import numpy as np
import pytest
from napari.layers import Image, Labels, Points, Shapes

from napari_unet_gradcam._regions import region_mask
from napari_unet_gradcam.errors import UnetGradcamError


def rect(y0, x0, y1, x1):
    return np.array([[y0, x0], [y0, x1], [y1, x1], [y1, x0]], float)


def test_shapes_rectangle_over_a_scaled_translated_image():
    image = Image(np.zeros((100, 120)), scale=(0.5, 0.5), translate=(10, 20))
    # World rectangle y 20..30, x 30..40 -> image pixels y 20..40, x 20..40.
    shapes = Shapes([rect(20, 30, 30, 40)], shape_type="rectangle")
    mask = region_mask(shapes, image)
    ys, xs = np.nonzero(mask)
    assert mask.shape == (100, 120)
    assert (ys.min(), ys.max(), xs.min(), xs.max()) == (20, 40, 20, 40)


def test_shapes_with_their_own_scale():
    image = Image(np.zeros((64, 64)))
    shapes = Shapes([rect(2, 3, 5, 6)], shape_type="rectangle", scale=(4, 4))  # world 8..20, 12..24
    ys, xs = np.nonzero(region_mask(shapes, image))
    assert (ys.min(), ys.max(), xs.min(), xs.max()) == (8, 20, 12, 24)


def test_labels_region_resampled_onto_the_image_grid():
    image = Image(np.zeros((40, 40)), scale=(0.5, 0.5))
    painted = np.zeros((10, 10), np.uint8)
    painted[2:4, 5:7] = 3
    labels = Labels(painted, scale=(2, 2))  # one label pixel = 4x4 image pixels
    mask = region_mask(labels, image)
    # napari puts pixel centres at integer data coordinates: label rows 2-3 span world 3..7,
    # which holds the centres of image rows 6..13 (world 0.5 * row).
    expected = np.zeros((40, 40), bool)
    expected[6:14, 18:26] = True
    np.testing.assert_array_equal(mask, expected)


def test_labels_with_the_same_transform_is_the_identity():
    painted = np.zeros((30, 20), np.int32)
    painted[5:9, 3:17] = 1
    image = Image(np.zeros((30, 20)), scale=(0.3, 0.7), translate=(5, -2))
    mask = region_mask(Labels(painted, scale=(0.3, 0.7), translate=(5, -2)), image)
    np.testing.assert_array_equal(mask, painted > 0)


def test_points_become_single_pixels():
    image = Image(np.zeros((50, 50)), scale=(2, 2), translate=(1, 1))
    points = Points([[21, 41], [500, 500]])  # the second lies outside the image
    mask = region_mask(points, image)
    assert list(zip(*np.nonzero(mask), strict=True)) == [(10, 20)]


def test_2d_shapes_over_a_stack_apply_to_every_slice_or_the_one_explained():
    image = Image(np.zeros((5, 32, 32)), scale=(3, 1, 1))
    shapes = Shapes([rect(4, 4, 8, 8)], shape_type="rectangle")
    mask = region_mask(shapes, image)
    assert mask.shape == (5, 32, 32) and all(mask[z, 6, 6] for z in range(5))
    one = region_mask(shapes, image, slice_index=(2,))
    assert one.shape == (1, 32, 32) and one[0, 6, 6]


def test_3d_points_mark_their_own_slice():
    image = Image(np.zeros((5, 32, 32)), scale=(2, 1, 1))
    mask = region_mask(Points([[4, 10, 11]]), image)  # world z 4 -> slice 2
    assert list(zip(*np.nonzero(mask), strict=True)) == [(2, 10, 11)]


def test_region_outside_the_image_is_refused_clearly():
    image = Image(np.zeros((32, 32)), translate=(1000, 1000))
    with pytest.raises(UnetGradcamError, match="marks no pixel.*world coordinates"):
        region_mask(Shapes([rect(0, 0, 10, 10)], shape_type="rectangle"), image)
    with pytest.raises(UnetGradcamError, match="empty"):
        region_mask(Shapes([]), image)
    with pytest.raises(UnetGradcamError, match="Labels, Shapes or Points"):
        region_mask(None, image)


def test_a_region_on_a_pyramid_level_grid():
    base = np.zeros((256, 256), np.float32)
    pyramid = Image([base, base[::2, ::2], base[::4, ::4]], multiscale=True, scale=(0.5, 0.5), translate=(10, 20))
    shapes = Shapes([rect(30, 40, 40, 50)], shape_type="rectangle")
    mask = region_mask(shapes, pyramid, level=1)  # level 1: scale 1, translate (10.25, 20.25)
    ys, xs = np.nonzero(mask)
    assert mask.shape == (128, 128)
    assert (ys.min(), ys.max(), xs.min(), xs.max()) == (20, 29, 20, 29)
    full = region_mask(shapes, pyramid)  # level 0: scale 0.5, translate (10, 20)
    ys, xs = np.nonzero(full)
    assert full.shape == (256, 256) and (ys.min(), ys.max(), xs.min(), xs.max()) == (40, 60, 40, 60)
