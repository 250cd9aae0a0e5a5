"""The widget's status line carries the out-of-distribution warning."""

import numpy as np

from napari_unet_gradcam import save_checkpoint
from napari_unet_gradcam.synthetic import generate

from .conftest import tiny_unet
from .test_widget import PLUGIN, run_and_wait, use_checkpoint


def test_status_says_what_looks_off(make_napari_viewer, qtbot, tmp_path):
    ckpt = save_checkpoint(tiny_unet(), tmp_path / "tiny.pth", preprocess={"mode": "percentile"})
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "UNet Grad-CAM")
    use_checkpoint(widget, ckpt)
    widget.layers.value = ["up4"]
    viewer.add_image(255 - generate(1_000_002, (96, 96)).image.astype(np.float32), name="inverted")
    run_and_wait(qtbot, widget)
    assert "map(s)" in widget.status.value
    assert "Warning: Most of the image is bright, unlike fluorescence" in widget.status.value
