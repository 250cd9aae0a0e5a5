import os
import pickle

import numpy as np
import pytest
import torch

from napari_unet_gradcam import CheckpointError, load_model, save_checkpoint
from napari_unet_gradcam.checkpoint import default_model_path

from .conftest import Exploit as _Exploit
from .conftest import hostile_checkpoints, tiny_unet


def test_pickle_that_runs_code_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    sd = dict(tiny_unet().state_dict())
    sd["payload"] = _Exploit(marker)
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match="evil.pth.*refused"):
        load_model(path, device="cpu")
    assert not marker.exists()
    # The same payload as a bare pickle, not a torch zip file.
    with open(tmp_path / "evil2.pth", "wb") as f:
        pickle.dump(_Exploit(marker), f)
    with pytest.raises(CheckpointError, match="evil2.pth"):
        load_model(tmp_path / "evil2.pth")
    assert not marker.exists()


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p.write_bytes(b"\x00" + os.urandom(4096)), "not a PyTorch checkpoint"),
        (lambda p: p.write_bytes(b"\x80" + os.urandom(4096)), "could not be read|refused"),
        (lambda p: p.write_bytes(b""), "empty"),
        (lambda p: p.mkdir(), "directory"),
        (lambda p: None, "does not exist"),
    ],
)
def test_broken_files_get_one_clear_error(tmp_path, make, message):
    path = tmp_path / "model.pth"
    make(path)
    with pytest.raises(CheckpointError, match=message) as info:
        load_model(path)
    assert "model.pth" in str(info.value)


def test_truncated_checkpoint(tmp_path):
    path = tmp_path / "full.pth"
    torch.save(tiny_unet().state_dict(), path)
    data = path.read_bytes()
    cut = tmp_path / "cut.pth"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cut.pth.*truncated"):
        load_model(cut)


def test_other_architecture_is_refused(tmp_path):
    path = tmp_path / "resnet.pth"
    torch.save(torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.Linear(4, 2)).state_dict(), path)
    with pytest.raises(CheckpointError, match="not a Pytorch-UNet"):
        load_model(path)


def test_unet_with_missing_layer_is_refused(tmp_path):
    sd = dict(tiny_unet().state_dict())
    del sd["up2.conv.double_conv.3.weight"]
    path = tmp_path / "partial.pth"
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match="does not fit.*up2.conv.double_conv.3.weight"):
        load_model(path)


def test_mask_values_shorter_than_the_outputs_load_as_upstream(tmp_path):
    """upstream train.py with --classes 3 on masks of two values saves two mask_values."""
    sd = dict(tiny_unet(n_classes=3).state_dict())
    path = tmp_path / "mv.pth"
    torch.save(dict(sd, mask_values=[0, 255]), path)
    assert load_model(path).mask_values == [0, 255]
    torch.save(dict(sd, mask_values=[[0, 0, 0], [255, 0, 255]]), path)  # RGB masks
    assert load_model(path).mask_values == [[0, 0, 0], [255, 0, 255]]


@pytest.mark.parametrize(
    "values, message",
    [([0, 1, 2, 3], "4 entries.*only 3 classes"), ("0,1", "list of numbers"), ([0, [1, 2, 3]], "mixes")],
)
def test_unusable_mask_values_are_refused(tmp_path, values, message):
    path = tmp_path / "mv.pth"
    torch.save(dict(tiny_unet(n_classes=3).state_dict(), mask_values=values), path)
    with pytest.raises(CheckpointError, match=message):
        load_model(path)


def test_project_format_round_trip(tmp_path):
    net = tiny_unet()
    path = save_checkpoint(
        net,
        tmp_path / "ours.pth",
        class_names=["background", "nucleus", "boundary"],
        preprocess={"mode": "percentile", "low": 1.0, "high": 99.8},
        training={"epochs": 3, "seed": 0},
    )
    back = load_model(path, device="cpu")
    assert back.class_names == ["background", "nucleus", "boundary"]
    assert back.preprocess["mode"] == "percentile"
    assert back.training_record == {"epochs": 3, "seed": 0}
    assert not (tmp_path / "ours.pth.part").exists()
    x = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(back(x), net(x))


def test_sigmoid_model_has_two_label_names(tmp_path):
    path = tmp_path / "binary.pth"
    torch.save(tiny_unet(n_classes=1).state_dict(), path)
    net = load_model(path)
    assert net.n_classes == 1 and net.class_names == ["background", "foreground"]
    assert net.mask_values == [0, 1]


def test_default_model_loads_or_explains_its_absence():
    if default_model_path().exists():
        net = load_model()
        assert net.n_channels == 1 and len(net.class_names) == max(net.n_classes, 2)
    else:
        with pytest.raises(CheckpointError, match="bundled default model"):
            load_model()


def test_device_auto_and_explicit(tmp_path):
    path = tmp_path / "m.pth"
    torch.save(tiny_unet().state_dict(), path)
    net = load_model(path, device="cpu")
    assert next(net.parameters()).device.type == "cpu"
    auto = load_model(path)  # auto: CUDA, then MPS, then CPU
    expected = "cuda" if torch.cuda.is_available() else ("mps" if torch.backends.mps.is_available() else "cpu")
    assert next(auto.parameters()).device.type == expected


