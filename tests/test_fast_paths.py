"""The lean input-gradient backward gives autograd's gradients, and steps aside when it must."""

from contextlib import contextmanager

import pytest
import torch

from napari_unet_gradcam import fast_paths
from napari_unet_gradcam.engine import forward_and_gradients, resolve_modules
from napari_unet_gradcam.fast_paths import run_net
from napari_unet_gradcam.model import DoubleConv

from .conftest import tiny_unet


@contextmanager
def plain_autograd(net):
    """A no-op hook on every DoubleConv: the lean path must step aside, leaving plain autograd."""
    handles = [m.register_forward_hook(lambda *a: None) for m in net.modules() if isinstance(m, DoubleConv)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@contextmanager
def counting(monkeypatch):
    calls = []
    apply = fast_paths._ConvBnRelu.apply
    monkeypatch.setattr(fast_paths._ConvBnRelu, "apply", lambda *a: calls.append(1) or apply(*a))
    yield calls


@pytest.mark.parametrize("bilinear", [True, False])
@pytest.mark.parametrize("conv_bias", [False, True])
@pytest.mark.parametrize("size", [(48, 64), (50, 70)])  # the second makes the decoder pad
@pytest.mark.parametrize(
    "layers",
    [("up1", "up2", "up3", "up4"), ("down4", "up3"), ("inc", "down2", "up4")],  # skips with and without gradients
)
def test_gradients_equal_plain_autograd(monkeypatch, bilinear, conv_bias, size, layers):
    net = tiny_unet(bilinear=bilinear, conv_bias=conv_bias, width=8)
    x = torch.rand(2, 1, *size)
    modules = resolve_modules(net, layers)
    with counting(monkeypatch) as calls:
        logits, _, grads = forward_and_gradients(net, x, modules, [0, 1, 2], "image")
    assert calls, "the lean path was not taken"
    with plain_autograd(net):
        ref_logits, _, ref = forward_and_gradients(net, x, modules, [0, 1, 2], "image")
    assert torch.equal(logits, ref_logits)
    for k, g in ref.items():
        assert g.abs().max() > 0, k
        torch.testing.assert_close(grads[k], g, rtol=1e-4, atol=1e-5 * float(g.abs().max()))


def test_forward_is_bit_identical_to_predict_path():
    net = tiny_unet(width=8)
    x = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        ref = run_net(net, x)
    modules = resolve_modules(net, ["up1"])
    logits, _, _ = forward_and_gradients(net, x, modules, [1], "image")
    assert torch.equal(logits, ref)


def test_training_in_eval_mode_keeps_weight_gradients(monkeypatch):
    """Fine-tuning with frozen BatchNorm statistics needs parameter gradients: autograd must run."""
    net = tiny_unet(width=4)
    with counting(monkeypatch) as calls:
        net(torch.rand(1, 1, 32, 32)).sum().backward()
    assert not calls
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for n, p in net.named_parameters() if "up2" in n)


def test_hooked_submodule_still_runs_and_is_explained(monkeypatch):
    net = tiny_unet(width=4)
    modules = resolve_modules(net, ["up2.conv.double_conv.0", "up3"])
    x = torch.rand(1, 1, 32, 32)
    _, acts, grads = forward_and_gradients(net, x, modules, [1], "image")
    assert acts["up2.conv.double_conv.0"].shape[1] == net.up2.conv.double_conv[0].out_channels
    assert grads["up2.conv.double_conv.0", 1].abs().max() > 0


def test_no_gradient_wanted_means_no_lean_path(monkeypatch):
    net = tiny_unet(width=4)
    with counting(monkeypatch) as calls, torch.no_grad():
        run_net(net, torch.rand(1, 1, 32, 32))
    assert not calls


def test_second_derivatives_match_plain_autograd(monkeypatch):
    """create_graph=True (e.g. a gradient penalty) differentiates the lean backward itself."""
    net = tiny_unet(width=4)
    for p in net.parameters():
        p.requires_grad_(False)  # frozen, so the lean path runs
    x0 = torch.rand(1, 1, 32, 32, dtype=torch.float64)
    net = net.double()

    def grad_norm(x):
        (g,) = torch.autograd.grad(net(x)[:, 1].sum(), x, create_graph=True)
        return (g**2).sum()

    x = x0.clone().requires_grad_(True)
    with counting(monkeypatch) as calls:
        (lean,) = torch.autograd.grad(grad_norm(x), x)
    assert calls
    with plain_autograd(net):
        x = x0.clone().requires_grad_(True)
        (ref,) = torch.autograd.grad(grad_norm(x), x)
    torch.testing.assert_close(lean, ref)
