"""The synthetic sample data after OpenCV was dropped: the same blur, disks and boundaries as before."""

import numpy as np
import pytest

from napari_unet_gradcam.synthetic import _blur, _boundaries, _disk, generate


def test_boundaries_mark_rims_and_the_line_between_touching_nuclei():
    inst = np.zeros((12, 20), np.int32)
    inst[2:10, 2:9] = 1
    inst[2:10, 9:17] = 2
    edge = _boundaries(inst, 1)
    assert edge[2, 5] and edge[5, 2] and edge[5, 8] and edge[5, 9]  # outer rim and both sides of the contact
    assert not edge[5, 5] and not edge[5, 12] and not edge[0, 0]  # interiors and background stay unmarked
    assert _boundaries(inst, 2).sum() > edge.sum()


def test_disk_is_clipped_at_the_array_edge():
    a = np.zeros((10, 10), np.float32)
    _disk(a, (9, 0), 3, 0.5)
    assert a.sum() == 0.5 * np.count_nonzero(np.add.outer(np.arange(-9, 1) ** 2, np.arange(10) ** 2) <= 9)


def test_samples_are_deterministic_and_consistent():
    a, b = generate(3, (96, 80)), generate(3, (96, 80))
    assert (a.image == b.image).all() and (a.instances == b.instances).all()
    assert ((a.classes > 0) == (a.instances > 0)).all() and set(np.unique(a.classes)) <= {0, 1, 2}


@pytest.mark.parametrize("sigma", [0.5, 1.3, 2.7, 8.0])
def test_blur_matches_opencv(sigma):
    cv2 = pytest.importorskip("cv2")  # the reference; no longer a dependency
    a = np.random.default_rng(1).random((70, 90)).astype(np.float32)
    np.testing.assert_allclose(_blur(a, sigma), cv2.GaussianBlur(a, (0, 0), sigma), atol=1e-5)


@pytest.mark.parametrize("radius", [1, 2, 3, 6])
def test_disk_matches_opencv(radius):
    cv2 = pytest.importorskip("cv2")
    a, b = np.zeros((20, 20), np.float32), np.zeros((20, 20), np.float32)
    _disk(a, (8, 11), radius, 0.7)
    cv2.circle(b, (11, 8), radius, 0.7, -1)
    np.testing.assert_array_equal(a, b)
