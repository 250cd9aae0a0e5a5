"""One run's labels, probabilities, instances and maps agree; scale, threshold and padding rules."""

import numpy as np
import pytest
import torch
from scipy import ndimage

from napari_unet_gradcam import Cancelled, InputError, explain, load_model, predict
from napari_unet_gradcam.image import prepare
from napari_unet_gradcam.synthetic import nuclei_2d

from .conftest import tiny_unet
from .test_engine import naive_activation_and_gradient
from .test_upstream import balanced


@pytest.fixture(scope="module")
def bundled():
    return load_model(device="cpu")


@pytest.fixture(scope="module")
def img():
    return nuclei_2d(3, (150, 170))


@pytest.mark.parametrize("tile_size", [None, 64])
@pytest.mark.parametrize("scale", [1.0, 0.5, 0.37, 1.5])
def test_labels_probabilities_and_instances_agree(img, bundled, scale, tile_size):
    net = bundled
    res = explain(img, net, scale=scale, tile_size=tile_size, layers=("up3",), classes=[1])
    assert res.labels.shape == img.shape and res.probabilities.shape == (3, *img.shape)
    # Every label is its pixel's most probable class (ties aside, argmax of the same logits).
    own = np.take_along_axis(res.probabilities, res.labels[None], 0)[0]
    np.testing.assert_array_equal(own, res.probabilities.max(0))
    assert len(np.unique(res.labels)) == 3
    inst = res.instances()
    assert not (inst > 0)[res.labels == 0].any()
    # Foreground left out of the instances: only specks of the boundary class, under 20 px each.
    left, n_left = ndimage.label((res.labels > 0) & (inst == 0))
    assert (res.labels[left > 0] == 2).all()
    assert n_left == 0 or np.bincount(left.ravel())[1:].max() < 20
    np.testing.assert_array_equal(predict(img, net, scale=scale, tile_size=tile_size), res.labels)


@pytest.mark.parametrize("tile_size", [None, 64])
@pytest.mark.parametrize("threshold", [None, 0.35, 0.65])
def test_one_channel_labels_follow_the_threshold(img, threshold, tile_size):
    net = balanced(tiny_unet(n_classes=1, width=8, seed=6), img, 1.0)
    res = explain(img, net, threshold=threshold, tile_size=tile_size, layers=())
    t = 0.5 if threshold is None else threshold
    np.testing.assert_array_equal(res.labels, (res.probabilities[1] > t).astype(np.int32))
    assert 0 < res.labels.mean() < 1
    assert res.metadata["threshold"] == t


def test_threshold_is_refused_where_it_means_nothing(img):
    with pytest.raises(InputError, match="one-channel"):
        predict(img, tiny_unet(n_classes=3), threshold=0.3)
    with pytest.raises(InputError, match=r"threshold must be a probability"):
        predict(img, tiny_unet(n_classes=1), threshold=1.5)


def test_scale_gives_upstreams_network_size():
    img = np.zeros((303, 235), np.uint8)
    assert prepare(img, 1, scale=0.5).batch.shape[-2:] == (151, 117)  # int(), not round()
    assert prepare(img, 1, scale=1 / 3).batch.shape[-2:] == (101, 78)
    with pytest.raises(InputError, match="no pixels"):
        prepare(img, 1, scale=0.001)


@pytest.mark.parametrize("layer", ["up2", "up4"])
def test_padding_is_in_no_score_and_no_statistic(layer):
    """A 10x12 image runs padded to 16x16; Grad-CAM must see only the 10x12 pixels."""
    net = tiny_unet(width=4)
    img = np.random.default_rng(4).random((10, 12)).astype(np.float32)
    res = explain(img, net, layers=(layer,), target="image", preprocess="none", normalize="none")
    x = torch.from_numpy(np.pad(img, ((0, 6), (0, 4)), mode="reflect"))[None, None]
    region = torch.zeros(1, 16, 16)
    region[:, :10, :12] = 1
    for cls in range(3):
        A, G = naive_activation_and_gradient(net, x, layer, cls, region)
        s = 16 // A.shape[-1]
        vh, vw = -(-10 // s), -(-12 // s)  # layer positions that cover image pixels
        w = G[..., :vh, :vw].mean(axis=(2, 3))
        cam = np.maximum(np.einsum("bc,bchw->bhw", w, A), 0)
        up = torch.nn.functional.interpolate(torch.from_numpy(cam)[:, None], size=(16, 16), mode="bilinear")
        ref = up[0, 0, :10, :12].numpy()
        np.testing.assert_allclose(res.cams[layer, cls], ref, rtol=2e-3, atol=1e-6 * max(1.0, np.abs(ref).max()))


def test_result_is_typed_and_keeps_its_metadata(img):
    import json

    net = tiny_unet(width=4)
    res = explain(img, net, layers=("up4", "up2"), classes=["boundary", 0], normalize="none")
    assert res.layers == ["up4", "up2"] and res.classes == [2, 0]
    assert res.class_names == ["background", "nucleus", "boundary"]
    maps = res.stacked()
    assert maps.shape == (2, 2, *img.shape)
    np.testing.assert_array_equal(maps[1, 0], res.cams["up2", 2])
    back = json.loads(res.to_json())
    assert back["layers"] == ["up4", "up2"] and back["classes"] == [
        {"index": 2, "name": "boundary"},
        {"index": 0, "name": "background"},
    ]
    assert set(res.metadata) >= {"method", "target", "ranges", "scale", "threshold", "tile_size", "model", "version"}


def test_a_single_2d_image_reports_its_forward_pass_and_each_class(net, image):
    seen = []
    explain(image, net, layers=("up3", "up4"), progress=lambda done, total: seen.append((done, total)))
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]  # forward, then one step per class (3 classes)
    seen.clear()
    explain(image, net, method="eigencam", progress=lambda done, total: seen.append((done, total)))
    assert seen == [(1, 1)]  # no gradients: the forward pass is the whole run


def test_cancel_between_classes_of_one_image(net, image):
    calls = []

    def cancel():
        calls.append(1)
        return len(calls) > 2  # before the run, after the forward pass, then: stop

    with pytest.raises(Cancelled):
        explain(image, net, cancel=cancel)
    assert len(calls) == 3
