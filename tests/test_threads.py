"""Two threads sharing one cached model get the same results as one thread alone."""

import threading

import numpy as np

from napari_unet_gradcam import explain
from napari_unet_gradcam.engine import model_lock

from .conftest import tiny_unet


def test_two_threads_on_one_model_give_correct_results():
    net = tiny_unet(width=4)
    images = [np.random.default_rng(i).random((48, 48)).astype(np.float32) for i in range(2)]
    expected = [explain(img, net, method="gradcam", normalize="none") for img in images]
    results: dict[int, object] = {}
    errors = []

    def work(i):
        try:
            for _ in range(5):
                results[i] = explain(images[i], net, method="gradcam", normalize="none")
        except Exception as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors
    for i in range(2):
        np.testing.assert_array_equal(results[i].labels, expected[i].labels)
        for k, v in expected[i].cams.items():
            np.testing.assert_allclose(results[i].cams[k], v, rtol=1e-5, atol=1e-7)
    assert sum(len(m._forward_hooks) for m in net.modules()) == 0


def test_model_lock_is_per_model():
    a, b = tiny_unet(), tiny_unet()
    assert model_lock(a) is model_lock(a)
    assert model_lock(a) is not model_lock(b)
