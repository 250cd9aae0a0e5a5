"""MONAI and nnU-Net networks, 2-D and 3-D: loading from their folders, decoder layers, explain()."""

import json

import numpy as np
import pytest
import torch

from napari_unet_gradcam import CheckpointError, explain
from napari_unet_gradcam.bundles import load_any, load_monai_bundle, load_nnunet, nnunet_normalize
from napari_unet_gradcam.engine import explain_tensor
from napari_unet_gradcam.families import layer_titles, propose_layers, size_divisor
from napari_unet_gradcam.methods import get_method

from .test_engine import naive_activation_and_gradient, reference_map

nets = pytest.importorskip("monai.networks.nets")


def _randomise_norms(net):
    torch.manual_seed(0)
    for m in net.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    return net.eval()


def _monai(name, dims):
    torch.manual_seed(1)
    if name == "BasicUNet":
        kw = {"features": (4, 4, 8, 8, 16, 4)}
    elif name == "UNet":
        kw = {"channels": (4, 8, 16, 16), "strides": (2, 2, 2), "num_res_units": 1}
    else:
        kw = {"kernel_size": [3, 3, 3, 3], "strides": [1, 2, 2, 2], "upsample_kernel_size": [2, 2, 2]}
        kw["filters"] = [4, 8, 16, 16]
    kw = {"spatial_dims": dims, "in_channels": 1, "out_channels": 3, **kw}
    return _randomise_norms(getattr(nets, name)(**kw)), kw


PROPOSED = {
    "BasicUNet": ["upcat_4", "upcat_3", "upcat_2", "upcat_1"],
    "UNet": ["model.1.submodule.1.submodule.2", "model.1.submodule.2"],
    "DynUNet": ["upsamples.0", "upsamples.1", "upsamples.2"],
}


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("name", list(PROPOSED))
def test_monai_decoder_layers_coarse_to_fine_and_maps_match_the_formula(name, dims):
    net, _ = _monai(name, dims)
    layers = propose_layers(net)
    assert layers == PROPOSED[name]
    x = torch.rand(1, 1, *(32,) * dims)
    sizes = []
    for layer in (layers[0], layers[-1]):
        _, maps = explain_tensor(net, x, [layer], [1], get_method("gradcam++"), "image")
        A, G = naive_activation_and_gradient(net, x, layer, 1, torch.ones(1, *(32,) * dims))
        ref = reference_map("gradcam++", A, G)
        np.testing.assert_allclose(maps[layer, 1].numpy(), ref, rtol=2e-3, atol=1e-5 * max(1, np.abs(ref).max()))
        sizes.append(A.shape[2])
    assert sizes[0] < sizes[1]  # coarse first
    assert list(layer_titles(net).values())[0].startswith("decoder 1/")


def _bundle(tmp_path, name, dims, **network_def):
    net, kw = _monai(name, dims)
    (tmp_path / "configs").mkdir()
    (tmp_path / "models").mkdir()
    config = {"dims": dims, "network_def": {"_target_": f"monai.networks.nets.{name}", **kw, "spatial_dims": "@dims"}}
    config["network_def"].update(network_def)
    (tmp_path / "configs" / "inference.json").write_text(json.dumps(config))
    channel_def = {"0": "background", "1": "liver", "2": "tumour"}
    meta = {"network_data_format": {"outputs": {"pred": {"channel_def": channel_def}}}}
    (tmp_path / "configs" / "metadata.json").write_text(json.dumps(meta))
    torch.save(net.state_dict(), tmp_path / "models" / "model.pt")
    return net


@pytest.mark.parametrize(("name", "dims"), [("BasicUNet", 3), ("DynUNet", 2)])
def test_monai_bundle_loads_the_same_network_and_explains_through_the_api(tmp_path, name, dims):
    original = _bundle(tmp_path, name, dims)
    net = load_any(tmp_path, device="cpu")
    assert type(net).__name__ == name and net.family == "monai"
    assert (net.n_channels, net.n_classes, net.spatial_dims) == (1, 3, dims)
    assert net.class_names == ["background", "liver", "tumour"]
    for k, v in original.state_dict().items():
        torch.testing.assert_close(net.state_dict()[k], v)
    image = np.random.default_rng(0).random((32,) * dims).astype(np.float32)
    res = explain(image, net, preprocess="none", normalize="none", target="image")
    assert res.layers == PROPOSED[name][: len(res.layers)] and res.labels.shape == image.shape
    with torch.no_grad():
        ref = original(torch.from_numpy(image)[None, None]).argmax(1)[0].numpy()
    np.testing.assert_array_equal(res.labels, ref)
    # A volume below twice the poolings' product is padded (the deepest instance norm needs 2 voxels a side).
    if dims == 3:
        assert explain(image[:20, :16], net, preprocess="none").labels.shape == image[:20, :16].shape


def test_monai_bundle_refuses_code_and_other_networks(tmp_path):
    for i, (override, match) in enumerate(
        [
            ({"_target_": "monai.networks.nets.SwinUNETR"}, "loadable ones are MONAI's"),
            ({"_target_": "os.system"}, "loadable ones"),
            ({"features": "$__import__('os').getcwd()"}, "expressions could run code"),
            ({"_requires_": "@dims"}, "does not evaluate"),
            ({"features": [4, 4, 8, 8, 10**6, 4]}, "above the limit"),
        ]
    ):
        folder = tmp_path / str(i)
        folder.mkdir()
        _bundle(folder, "BasicUNet", 3, **override)
        with pytest.raises(CheckpointError, match=match):
            load_monai_bundle(folder)
    folder = tmp_path / "pickled"
    folder.mkdir()
    _bundle(folder, "BasicUNet", 3)
    torch.save({"model": _monai("BasicUNet", 3)[0]}, folder / "models" / "model.pt")  # a whole module
    with pytest.raises(CheckpointError, match="refused"):
        load_monai_bundle(folder)


