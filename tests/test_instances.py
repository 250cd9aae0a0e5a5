import cv2
import numpy as np
import pytest

from napari_unet_gradcam import explain, instance_labels, load_model
from napari_unet_gradcam.checkpoint import default_model_path
from napari_unet_gradcam.synthetic import generate


def two_touching_nuclei():
    sem = np.zeros((40, 60), np.uint8)
    cv2.circle(sem, (20, 20), 12, 1, -1)
    cv2.circle(sem, (43, 20), 12, 1, -1)
    edge = np.zeros_like(sem)
    cv2.circle(edge, (20, 20), 12, 1, 2)
    cv2.circle(edge, (43, 20), 12, 1, 2)
    sem[edge > 0] = 2
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
