"""The dock widget in a real napari viewer (under Xvfb in `make test`)."""

import numpy as np
import pytest
import torch

from napari_unet_gradcam import save_checkpoint
from napari_unet_gradcam._grid import cell_geometry
from napari_unet_gradcam._job import RunState
from napari_unet_gradcam._widget import GradCamWidget
from napari_unet_gradcam.checkpoint import default_model_path

from .conftest import tiny_unet

PLUGIN = "napari-unet-gradcam"


@pytest.fixture
def checkpoint(tmp_path):
    return save_checkpoint(tiny_unet(width=4), tmp_path / "tiny.pth", preprocess={"mode": "percentile"})


def open_widget(viewer) -> GradCamWidget:
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "UNet Grad-CAM")
    return widget


def use_checkpoint(widget, path):
    widget.model.value = "checkpoint file"
    widget.checkpoint.value = path
    assert widget._model is not None, widget.status.value
    assert widget.classes.value == list(range(len(widget._model.class_names)))


def idle(widget) -> bool:
    return widget.runner.state is RunState.IDLE


def run_and_wait(qtbot, widget, timeout=60000):
    widget.run()
    assert not widget.run_btn.enabled, widget.status.value
    qtbot.waitUntil(lambda: idle(widget), timeout=timeout)


def test_widget_opens_through_manifest_and_follows_layers(make_napari_viewer):
    viewer = make_napari_viewer()
    widget = open_widget(viewer)
    assert isinstance(widget, GradCamWidget)
    a = viewer.add_image(np.zeros((32, 32)), name="first")
    viewer.add_image(np.zeros((32, 32)), name="second")
    assert widget.image.value.name == "second", widget.status.value  # the active layer
    viewer.layers.selection.active = a
    assert widget.image.value is a
    a.name = "renamed"
    assert "renamed" in [c[0] for c in widget._image_choices()]
    assert "renamed" in [widget.image.native.itemText(i) for i in range(widget.image.native.count())]
    viewer.layers.remove(a)
    assert [c[0] for c in widget._image_choices()] == ["second"]


def test_run_on_sample_data_adds_aligned_layers(make_napari_viewer, qtbot, checkpoint):
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "nuclei-2d")
    src = viewer.layers["nuclei 2D"]
    src.scale = (0.5, 0.25)
    src.translate = (10.0, -3.0)
    before = src.data.copy()
    widget = open_widget(viewer)
    use_checkpoint(widget, checkpoint)
    widget.layers.value = ["up3", "up4"]
    widget.instances.value = True
    run_and_wait(qtbot, widget)
    names = [layer.name for layer in viewer.layers]
    assert "nuclei 2D labels (UNet)" in names and "nuclei 2D instances (UNet)" in names
    expected = {f"nuclei 2D Grad-CAM {ly} {c}" for ly in ("up3", "up4") for c in ("background", "nucleus", "boundary")}
    assert expected <= set(names)
    for layer in viewer.layers:
        if layer is src:
            continue
        assert layer.data.shape == src.data.shape
        np.testing.assert_allclose(layer.scale, src.scale)
        np.testing.assert_allclose(layer.translate, src.translate)
        md = layer.metadata["unet_gradcam"]
        assert md["method"] == "gradcam" and len(md["model_sha256"]) == 64
    visible = [layer.name for layer in viewer.layers if layer.visible and "Grad-CAM" in layer.name]
    assert visible == ["nuclei 2D Grad-CAM up4 nucleus"]
    np.testing.assert_array_equal(src.data, before)
    assert "map(s)" in widget.status.value and widget.run_btn.enabled


def test_rerun_replaces_instead_of_duplicating(make_napari_viewer, qtbot, checkpoint):
    viewer = make_napari_viewer()
    viewer.add_image(np.random.default_rng(0).random((64, 64)), name="img")
    widget = open_widget(viewer)
    use_checkpoint(widget, checkpoint)
    run_and_wait(qtbot, widget)
    n = len(viewer.layers)
    run_and_wait(qtbot, widget)
    assert len(viewer.layers) == n
    widget.layers.value = ["up4"]
    run_and_wait(qtbot, widget)
    assert len([ly for ly in viewer.layers if "Grad-CAM" in ly.name]) == 3  # stale up1-up3 maps removed


def test_painted_labels_survive_a_rerun(make_napari_viewer, qtbot, checkpoint):
    viewer = make_napari_viewer()
    viewer.add_image(np.random.default_rng(0).random((64, 64)), name="img")
    widget = open_widget(viewer)
    use_checkpoint(widget, checkpoint)
    widget.layers.value = []
    run_and_wait(qtbot, widget)
    labels = viewer.layers["img labels (UNet)"]
    painted = np.asarray(labels.data).copy()
    painted[:10, :10] = (painted[:10, :10] + 1) % 3  # surely different from the prediction
    labels.data = painted
    for _ in range(3):  # every later run updates one current result beside the user's layer
        run_and_wait(qtbot, widget)
        assert labels in viewer.layers and labels.name == "img labels (UNet)"
        np.testing.assert_array_equal(labels.data, painted)
        others = [ly for ly in viewer.layers if "labels" in ly.name and ly is not labels]
        assert len(others) == 1, [ly.name for ly in viewer.layers]
        assert not np.array_equal(others[0].data, painted)


