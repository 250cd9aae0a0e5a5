"""The Grad-CAM engine against independent computations on a tiny model."""

import numpy as np
import pytest
import torch

from napari_unet_gradcam import InputError, explain
from napari_unet_gradcam.engine import explain_tensor
from napari_unet_gradcam.methods import METHODS, get_method

from .conftest import tiny_unet

LAYERS = ("up1", "up2", "up3", "up4")


def naive_activation_and_gradient(net, x, layer, cls, region):
    """The textbook recipe: fresh hook, full forward with autograd, backward of one score."""
    store = {}
    module = dict(net.named_modules())[layer]
    handle = module.register_forward_hook(lambda m, i, o: store.update(a=o) or o.retain_grad())
    try:
        x = x.clone().requires_grad_(True)
        logits = net(x)
        if isinstance(logits, (list, tuple)):  # deep supervision: the first head is full resolution
            logits = logits[0]
        if logits.shape[1] == 1:
            score = (logits[:, 0] * region).sum() * (1 if cls == 1 else -1)
        else:
            score = (logits[:, cls] * region).sum()
        score.backward()
    finally:
        handle.remove()
    return store["a"].detach().double().numpy(), store["a"].grad.double().numpy()


def reference_map(name, A, G):
    """Each method's formula in plain numpy, written from its paper (see docs/methods.md).

    A and G are (B, C, h, w) or (B, C, d, h, w): every sum runs over all spatial axes.
    """
    relu = lambda v: np.maximum(v, 0)  # noqa: E731
    space = tuple(range(2, A.ndim))
    per_channel = (slice(None), slice(None)) + (None,) * len(space)
    if name == "gradcam":
        w = G.mean(axis=space)
        return relu(np.einsum("bc,bc...->b...", w, A))
    if name == "hirescam":
        return relu((G * A).sum(1))
    if name == "gradcam++":
        g2, g3 = G**2, G**3
        alpha = g2 / (2 * g2 + A.sum(axis=space)[per_channel] * g3 + 1e-7)
        alpha = np.where(G != 0, alpha, 0)
        w = (alpha * relu(G)).sum(axis=space)
        return relu(np.einsum("bc,bc...->b...", w, A))
    if name == "xgradcam":
        w = (G * A).sum(axis=space) / (A.sum(axis=space) + 1e-7)
        return relu(np.einsum("bc,bc...->b...", w, A))
    if name == "layercam":
        return relu((relu(G) * A).sum(1))
    if name == "eigencam":
        b, c = A.shape[:2]
        out = []
        for i in range(b):
            M = A[i].reshape(c, -1).T  # positions x channels
            Mc = M - M.mean(0)
            _, _, vt = np.linalg.svd(Mc, full_matrices=False)
            proj = Mc @ vt[0]
            if np.corrcoef(proj, Mc.sum(1))[0, 1] < 0:
                proj = -proj
            out.append(relu(proj).reshape(A.shape[2:]))
        return np.stack(out)
    raise AssertionError(name)


def assert_maps_match_formula(net, x, layer, classes, method) -> list:
    """explain_tensor's maps of one layer, every pixel the target, against reference_map; the references."""
    _, maps = explain_tensor(net, x, [layer], list(classes), get_method(method), "image")
    refs = []
    for cls in classes:
        A, G = naive_activation_and_gradient(net, x, layer, cls, torch.ones(x.shape[0], *x.shape[2:]))
        ref = reference_map(method, A, G)
        got = maps[layer, cls].double().numpy()
        assert got.shape == ref.shape
        np.testing.assert_allclose(got, ref, rtol=2e-3, atol=1e-5 * max(1.0, np.abs(ref).max()))
        refs.append(ref)
    return refs


@pytest.fixture
def batch():
    torch.manual_seed(1)
    x = torch.rand(2, 1, 48, 32)
    x[:, :, 10:30, 5:25] += 1.0
    return x


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("layer", ["up2", "up4"])
def test_every_method_matches_its_formula(method, layer, batch):
    for ref in assert_maps_match_formula(tiny_unet(width=4), batch, layer, (0, 1, 2), method):
        assert ref.max() > 0 or method in ("hirescam", "layercam")


@pytest.mark.parametrize("bilinear", [True, False])
def test_one_pass_equals_per_layer_class_recipe_with_predicted_target(bilinear, batch):
    net = tiny_unet(width=4, bilinear=bilinear)
    with torch.no_grad():
        pred = net(batch).argmax(1)
    logits, maps = explain_tensor(net, batch, LAYERS, [0, 1, 2], get_method("gradcam"), "predicted")
    assert torch.equal(logits.argmax(1), pred)
    for layer in LAYERS:
        for cls in (0, 1, 2):
            A, G = naive_activation_and_gradient(net, batch, layer, cls, (pred == cls).double())
            np.testing.assert_allclose(
                maps[layer, cls].double().numpy(), reference_map("gradcam", A, G), rtol=1e-3, atol=1e-7
            )


def _hook_count(net):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in net.modules())


def test_no_hook_remains_after_success_or_failure(batch):
    net = tiny_unet()
    explain(batch[0, 0].numpy(), net, preprocess="none")
    assert _hook_count(net) == 0
    with pytest.raises(InputError, match="Unknown layer 'up9'"):
        explain(batch[0, 0].numpy(), net, layers=("up1", "up9"))
    # A failure inside the forward pass, after the hooks went on.
    with pytest.raises(RuntimeError):
        explain_tensor(net, torch.rand(1, 2, 32, 32), LAYERS, [1], get_method("gradcam"))
    assert _hook_count(net) == 0
    assert torch.is_grad_enabled()


