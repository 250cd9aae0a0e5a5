import numpy as np
import pytest
import torch

from napari_unet_gradcam import UNet, load_model
from napari_unet_gradcam.checkpoint import build_model

from .conftest import tiny_unet

# Key names as milesial/Pytorch-UNet's UNet(n_channels=3, n_classes=2, bilinear=False) writes them.
UPSTREAM_KEYS = [
    "inc.double_conv.0.weight",
    "inc.double_conv.1.running_var",
    "inc.double_conv.3.weight",
    "inc.double_conv.4.num_batches_tracked",
    "down1.maxpool_conv.1.double_conv.0.weight",
    "down4.maxpool_conv.1.double_conv.4.bias",
    "up1.up.weight",
    "up1.up.bias",
    "up1.conv.double_conv.0.weight",
    "up4.conv.double_conv.4.running_mean",
    "outc.conv.weight",
    "outc.conv.bias",
]


def test_state_dict_keys_and_shapes_match_upstream():
    sd = UNet(3, 2, bilinear=False).state_dict()
    for key in UPSTREAM_KEYS:
        assert key in sd
    assert sd["inc.double_conv.0.weight"].shape == (64, 3, 3, 3)
    assert sd["down4.maxpool_conv.1.double_conv.0.weight"].shape == (1024, 512, 3, 3)
    assert sd["up1.up.weight"].shape == (1024, 512, 2, 2)
    assert sd["outc.conv.weight"].shape == (2, 64, 1, 1)
    assert not any(k.endswith("double_conv.0.bias") for k in sd)
    bil = UNet(1, 3, bilinear=True).state_dict()
    assert "up1.up.weight" not in bil
    assert bil["down4.maxpool_conv.1.double_conv.0.weight"].shape == (512, 512, 3, 3)
    assert bil["up1.conv.double_conv.0.weight"].shape == (512, 1024, 3, 3)  # mid = in // 2


@pytest.mark.parametrize("size", [(16, 16), (37, 53), (64, 23)])
def test_any_input_size_gives_same_size_logits(size):
    net = tiny_unet(bilinear=False)
    with torch.no_grad():
        out = net(torch.rand(2, 1, *size))
    assert out.shape == (2, 3, *size)


@pytest.mark.parametrize("bilinear", [True, False])
@pytest.mark.parametrize("conv_bias", [False, True])
@pytest.mark.parametrize("prefix", ["", "module.", "_orig_mod."])
def test_upstream_checkpoint_loads_with_identical_logits(tmp_path, bilinear, conv_bias, prefix):
    ref = tiny_unet(n_channels=3, n_classes=2, bilinear=bilinear, width=8, conv_bias=conv_bias)
    # As upstream train.py saves it: the state_dict with mask_values added to it.
    sd = {prefix + k: v for k, v in ref.state_dict().items()}
    sd["mask_values"] = [0, 255]
    path = tmp_path / "checkpoint_epoch5.pth"
    torch.save(sd, path)
    net = load_model(path, device="cpu")
    assert (net.n_channels, net.n_classes, net.width, net.bilinear) == (3, 2, 8, bilinear)
    assert net.conv_bias == conv_bias
    assert net.mask_values == [0, 255]
    assert not net.training
    x = torch.rand(1, 3, 40, 56)
    with torch.no_grad():
        assert torch.equal(net(x), ref(x))
    assert len(net.checkpoint_sha256) == 64


def test_build_model_infers_width():
    ref = tiny_unet(width=12)
    assert build_model(ref.state_dict()).width == 12


def test_model_output_is_finite_on_real_sized_input():
    net = tiny_unet()
    with torch.no_grad():
        y = net(torch.from_numpy(np.random.rand(1, 1, 128, 128).astype(np.float32)))
    assert torch.isfinite(y).all()