dna = pytest.importorskip("dynamic_network_architectures")


def _nnunet_folder(tmp_path, dims, labels=None):
    conv = "torch.nn.modules.conv.Conv3d" if dims == 3 else "torch.nn.modules.conv.Conv2d"
    norm = f"torch.nn.modules.instancenorm.InstanceNorm{dims}d"
    strides = [[1] * dims, [2] * dims, [2] * dims, [2] * dims]
    arch = {
        "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
        "arch_kwargs": {
            "n_stages": 4, "features_per_stage": [4, 8, 16, 16], "conv_op": conv, "kernel_sizes": [[3] * dims] * 4,
            "strides": strides, "n_conv_per_stage": [1, 1, 1, 1], "n_conv_per_stage_decoder": [1, 1, 1],
            "conv_bias": True, "norm_op": norm, "norm_op_kwargs": {"eps": 1e-5, "affine": True}, "dropout_op": None,
            "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True},
        },
        "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
    }  # fmt: skip
    cfg = "3d_fullres" if dims == 3 else "2d"
    plans = {
        "configurations": {cfg: {"architecture": arch, "normalization_schemes": ["CTNormalization"]}},
        "foreground_intensity_properties_per_channel": {
            "0": {"mean": 50.0, "std": 20.0, "percentile_00_5": -100.0, "percentile_99_5": 200.0}
        },
        "transpose_forward": [0, 1, 2],
    }
    dataset = {"channel_names": {"0": "CT"}, "labels": labels or {"background": 0, "liver": 1, "tumour": 2}}
    folder = tmp_path / f"nnUNetTrainer__nnUNetPlans__{cfg}"
    (folder / "fold_0").mkdir(parents=True)
    (folder / "plans.json").write_text(json.dumps(plans))
    (folder / "dataset.json").write_text(json.dumps(dataset))
    from dynamic_network_architectures.architectures.unet import PlainConvUNet

    kw = dict(arch["arch_kwargs"], conv_op=getattr(torch.nn, conv.rsplit(".", 1)[1]))
    kw.update(norm_op=getattr(torch.nn, norm.rsplit(".", 1)[1]), nonlin=torch.nn.LeakyReLU)
    torch.manual_seed(2)
    net = PlainConvUNet(input_channels=1, num_classes=3, deep_supervision=True, **kw).eval()
    checkpoint = {  # as nnU-Net's trainer saves it, numpy scalars in its log included
        "network_weights": net.state_dict(),
        "init_args": {"configuration": cfg, "fold": 0, "device": torch.device("cpu")},
        "trainer_name": "nnUNetTrainer",
        "logging": {"ema_fg_dice": [np.float64(0.5), np.float64(0.6)]},
        "_best_ema": np.float64(0.6),
        "current_epoch": 2,
    }
    torch.save(checkpoint, folder / "fold_0" / "checkpoint_final.pth")
    return folder, net


@pytest.mark.parametrize("dims", [2, 3])
def test_nnunet_folder_loads_and_deep_supervision_is_explained_at_full_resolution(tmp_path, dims):
    folder, supervised = _nnunet_folder(tmp_path, dims)
    net = load_any(folder, device="cpu")
    assert (net.family, net.n_channels, net.n_classes, net.spatial_dims) == ("nnunet", 1, 3, dims)
    assert net.class_names == ["background", "liver", "tumour"]
    assert propose_layers(net) == ["decoder.stages.0", "decoder.stages.1", "decoder.stages.2"]
    assert size_divisor(net) == (8,) * dims
    x = torch.rand(1, 1, *(16,) * dims)
    # The trained network is deep-supervised (a list of heads); the loaded one returns the first head only.
    _, maps_sup = explain_tensor(supervised, x, ["decoder.stages.1"], [2], get_method("gradcam"), "image")
    _, maps = explain_tensor(net, x, ["decoder.stages.1"], [2], get_method("gradcam"), "image")
    torch.testing.assert_close(maps["decoder.stages.1", 2], maps_sup["decoder.stages.1", 2])
    A, G = naive_activation_and_gradient(supervised, x, "decoder.stages.1", 2, torch.ones(1, *(16,) * dims))
    np.testing.assert_allclose(maps_sup["decoder.stages.1", 2].numpy(), reference_map("gradcam", A, G), rtol=2e-3)


def test_nnunet_normalisation_and_a_volume_end_to_end(tmp_path):
    folder, _ = _nnunet_folder(tmp_path, 3)
    net = load_nnunet(folder, device="cpu")
    ct = np.random.default_rng(3).normal(40, 100, (12, 20, 18)).astype(np.float32)
    norm = nnunet_normalize(ct, net)
    np.testing.assert_allclose(norm, (np.clip(ct, -100, 200) - 50) / 20, rtol=1e-6)
    assert ct.min() < -100  # the caller's array is untouched
    res = explain(norm, net, preprocess="none", target=(6, 10, 9))
    assert res.labels.shape == ct.shape and len(res.layers) == 3
    with pytest.raises(CheckpointError, match="region-based"):
        load_nnunet(_nnunet_folder(tmp_path / "r", 3, labels={"background": 0, "whole": [1, 2], "core": 2})[0])
    with pytest.raises(CheckpointError, match="neither a MONAI bundle"):
        load_any(tmp_path)