def test_every_hostile_checkpoint_gets_a_checkpoint_error(tmp_path):
    for kind, path in hostile_checkpoints(tmp_path).items():
        with pytest.raises(CheckpointError) as info:
            load_model(path)
        assert path.name in str(info.value), kind
    assert not (tmp_path / "pwned").exists()


def test_many_random_files_all_get_a_checkpoint_error(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(200):
        path = tmp_path / f"r{i}.pth"
        size = int(rng.integers(1, 5000))
        head = [b"", b"PK\x03\x04", b"\x80\x02", b"\x80\x04\x95"][i % 4]  # zip and pickle magic too
        path.write_bytes(head + rng.bytes(size))
        with pytest.raises(CheckpointError, match=path.name):
            load_model(path)


@pytest.mark.parametrize(
    "key, shape, message",
    [
        ("outc.conv.weight", (0, 4, 1, 1), "number of classes is 0"),
        ("outc.conv.weight", (300, 4, 1, 1), "number of classes is 300 .*above the limit of 256"),
        ("inc.double_conv.0.weight", (4, 400, 3, 3), "number of input channels is 400 .*above the limit of 256"),
        ("inc.double_conv.0.weight", (0, 1, 3, 3), "width is 0"),
    ],
)
def test_declared_shapes_out_of_range_are_refused(tmp_path, key, shape, message):
    sd = dict(tiny_unet(width=4).state_dict())
    sd[key] = torch.zeros(1).expand(*shape)  # a zero-stride view: shape only, a few bytes on disk
    torch.save(sd, tmp_path / "odd.pth")
    with pytest.raises(CheckpointError, match=f"odd.pth: its {message}"):
        load_model(tmp_path / "odd.pth")


def test_non_finite_weights_are_blamed_on_the_checkpoint(tmp_path):
    sd = dict(tiny_unet(width=4).state_dict())
    sd["up2.conv.double_conv.3.weight"] = sd["up2.conv.double_conv.3.weight"].clone()
    sd["up2.conv.double_conv.3.weight"][1, 2, 0, 0] = float("inf")
    torch.save(sd, tmp_path / "diverged.pth")
    with pytest.raises(CheckpointError, match="NaN or infinite weights.*'up2.conv.double_conv.3.weight'.*diverged"):
        load_model(tmp_path / "diverged.pth")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_checkpoint_is_not_called_corrupt(tmp_path):
    path = tmp_path / "locked.pth"
    torch.save(tiny_unet(width=4).state_dict(), path)
    path.chmod(0)
    with pytest.raises(CheckpointError, match="locked.pth could not be opened \\(Permission denied\\)"):
        load_model(path)


def test_open_failure_is_not_called_corrupt(tmp_path, monkeypatch):
    # The root-proof twin of the test above: the OS refuses the open, as it does for a locked file.
    path = tmp_path / "locked.pth"
    torch.save(tiny_unet(width=4).state_dict(), path)

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(torch, "load", refuse)
    with pytest.raises(CheckpointError, match="could not be opened \\(Permission denied\\): check that the file is"):
        load_model(path)


def _layout_2018(n_channels=3, n_classes=2):
    """State-dict keys and shapes of Pytorch-UNet before December 2019 (inconv/down/up/outconv)."""
    torch.manual_seed(0)
    sd = {}

    def dconv(prefix, cin, cout):
        for i, (a, b) in enumerate([(cin, cout), (cout, cout)]):
            sd[f"{prefix}.conv.{3 * i}.weight"] = torch.randn(b, a, 3, 3)
            sd[f"{prefix}.conv.{3 * i}.bias"] = torch.randn(b)
            for name in ("weight", "bias", "running_mean", "running_var"):
                sd[f"{prefix}.conv.{3 * i + 1}.{name}"] = torch.rand(b)

    dconv("inc.conv", n_channels, 64)
    for i, (a, b) in enumerate([(64, 128), (128, 256), (256, 512), (512, 512)], 1):
        dconv(f"down{i}.mpconv.1", a, b)
    for i, (a, b) in enumerate([(1024, 256), (512, 128), (256, 64), (128, 64)], 1):
        dconv(f"up{i}.conv", a, b)
    sd["outc.conv.weight"] = torch.randn(n_classes, 64, 1, 1)
    sd["outc.conv.bias"] = torch.randn(n_classes)
    return sd


def test_older_upstream_layouts_are_named(tmp_path):
    path = tmp_path / "CP5.pth"
    torch.save(_layout_2018(), path)
    with pytest.raises(CheckpointError, match=r"older milesial/Pytorch-UNet: the 2017-2019 layout.*Retrain"):
        load_model(path)
    # December 2019 - April 2020: today's names, but up blocks' first convolution not halved.
    renames = [(".mpconv.1.conv.", ".maxpool_conv.1.double_conv."), ("inc.conv.conv.", "inc.double_conv.")]
    renames.append((".conv.conv.", ".conv.double_conv."))
    sd = {}
    for k, v in _layout_2018().items():
        for a, b in renames:
            k = k.replace(a, b)
        sd[k] = v
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match=r"December 2019 - April 2020 layout.*\(256, 1024, 3, 3\)"):
        load_model(path)
