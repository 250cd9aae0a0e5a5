import numpy as np
import pytest
import torch

from napari_unet_gradcam import UNet

GUI_FIXTURES = {"make_napari_viewer", "make_napari_viewer_proxy", "qtbot"}
# Each took over 5 s on the 2-core machine (pytest --durations): subprocess runs of the CLI and of
# the allocator probes, training, 1000 hypothesis examples, gradients checked against autograd.
# Listed here rather than decorated in each file; new slow tests can use @pytest.mark.slow.
SLOW = {
    "test_allocator.py",
    "test_cli.py",
    "test_properties.py",
    "test_train.py",
    "test_engine.py::test_every_method_matches_its_formula",
    "test_engine.py::test_one_pass_equals_per_layer_class_recipe_with_predicted_target",
    "test_frozen.py::test_gradients_equal_plain_autograd",
    "test_image.py::test_progress_and_cancellation_mid_run",
    "test_tiling.py::test_auto_tiling_when_memory_is_short",
    "test_tiling.py::test_tiled_matches_untiled",
}


def pytest_collection_modifyitems(items):
    """``gui`` on every test that needs a viewer or Qt (``-m "not gui"`` runs without a display); ``slow``."""
    for item in items:
        if GUI_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.gui)
        module = item.path.name
        if module in SLOW or f"{module}::{item.originalname}" in SLOW:
            item.add_marker(pytest.mark.slow)


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


class Exploit:
    """Unpickling this runs a shell command: a checkpoint that would run code if loaded unsafely."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def hostile_checkpoints(folder):
    """name -> path of every kind of bad checkpoint a user might point the plugin at."""
    import os

    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    sd = dict(tiny_unet(width=4).state_dict())
    evil = dict(sd, payload=Exploit(folder / "pwned"))
    torch.save(evil, folder / "evil.pth")
    files["code-running pickle"] = folder / "evil.pth"
    (folder / "random.pth").write_bytes(os.urandom(2048))
    files["random bytes"] = folder / "random.pth"
    torch.save(sd, folder / "full.pth")
    data = (folder / "full.pth").read_bytes()
    (folder / "truncated.pth").write_bytes(data[: len(data) // 3])
    files["truncated"] = folder / "truncated.pth"
    (folder / "empty.pth").write_bytes(b"")
    files["empty"] = folder / "empty.pth"
    (folder / "a_directory.pth").mkdir(exist_ok=True)
    files["directory"] = folder / "a_directory.pth"
    torch.save(torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3), torch.nn.ReLU()).state_dict(), folder / "other.pth")
    files["another network"] = folder / "other.pth"
    torch.save(dict(sd, mask_values=[0, 64, 128, 255]), folder / "mask_values.pth")  # 4 values, 3 classes
    files["mismatched mask_values"] = folder / "mask_values.pth"
    return files
