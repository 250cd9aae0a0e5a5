import numpy as np
import pytest
import torch

from napari_unet_gradcam import UNet


def tiny_unet(n_channels=1, n_classes=3, bilinear=True, width=4, seed=0, conv_bias=False):
    """A small, randomly initialised U-Net with non-trivial BatchNorm statistics, in eval mode."""
    torch.manual_seed(seed)
    net = UNet(n_channels, n_classes, bilinear=bilinear, width=width, conv_bias=conv_bias)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    net.class_names = ["background", "nucleus", "boundary"][:n_classes] if n_classes > 1 else ["background", "fg"]
    return net.eval()


@pytest.fixture
def net():
    return tiny_unet()


@pytest.fixture
def image():
    rng = np.random.default_rng(0)
    img = rng.random((48, 40)).astype(np.float32)
    img[10:25, 8:30] += 1.5  # a bright blob so several classes get predicted
    return img / img.max()
