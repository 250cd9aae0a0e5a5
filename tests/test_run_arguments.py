"""Odd arguments get one clear InputError before any work; 0 means 'automatic' tile size everywhere."""

import numpy as np
import pytest
import torch

from napari_unet_gradcam import InputError, explain, predict

from .conftest import tiny_unet

IMG = np.random.default_rng(0).random((40, 48)).astype(np.float32)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"batch_size": -1}, "batch_size must be a whole number >= 1; got -1"),
        ({"batch_size": 1.5}, "batch_size must be a whole number"),
        ({"tile_size": float("nan")}, "tile_size must be a whole number"),
        ({"tile_size": -5}, "tile_size must be a whole number >= 0"),
        ({"tile_size": 8}, "below 16"),
        ({"tile_size": 32, "halo": -1}, "halo must be a whole number >= 0"),
        ({"scale": float("inf")}, "scale must be a positive, finite number"),
        ({"scale": "a"}, "scale must be a positive number"),
        ({"channel_axis": "0"}, "channel_axis must be an axis index"),
        ({"layers": None}, "layers must be module names"),
        ({"layers": ["up4.conv.double_conv.1"]}, "BatchNorm2d whose output the next in-place ReLU overwrites"),
    ],
)
def test_odd_arguments_are_refused_clearly(kwargs, message):
    with pytest.raises(InputError, match=message):
        explain(IMG, tiny_unet(width=4), **kwargs)


def test_tile_size_zero_is_automatic_as_in_the_widget_and_cli():
    net = tiny_unet(width=4)
    np.testing.assert_array_equal(predict(IMG, net, tile_size=0), predict(IMG, net))
    assert explain(IMG, net, tile_size=0).metadata["tile_size"] is None


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_models_in_other_precisions_say_what_to_do(dtype):
    with pytest.raises(InputError, match="call net.float\\(\\) first"):
        predict(IMG, tiny_unet(width=4).to(dtype))


def test_tensors_with_gradients_and_dataparallel_models_are_accepted():
    net = tiny_unet(width=4)
    expected = predict(IMG, net)
    np.testing.assert_array_equal(predict(torch.tensor(IMG, requires_grad=True), net), expected)
    np.testing.assert_array_equal(predict(IMG, torch.nn.DataParallel(net)), expected)
