"""segmentation_models_pytorch (smp) models: loading their saved folder, decoder layers, explain().

Needs the [smp] extra (and a torchvision built for the installed torch): `make test-smp`.
Without smp only the last test runs, the message a user without it gets.
"""

import json
import sys

import numpy as np
import pytest
import tifffile
import torch

from napari_unet_gradcam import CheckpointError, explain
from napari_unet_gradcam.bundles import load_any
from napari_unet_gradcam.engine import explain_tensor
from napari_unet_gradcam.families import layer_titles, propose_layers, size_divisor
from napari_unet_gradcam.methods import METHODS, get_method
from napari_unet_gradcam.smp_folder import SMP_NETWORKS

from .test_cli import cli
from .test_engine import assert_maps_match_formula, naive_activation_and_gradient, reference_map

UNET = {"encoder_name": "resnet18", "encoder_depth": 3, "decoder_channels": [16, 8, 4], "in_channels": 1, "classes": 3}


@pytest.fixture(scope="module")
def smp():
    return pytest.importorskip("segmentation_models_pytorch")


def _randomise_norms(net):
    for m in net.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    return net.eval()


def _saved(smp, folder, name="Unet", **kw):
    torch.manual_seed(5)
    net = _randomise_norms(getattr(smp, name)(encoder_weights=None, **{**UNET, **kw}))
    net.save_pretrained(folder)
    return net


@pytest.fixture(scope="module")
def unet(smp, tmp_path_factory):
    folder = tmp_path_factory.mktemp("smp_unet")
    original = _saved(smp, folder, activation="sigmoid")
    return folder, original, load_any(folder, device="cpu")


def test_save_pretrained_folder_loads_the_same_network(unet):
    folder, original, net = unet
    assert (folder / "model.safetensors").exists() and json.loads((folder / "config.json").read_text())["_model_class"]
    assert type(net).__name__ == "Unet" and net.family == "smp" and net.smp_activation == "sigmoid"
    assert (net.n_channels, net.n_classes, net.spatial_dims) == (1, 3, 2)
    for k, v in original.state_dict().items():
        torch.testing.assert_close(net.state_dict()[k], v)
    x = torch.rand(1, 1, 32, 48)
    with torch.no_grad():  # the activation is left out: the loaded network gives the logits
        torch.testing.assert_close(torch.sigmoid(net(x)), original(x))
    assert propose_layers(net) == ["decoder.blocks.0", "decoder.blocks.1", "decoder.blocks.2"]
    assert list(layer_titles(net).values())[0] == "decoder 1/3 (coarsest): decoder.blocks.0"


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_on_a_loaded_smp_unet_matches_its_formula(unet, method):
    _, _, net = unet
    torch.manual_seed(6)
    x = torch.rand(2, 1, 32, 40)
    x[:, :, 8:24, 10:30] += 1.0
    for layer in ("decoder.blocks.0", "decoder.blocks.2"):
        refs = assert_maps_match_formula(net, x, layer, (0, 1, 2), method)
        assert max(r.max() for r in refs) > 0


def test_explain_and_the_cli_take_the_folder(unet, tmp_path):
    folder, original, net = unet
    image = np.random.default_rng(0).random((32, 48)).astype(np.float32)
    res = explain(image, net, preprocess="none", target="image")
    assert res.layers == ["decoder.blocks.0", "decoder.blocks.1", "decoder.blocks.2"]
    with torch.no_grad():
        ref = original(torch.from_numpy(image)[None, None]).argmax(1)[0].numpy()
    np.testing.assert_array_equal(res.labels, ref)
    tifffile.imwrite(tmp_path / "img.tif", image)
    r = cli("explain", tmp_path / "img.tif", "--model", folder, "--preprocess", "none", "--out", tmp_path / "out")
    assert r.returncode == 0, r.stderr
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "out" / "img_labels.tif"), res.labels)
    meta = json.loads((tmp_path / "out" / "img_metadata.json").read_text())
    assert meta["layers"] == res.layers and meta["model"]["class"] == "Unet"


