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


def _with(attr, max_radius=99.0):
    """The first seed whose artefact draw switches ``attr`` on (with nuclei up to ``max_radius``)."""
    from napari_unet_gradcam.synthetic import _Artefacts

    draws = ((s, _Artefacts(s, 128, 128)) for s in range(200))
    return next(s for s, a in draws if getattr(a, attr) and a.radius_mean < max_radius)


def test_artefact_samples_are_deterministic_consistent_and_leave_plain_samples_alone():
    for seed in range(6):
        a, b = generate(seed, (128, 128), artefacts=True), generate(seed, (128, 128), artefacts=True)
        assert (a.image == b.image).all() and (a.classes == b.classes).all()
        assert ((a.classes > 0) == (a.instances > 0)).all()
    plain = generate(3, (128, 128))
    assert (plain.image == generate(3, (128, 128), artefacts=False).image).all()
    assert not (plain.image == generate(3, (128, 128), artefacts=True).image).all()


def test_cytoplasmic_signal_surrounds_nuclei_dimmer_than_they_are():
    from scipy import ndimage

    from napari_unet_gradcam.synthetic import _Artefacts

    art = _Artefacts(_with("cytoplasm", max_radius=12), 128, 128)
    inst = np.zeros((128, 128), np.int32)
    inst[54:74, 54:74] = 1
    cells = art.cells(inst, (inst > 0).astype(np.float32))
    dist = ndimage.distance_transform_edt(inst == 0)
    ring = cells[(dist > 2) & (dist < 4)]
    assert 0 < ring.mean() < 0.7  # around the nucleus, dimmer than it (label: background)
    assert cells[dist > 4 * art.radius_mean + 5].max() < 1e-3  # nothing far from any nucleus


def test_micronuclei_are_labelled_nuclei():
    seed = _with("micronuclei")
    with_mn = generate(seed, (128, 128), artefacts=True)
    sizes = np.bincount(with_mn.instances.ravel())[1:]
    assert (sizes[sizes > 0] <= np.pi * 5.5**2).any()  # small objects, in the labels
