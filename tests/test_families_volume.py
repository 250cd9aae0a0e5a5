"""explain() and predict() through the public API with any torch.nn.Module, 2-D and 3-D."""

import numpy as np
import pytest
import torch

from napari_unet_gradcam import InputError, explain, predict
from napari_unet_gradcam.engine import explain_tensor, map_to_input
from napari_unet_gradcam.families import conform, propose_layers, size_divisor, spatial_dims
from napari_unet_gradcam.methods import get_method
from napari_unet_gradcam.volume import fed_size

from .test_engine import naive_activation_and_gradient, reference_map
from .test_engine_nd import tiny3d


@pytest.fixture
def vol():
    rng = np.random.default_rng(0)
    v = rng.random((13, 17, 19)).astype(np.float32)
    v[4:10, 5:12, 6:15] += 1.0
    return v


def test_conform_reads_channels_classes_and_dims_off_any_module():
    net = tiny3d(n_channels=2, n_classes=4)
    assert not hasattr(net, "n_channels")
    assert conform(net) is net
    assert (net.n_channels, net.n_classes, spatial_dims(net), size_divisor(net)) == (2, 4, 3, (16, 16, 16))
    net.size_divisor = 4
    assert size_divisor(net) == (4, 4, 4)
    assert propose_layers(net) == []
    with pytest.raises(InputError, match="No decoder layers are known for a TinyUNet"):
        explain(np.zeros((8, 8, 8), np.float32), net)
    with pytest.raises(InputError, match="has no Conv2d or Conv3d"):
        conform(torch.nn.Linear(3, 3))


@pytest.mark.parametrize("divisor", [4, 16])
def test_explain_a_volume_is_the_engine_on_the_padded_volume(vol, divisor):
    net = tiny3d(seed=1)
    net.size_divisor = divisor
    res = explain(vol, net, layers=["dec1", "dec0"], method="xgradcam", normalize="none", preprocess="none")
    assert res.labels.shape == vol.shape and res.probabilities.shape == (3, *vol.shape)
    assert res.metadata["spatial_dims"] == 3 and res.layers == ["dec1", "dec0"]
    fed = fed_size(vol.shape, (divisor,) * 3)
    assert fed == ((16, 20, 20) if divisor == 4 else (32, 32, 32))
    x = torch.from_numpy(np.pad(vol, [(0, f - s) for f, s in zip(fed, vol.shape, strict=True)], mode="reflect"))
    logits, maps = explain_tensor(
        net, x[None, None], ["dec1", "dec0"], [0, 1, 2], get_method("xgradcam"), valid=vol.shape
    )
    np.testing.assert_array_equal(res.labels, logits[0, :, :13, :17, :19].argmax(0).numpy())
    for key, m in maps.items():
        ref = map_to_input(m, fed, vol.shape)[0].numpy()
        np.testing.assert_allclose(res.cams[key], ref, rtol=1e-5, atol=1e-6)
    assert any(res.cams[k].max() > 0 for k in res.cams)


def test_voxel_and_mask_targets_and_independent_formula(vol):
    net = tiny3d(seed=2)
    net.size_divisor = 4
    v = vol[:12, :16, :16]  # no padding: the plain-hook reference sees the same volume
    mask = np.zeros(v.shape, bool)
    mask[2:6, 3:9, 4:12] = True
    res = explain(v, net, layers=["dec0"], classes=[1], method="gradcam", target=mask, normalize="none")
    A, G = naive_activation_and_gradient(net, torch.from_numpy(v)[None, None], "dec0", 1, torch.from_numpy(mask)[None])
    np.testing.assert_allclose(res.cams["dec0", 1], reference_map("gradcam", A, G)[0], rtol=2e-3, atol=1e-6)
    hit = explain(v, net, layers=["dec0"], classes=[1], method="hirescam", target=(5, 6, 7), normalize="none")
    # dec0 feeds the logits through a 1x1x1 convolution: a one-voxel score has a gradient there alone.
    assert np.argwhere(hit.cams["dec0", 1] != 0).tolist() in ([], [[5, 6, 7]])
    assert hit.metadata["target"] == "voxel"


def test_predict_a_stack_of_multichannel_volumes():
    net = tiny3d(seed=3, n_channels=2)
    net.size_divisor = 4
    stack = np.random.default_rng(1).random((2, 2, 8, 12, 16)).astype(np.float32)  # (N, C, Z, Y, X)
    labels = predict(stack, net, preprocess="none")
    assert labels.shape == (2, 8, 12, 16)
    with torch.no_grad():
        ref = net(torch.from_numpy(stack)).argmax(1).numpy()
    np.testing.assert_array_equal(labels, ref)
    moved = predict(np.moveaxis(stack, 1, -1), net, preprocess="none", channel_axis=-1)
    np.testing.assert_array_equal(moved, ref)


def test_volume_refusals_name_the_fix(vol, monkeypatch):
    net = tiny3d()
    with pytest.raises(InputError, match="give a volume"):
        explain(vol[0], net, layers=["dec0"])
    with pytest.raises(InputError, match="resample a volume"):
        predict(vol, net, scale=0.5)
    with pytest.raises(InputError, match="Target voxel"):
        explain(vol, net, layers=["dec0"], target=(50, 1, 1))
    monkeypatch.setattr("napari_unet_gradcam.volume.available_bytes", lambda device: 1 << 20)
    with pytest.raises(InputError, match="pass a smaller tile_size or halo, crop the volume"):
        explain(vol, net, layers=["dec0"])
    monkeypatch.undo()
    with pytest.raises(InputError, match="out= writes 2-D results"):
        explain(vol, net, layers=["dec0"], out="results.ome.zarr")


def test_2d_module_through_the_api_and_its_size_rule():
    net = tiny3d(spatial_dims=2, seed=5)
    net.size_divisor = 4
    img = np.random.default_rng(2).random((20, 24)).astype(np.float32)
    res = explain(img, net, layers=["dec0"], method="layercam", target="image", normalize="none", preprocess="none")
    A, G = naive_activation_and_gradient(net, torch.from_numpy(img)[None, None], "dec0", 2, torch.ones(1, 20, 24))
    np.testing.assert_allclose(res.cams["dec0", 2], reference_map("layercam", A, G)[0], rtol=2e-3, atol=1e-6)
    with pytest.raises(InputError, match="not multiples of 4x4.*pad it to 20x24"):
        explain(img[:, :22], net, layers=["dec0"])
    # Pytorch-UNet's width and bilinear are not reported for a network that has neither.
    assert res.metadata["model"] == {
        "class": "TinyUNet", "sha256": None, "path": None, "n_channels": 1, "n_classes": 3
    }  # fmt: skip


def test_deep_supervised_2d_module_tiled_equals_whole():
    net = tiny3d(spatial_dims=2, seed=6, deep_supervision=True)
    net.size_divisor = 4
    img = np.random.default_rng(4).random((64, 48)).astype(np.float32)
    kw = {"layers": ["dec1", "dec0"], "method": "gradcam", "normalize": "none", "preprocess": "none"}
    whole = explain(img, net, **kw)
    tiled = explain(img, net, tile_size=32, halo=16, **kw)
    assert tiled.metadata["tile_size"] == 32
    np.testing.assert_array_equal(tiled.labels, whole.labels)
    for key, m in whole.cams.items():
        np.testing.assert_allclose(tiled.cams[key], m, rtol=1e-4, atol=1e-5 * max(1.0, float(m.max())))