@pytest.mark.parametrize("name", SMP_NETWORKS)
def test_decoder_layers_of_each_architecture_run_coarse_to_fine(smp, name):
    torch.manual_seed(7)
    net = _randomise_norms(getattr(smp, name)(encoder_name="resnet18", encoder_weights=None, classes=2))
    layers = propose_layers(net)
    assert len(layers) >= 2 and all(n in dict(net.named_modules()) for n in layers)
    side = 256 if name == "PAN" else 64  # PAN pools its deepest map 8x more (to 1x1 on 64x64)
    d = size_divisor(net)[0]  # smp's own input check agrees: a side off the divisor is refused
    with torch.no_grad():
        if d > 1:
            with pytest.raises(RuntimeError, match="divisible"):
                net(torch.rand(1, 3, side + d // 2, side))
        else:
            assert net(torch.rand(1, 3, side + 6, side)).shape[-2:] == (side + 6, side)
    x = torch.rand(1, 3, side, side)
    _, maps = explain_tensor(net, x, layers, [1], get_method("gradcam"), "image")
    sizes = []
    for layer in (layers[0], layers[-1]):
        A, G = naive_activation_and_gradient(net, x, layer, 1, torch.ones(1, side, side))
        ref = reference_map("gradcam", A, G)
        np.testing.assert_allclose(maps[layer, 1].numpy(), ref, rtol=2e-3, atol=1e-5 * max(1.0, np.abs(ref).max()))
        sizes.append(A.shape[-1])
    assert sizes[0] < sizes[1]  # coarse first


def _edit(folder, **changes):
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))


def test_hostile_or_broken_folders_are_refused_with_one_line(smp, tmp_path):
    cases = [
        ({"_model_class": "SwinUnet"}, "loadable ones are Unet"),
        ({"_model_class": "os.system"}, "loadable ones"),
        ({"encoder_name": "__import__('os').system('touch pwned')"}, "not a name"),
        ({"decoder_attention_type": "$eval"}, "never evaluated"),
        ({"kwargs": {"a": 1}}, "not an argument of smp's Unet"),
        ({"encoder_name": "no-such-encoder"}, "not an encoder"),
        ({"encoder_name": ["resnet18"]}, "not an encoder"),
        ({"decoder_channels": [100000, 8, 4]}, "above the limit"),
        ({"classes": 5}, "does not fit"),
    ]
    for i, (change, match) in enumerate(cases):
        folder = tmp_path / str(i)
        _saved(smp, folder)
        _edit(folder, **change)
        with pytest.raises(CheckpointError, match=match):
            load_any(folder, device="cpu")
    assert not (tmp_path / "pwned").exists()
    folder = tmp_path / "pickled"
    _saved(smp, folder)
    (folder / "model.safetensors").unlink()
    torch.save({"net": _saved(smp, tmp_path / "x")}, folder / "pytorch_model.bin")  # a whole module
    with pytest.raises(CheckpointError, match="refused"):
        load_any(folder)
    (folder / "pytorch_model.bin").unlink()
    with pytest.raises(CheckpointError, match="no weights"):
        load_any(folder)
    (folder / "model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="safetensors"):
        load_any(folder)


@pytest.mark.parametrize(("encoder", "weights"), [("resnet18", "imagenet"), ("tu-resnet18", True)])
def test_pretrained_encoder_weights_are_never_downloaded(smp, tmp_path, encoder, weights):
    original = _saved(smp, tmp_path, encoder_name=encoder)
    _edit(tmp_path, encoder_weights=weights)  # smp (or timm) would fetch ImageNet weights from the hub
    net = load_any(tmp_path, device="cpu")
    for k, v in original.state_dict().items():
        torch.testing.assert_close(net.state_dict()[k], v)


def test_without_smp_the_folder_says_how_to_install_it(tmp_path, monkeypatch):
    (tmp_path / "config.json").write_text(json.dumps({"_model_class": "Unet", **UNET}))
    (tmp_path / "model.safetensors").write_bytes(b"")
    monkeypatch.setitem(sys.modules, "segmentation_models_pytorch", None)  # import fails, as when absent
    with pytest.raises(CheckpointError) as err:
        load_any(tmp_path)
    message = str(err.value)
    assert "pip install 'napari-unet-gradcam[smp]'" in message and "torchvision" in message
    assert "\n" not in message