def test_cancel_mid_run_adds_nothing(make_napari_viewer, qtbot, checkpoint):
    viewer = make_napari_viewer()
    viewer.add_image(np.random.default_rng(0).random((40, 64, 64)).astype(np.float32), name="stack")
    widget = open_widget(viewer)
    use_checkpoint(widget, checkpoint)
    widget.tile_size.value = 32  # many small steps
    widget.run()
    qtbot.waitUntil(lambda: widget.bar.value > 0, timeout=30000)
    widget.cancel()
    qtbot.waitUntil(lambda: idle(widget), timeout=30000)
    assert [ly.name for ly in viewer.layers] == ["stack"]
    assert widget.status.value.startswith("Cancelled") and widget.run_btn.enabled


def test_bad_checkpoint_is_reported_and_widget_stays_usable(make_napari_viewer, qtbot, tmp_path, checkpoint):
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((32, 32)), name="img")
    widget = open_widget(viewer)
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint at all")
    widget.model.value = "checkpoint file"
    widget.checkpoint.value = bad
    assert widget._model is None
    assert "bad.pth" in widget.status.value
    widget.run()
    assert idle(widget) and [ly.name for ly in viewer.layers] == ["img"]
    use_checkpoint(widget, checkpoint)
    run_and_wait(qtbot, widget)
    assert "img labels (UNet)" in [ly.name for ly in viewer.layers]


def test_channel_mismatch_error_reaches_status(make_napari_viewer, qtbot, checkpoint):
    viewer = make_napari_viewer()
    viewer.add_image(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8), name="rgb", rgb=True)
    widget = open_widget(viewer)
    use_checkpoint(widget, checkpoint)
    run_and_wait(qtbot, widget)
    assert "3 channel(s)" in widget.status.value and "expects 1" in widget.status.value
    assert [ly.name for ly in viewer.layers] == ["rgb"]


def test_3d_stack_and_stacked_output(make_napari_viewer, qtbot, checkpoint):
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "nuclei-3d")
    src = viewer.layers["nuclei 3D"]
    src.scale = (2.0, 0.5, 0.5)
    widget = open_widget(viewer)
    use_checkpoint(widget, checkpoint)
    widget.output.value = "stacked (sliders)"
    widget.layers.value = ["up2", "up4"]
    run_and_wait(qtbot, widget, timeout=120000)
    stack = viewer.layers["nuclei 3D Grad-CAM maps"]
    assert stack.data.shape == (2, 3, *src.data.shape)
    np.testing.assert_allclose(stack.scale, (1, 1, 2.0, 0.5, 0.5))
    assert stack.metadata["unet_gradcam"]["layers"] == ["up2", "up4"]
    assert viewer.layers["nuclei 3D labels (UNet)"].data.shape == src.data.shape


def test_region_target_from_shapes(make_napari_viewer, qtbot, checkpoint):
    viewer = make_napari_viewer()
    img = viewer.add_image(np.random.default_rng(0).random((64, 64)), name="img")
    widget = open_widget(viewer)
    use_checkpoint(widget, checkpoint)
    widget.target.value = "region or point from layer"
    widget.run()  # no region layer yet: a clear message, no run
    assert "Labels, Shapes or Points" in widget.status.value and idle(widget)
    viewer.add_shapes([np.array([[10, 10], [10, 30], [30, 30], [30, 10]])], shape_type="polygon", name="roi")
    viewer.layers.selection.active = img
    widget.region.value = viewer.layers["roi"]
    run_and_wait(qtbot, widget)
    assert viewer.layers["img Grad-CAM up4 nucleus"].metadata["unet_gradcam"]["target"] == "mask"


@pytest.mark.skipif(not default_model_path().exists(), reason="bundled model not built")
def test_bundled_model_one_click(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "nuclei-2d")
    widget = open_widget(viewer)
    assert "classes: background, nucleus, boundary" in widget.model_info.value
    run_and_wait(qtbot, widget, timeout=120000)
    labels = viewer.layers["nuclei 2D labels (UNet)"].data
    assert set(np.unique(labels)) >= {0, 1}
    order = [ly.name for ly in viewer.layers]
    visible = {ly.name for ly in viewer.layers if ly.visible}
    enter_grid(qtbot, widget)
    cells = widget.grid.layer
    assert captions(widget) == [f"{ly} / {c}" for ly in ("up1", "up2", "up3", "up4") for c in ("nucleus", "boundary")]
    h, w = viewer.layers["nuclei 2D"].data.shape
    bar, gap = cell_geometry(h, w)
    assert cells.rgb and cells.data.shape == (4 * (bar + h) + 3 * gap, 2 * w + gap, 3)  # a row per decoder layer
    assert [ly.name for ly in viewer.layers if ly.visible] == ["grid view"]
    # The up4 / boundary cell is the image in grey plus that map in inferno.
    cell = cells.data[3 * (bar + h + gap) + bar :, w + gap :]
    heat = viewer.layers["nuclei 2D Grad-CAM up4 boundary"].data
    assert np.corrcoef(cell[..., 0].ravel().astype(float), heat.ravel())[0, 1] > 0.3
    widget.toggle_grid()
    assert [ly.name for ly in viewer.layers] == order
    assert {ly.name for ly in viewer.layers if ly.visible} == visible


def captions(widget) -> list[str]:
    return list(widget.grid.captions)


def enter_grid(qtbot, widget):
    widget.toggle_grid()
    qtbot.waitUntil(lambda: widget.grid_btn.enabled and widget.grid.active, timeout=30000)


def test_devices_offered_match_torch():
    from napari_unet_gradcam._widget import _devices

    assert _devices()[:2] == ["auto", "cpu"]
    assert any(d.startswith("cuda") for d in _devices()) == torch.cuda.is_available()
