import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from napari_unet_gradcam import explain, instance_labels, load_model, predict
from napari_unet_gradcam.checkpoint import default_model_path
from napari_unet_gradcam.instances import _max3x3, _split_slice, classes_for_instances
from napari_unet_gradcam.synthetic import generate


def two_touching_nuclei():
    """Two discs of radius 12 that overlap, each with a two-pixel rim of the boundary class."""
    yy, xx = np.mgrid[:40, :60]
    sem = np.zeros((40, 60), np.uint8)
    for cx in (20, 43):
        r = np.hypot(yy - 20, xx - cx)
        sem[r <= 12] = 1
        sem[(r <= 12) & (r > 10)] = 2
    return sem


def test_touching_nuclei_are_split_along_the_boundary():
    sem = two_touching_nuclei()
    inst = instance_labels(sem)
    assert set(np.unique(inst)) == {0, 1, 2}
    assert ((inst > 0) == (sem > 0)).all()  # every nucleus pixel, boundary included, gets a nucleus
    # without the boundary class the two would be one blob
    assert len(np.unique(instance_labels(sem > 0, interior=(1,), boundary=()))) == 2


def test_stack_labels_are_unique_across_slices():
    sem = np.stack([two_touching_nuclei()] * 3)
    inst = instance_labels(sem)
    assert inst.shape == sem.shape
    assert len(np.unique(inst)) == 7  # background + 2 per slice


def test_bundled_model_counts_nuclei_on_synthetic_image():
    if not default_model_path().exists():
        pytest.skip("the bundled model is not installed")
    sample = generate(12345, (256, 256))  # a seed outside the training and validation sets
    res = explain(sample.image, load_model(), layers=())
    inst = res.instances()
    n_true = len(np.unique(sample.instances)) - 1
    n_found = len(np.unique(inst)) - 1
    assert abs(n_found - n_true) <= 0.25 * n_true, (n_found, n_true)


def test_neighbourhood_maximum_is_a_grey_dilation():
    rng = np.random.default_rng(3)
    for shape in [(1, 1), (1, 7), (6, 1), (33, 47)]:
        a = rng.integers(0, 50, shape).astype(np.int32)
        assert np.array_equal(_max3x3(a), ndimage.maximum_filter(a, size=3, mode="nearest"))


@pytest.mark.slow
def test_same_labels_as_the_opencv_version_on_the_bundled_model():
    """OpenCV was dropped for scipy/numpy; where it is still installed, the labels must not change."""
    pytest.importorskip("cv2")
    if not default_model_path().exists():
        pytest.skip("no bundled model")
    sys.path.insert(0, str(Path(__file__).parents[1] / "bench"))
    from _cv2_instances import split_slice_cv2

    net = load_model()
    interior, boundary = classes_for_instances(net.class_names)
    for seed in (50_000, 50_001, 50_002):
        sem = predict(generate(seed, (256, 256)).image, net)
        assert np.array_equal(_split_slice(sem, interior, boundary), split_slice_cv2(sem, interior, boundary))


def disc(shape, centre, radius, rim=2):
    """A nucleus of the interior class with a boundary rim, as the bundled model draws one."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    r = np.hypot(yy - centre[0], xx - centre[1])
    sem = np.zeros(shape, np.uint8)
    sem[r <= radius] = 1
    sem[(r <= radius) & (r > radius - rim)] = 2
    return sem


def test_piece_cut_off_a_large_nucleus_by_inner_boundary_stays_part_of_it():
    sem = disc((80, 80), (40, 40), 30)
    sem[:, 55:57][sem[:, 55:57] > 0] = 2  # a crack of boundary pixels across the nucleus' side
    assert len(np.unique(_split_slice(sem, [1], [2]))) == 3  # the raw split: two pieces
    inst = instance_labels(sem)
    assert set(np.unique(inst)) == {0, 1}
    assert ((inst > 0) == (sem > 0)).all()


def test_small_nucleus_beside_a_large_one_stays_apart():
    """A nucleus a fifth the area of its neighbour, touching it along a short stretch."""
    sem = np.maximum(disc((80, 100), (40, 35), 25), disc((80, 100), (40, 70), 11))
    inst = instance_labels(sem)
    assert len(np.unique(inst)) == 3


def test_boundary_specks_are_not_nuclei_but_small_boundary_blobs_are():
    sem = disc((60, 60), (30, 30), 10)
    sem[2:4, 2:4] = 2  # 4 px of boundary class alone: noise
    sem[45:50, 45:50] = 2  # 25 px: a nucleus too small to have an interior
    inst = instance_labels(sem)
    assert len(np.unique(inst)) == 3
    assert inst[3, 3] == 0 and inst[47, 47] > 0
    assert inst.max() == 2  # numbered 1..n with the speck gone: max() is the count the CLI prints
