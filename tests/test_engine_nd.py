"""The engine on 3-D networks and on networks with several output heads, against independent formulas."""

import numpy as np
import pytest
import torch
from torch import nn

from napari_unet_gradcam import InputError
from napari_unet_gradcam.engine import explain_tensor, full_resolution, map_to_input
from napari_unet_gradcam.methods import METHODS, get_method

from .test_engine import naive_activation_and_gradient, reference_map


def _block(conv, norm, cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(conv(cin, cout, 3, padding=1), norm(cout), nn.ReLU())


class TinyUNet(nn.Module):
    """A two-level U-Net in 2-D or 3-D, optionally deep-supervised (a list of heads, full resolution first)."""

    def __init__(self, spatial_dims: int = 3, n_channels: int = 1, n_classes: int = 3, deep_supervision=False):
        super().__init__()
        conv, norm, up = (
            (nn.Conv3d, nn.BatchNorm3d, nn.ConvTranspose3d)
            if spatial_dims == 3
            else (nn.Conv2d, nn.BatchNorm2d, nn.ConvTranspose2d)
        )
        pool = nn.MaxPool3d if spatial_dims == 3 else nn.MaxPool2d
        self.enc0 = _block(conv, norm, n_channels, 4)
        self.enc1 = nn.Sequential(pool(2), _block(conv, norm, 4, 8))
        self.bottom = nn.Sequential(pool(2), _block(conv, norm, 8, 8))
        self.up1 = up(8, 8, 2, stride=2)
        self.dec1 = _block(conv, norm, 16, 8)
        self.up0 = up(8, 4, 2, stride=2)
        self.dec0 = _block(conv, norm, 8, 4)
        self.head = conv(4, n_classes, 1)
        self.aux = conv(8, n_classes, 1)
        self.deep_supervision = deep_supervision

    def forward(self, x):
        e0 = self.enc0(x)
        e1 = self.enc1(e0)
        d1 = self.dec1(torch.cat([e1, self.up1(self.bottom(e1))], 1))
        d0 = self.dec0(torch.cat([e0, self.up0(d1)], 1))
        out = self.head(d0)
        return [out, self.aux(d1)] if self.deep_supervision else out


def tiny3d(seed=0, **kw) -> TinyUNet:
    torch.manual_seed(seed)
    net = TinyUNet(**kw)
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    return net.eval()


@pytest.fixture
def volume():
    torch.manual_seed(3)
    x = torch.rand(2, 1, 12, 16, 20)
    x[:, :, 3:9, 4:12, 5:15] += 1.0
    return x


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("layer", ["dec1", "dec0"])
def test_every_method_matches_its_formula_in_3d(method, layer, volume):
    net = tiny3d()
    _, maps = explain_tensor(net, volume, [layer], [0, 2], get_method(method), "image")
    for cls in (0, 2):
        A, G = naive_activation_and_gradient(net, volume, layer, cls, torch.ones(2, 12, 16, 20))
        assert A.ndim == 5
        ref = reference_map(method, A, G)
        got = maps[layer, cls].double().numpy()
        assert got.shape == ref.shape == (2, *A.shape[2:])
        np.testing.assert_allclose(got, ref, rtol=2e-3, atol=1e-5 * max(1.0, np.abs(ref).max()))
        assert ref.max() > 0 or method in ("hirescam", "layercam")


def test_predicted_target_in_3d_equals_per_layer_class_recipe(volume):
    net = tiny3d(seed=1)
    with torch.no_grad():
        pred = net(volume).argmax(1)
    logits, maps = explain_tensor(net, volume, ["dec1", "dec0"], [0, 1, 2], get_method("gradcam++"))
    assert torch.equal(logits.argmax(1), pred)
    for layer in ("dec1", "dec0"):
        for cls in (0, 1, 2):
            A, G = naive_activation_and_gradient(net, volume, layer, cls, (pred == cls).double())
            np.testing.assert_allclose(
                maps[layer, cls].double().numpy(), reference_map("gradcam++", A, G), rtol=2e-3, atol=1e-7
            )


def test_deep_supervision_explains_the_full_resolution_head(volume):
    plain, supervised = tiny3d(seed=2), tiny3d(seed=2, deep_supervision=True)
    logits_p, maps_p = explain_tensor(plain, volume, ["dec1"], [1], get_method("gradcam"), "image")
    logits_s, maps_s = explain_tensor(supervised, volume, ["dec1"], [1], get_method("gradcam"), "image")
    assert logits_s.shape == (2, 3, 12, 16, 20)
    torch.testing.assert_close(logits_s, logits_p)
    torch.testing.assert_close(maps_s["dec1", 1], maps_p["dec1", 1])
    A, G = naive_activation_and_gradient(supervised, volume, "dec1", 1, torch.ones(2, 12, 16, 20))
    np.testing.assert_allclose(maps_s["dec1", 1].numpy(), reference_map("gradcam", A, G), rtol=2e-3, atol=1e-7)


def test_full_resolution_picks_the_largest_head_of_lists_tuples_and_dicts():
    small, big = torch.zeros(1, 2, 4, 4, 4), torch.ones(1, 2, 8, 8, 8)
    assert full_resolution(big) is big
    assert full_resolution([small, big]) is big
    assert full_resolution((big, small)) is big
    assert full_resolution({"aux": small, "out": big}) is big
    with pytest.raises(InputError, match="not a tensor of logits"):
        full_resolution({"loss": 3.0})


def test_padding_is_in_no_score_and_no_statistic_in_3d():
    """A padded volume explains exactly as the same volume cropped, for the channel-weight methods."""
    net = tiny3d(seed=4)
    torch.manual_seed(5)
    x = torch.rand(1, 1, 8, 12, 16)
    valid = (7, 10, 13)
    cropped = x[..., : valid[0], : valid[1], : valid[2]]
    for name in ("gradcam", "xgradcam", "eigencam"):
        _, padded_maps = explain_tensor(net, x, ["dec0"], [1], get_method(name), "image", valid=valid)
        # The reference: sums over the valid positions only, from the same padded pass's A and G.
        region = torch.zeros(1, 8, 12, 16)
        region[:, : valid[0], : valid[1], : valid[2]] = 1
        A, G = naive_activation_and_gradient(net, x, "dec0", 1, region)
        ref = reference_map(name, A[..., :7, :10, :13], G[..., :7, :10, :13])
        got = padded_maps["dec0", 1].numpy()[..., :7, :10, :13]
        np.testing.assert_allclose(got, ref, rtol=2e-3, atol=1e-6 * max(1.0, np.abs(ref).max()))
    assert cropped.shape[2:] == valid


def test_map_to_input_in_3d_is_trilinear_over_covered_voxels():
    m = torch.arange(8, dtype=torch.float32).reshape(1, 2, 2, 2)
    up = map_to_input(m, (8, 8, 8), (7, 8, 8))
    ref = torch.nn.functional.interpolate(m[:, None], size=(8, 8, 8), mode="trilinear", align_corners=False)
    torch.testing.assert_close(up, ref[:, 0, :7])
    # A floored odd size: the last voxel that no layer position covers repeats the edge.
    edge = map_to_input(m, (5, 4, 4), (5, 4, 4))
    torch.testing.assert_close(edge[:, 4], edge[:, 3])


def test_2d_network_of_any_module_still_explains():
    net = tiny3d(spatial_dims=2, n_channels=2)
    torch.manual_seed(0)
    x = torch.rand(1, 2, 20, 24)
    _, maps = explain_tensor(net, x, ["dec0"], [1], get_method("layercam"), "image")
    A, G = naive_activation_and_gradient(net, x, "dec0", 1, torch.ones(1, 20, 24))
    np.testing.assert_allclose(maps["dec0", 1].numpy(), reference_map("layercam", A, G), rtol=2e-3, atol=1e-7)