def test_module_that_runs_twice_is_refused(batch):
    net = tiny_unet()
    relu = torch.nn.ReLU()
    net.inc.double_conv[2] = relu
    net.inc.double_conv[5] = relu  # one module object used twice in a forward pass
    with pytest.raises(InputError, match="ran more than once"):
        explain_tensor(net, batch, ["inc.double_conv.2"], [1], get_method("gradcam"))
    assert _hook_count(net) == 0


def test_no_parameter_gradients_and_caller_grad_mode_kept(batch):
    net = tiny_unet()
    with torch.no_grad():
        explain_tensor(net, batch, LAYERS, [0, 1], get_method("gradcam"))
        assert not torch.is_grad_enabled()
    assert all(p.grad is None for p in net.parameters())


def test_graph_starts_at_first_hooked_layer(batch):
    net = tiny_unet()
    seen = {}
    net.down4.register_forward_hook(lambda m, i, o: seen.update(down4=o.requires_grad))
    net.up3.register_forward_hook(lambda m, i, o: seen.update(up3=o.requires_grad))
    explain_tensor(net, batch, ["up2", "up3"], [1], get_method("gradcam"))
    assert seen == {"down4": False, "up3": True}


def test_empty_target_gives_zero_map_not_nan(batch):
    net = tiny_unet()
    empty = torch.zeros(2, 48, 32, dtype=torch.bool)
    for name in METHODS:
        _, maps = explain_tensor(net, batch, LAYERS, [1], get_method(name), empty)
        for m in maps.values():
            assert torch.isfinite(m).all()
            if get_method(name).needs_gradients:
                assert float(m.abs().max()) == 0.0


def test_sigmoid_model_foreground_and_background_targets(batch):
    net = tiny_unet(n_classes=1)
    region = torch.ones(2, 48, 32)
    _, maps = explain_tensor(net, batch, ["up4"], [0, 1], get_method("hirescam"), "image")
    for cls in (0, 1):
        A, G = naive_activation_and_gradient(net, batch, "up4", cls, region)
        np.testing.assert_allclose(
            maps["up4", cls].double().numpy(), reference_map("hirescam", A, G), rtol=1e-3, atol=1e-7
        )


def test_pixel_and_mask_targets_through_explain():
    net = tiny_unet()
    img = np.random.default_rng(2).random((40, 40)).astype(np.float32)
    mask = np.zeros((40, 40), bool)
    mask[5:15, 5:15] = True
    r_mask = explain(img, net, layers=("up4",), method="hirescam", target=mask, preprocess="none", normalize="none")
    r_pix = explain(img, net, layers=("up4",), method="hirescam", target=(10, 10), preprocess="none", normalize="none")
    r_img = explain(img, net, layers=("up4",), method="hirescam", target="image", preprocess="none", normalize="none")
    for r in (r_mask, r_pix, r_img):
        assert all(np.isfinite(v).all() for v in r.cams.values())
    # up4 feeds the logits through a 1x1 convolution, so a one-pixel score has a gradient at
    # that pixel alone: HiResCAM (G * A, no spatial mean) is zero everywhere else.
    for cls in range(3):
        hit = np.argwhere(r_pix.cams["up4", cls] != 0)
        assert hit.tolist() in ([], [[10, 10]]), (cls, hit[:5])
    assert any(r_pix.cams["up4", c][10, 10] > 0 for c in range(3))
    assert (r_img.cams["up4", 1] != 0).sum() > 100
    with pytest.raises(InputError, match="outside"):
        explain(img, net, target=(50, 3))
    with pytest.raises(InputError, match="target mask has shape"):
        explain(img, net, target=np.ones((3, 3), bool))


def test_unknown_names_raise_clear_errors(image, net):
    with pytest.raises(InputError, match="Unknown method"):
        explain(image, net, method="smoothgrad")
    with pytest.raises(InputError, match="Unknown class 'mitochondria'.*0=background"):
        explain(image, net, classes=["mitochondria"])
    with pytest.raises(InputError, match="Unknown class 7"):
        explain(image, net, classes=[7])
    with pytest.raises(InputError, match="Unknown normalize"):
        explain(image, net, normalize="zscore")


def test_classes_by_name_and_no_layers(image, net):
    res = explain(image, net, classes=["nucleus"], layers=())
    assert res.cams == {}
    assert res.labels.shape == image.shape
    res = explain(image, net, classes=["nucleus", 2], layers=("up3",))
    assert set(res.cams) == {("up3", 1), ("up3", 2)}
    assert res.metadata["classes"] == [{"index": 1, "name": "nucleus"}, {"index": 2, "name": "boundary"}]


def test_normalisation_modes(image, net):
    raw = explain(image, net, normalize="none", target="image")
    per = explain(image, net, normalize="per-map", target="image")
    shared = explain(image, net, normalize="shared", target="image")
    hi = max(v.max() for v in raw.cams.values())
    lo = min(v.min() for v in raw.cams.values())
    for k, v in raw.cams.items():
        assert v.dtype == np.float32 and v.shape == image.shape
        if v.max() > v.min():
            np.testing.assert_allclose(per.cams[k], (v - v.min()) / (v.max() - v.min()), atol=1e-5)
        np.testing.assert_allclose(shared.cams[k], (v - lo) / (hi - lo), atol=1e-5)
    assert max(v.max() for v in shared.cams.values()) == pytest.approx(1.0)
