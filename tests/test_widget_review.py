"""What a reviewer does after the first click, one test per flow, in a real viewer."""

import numpy as np
import pytest
import tifffile

from napari_unet_gradcam import _large, _widget, save_checkpoint
from napari_unet_gradcam._job import RunState

from .conftest import tiny_unet
from .test_widget import captions, enter_grid, open_widget, run_and_wait, use_checkpoint

PLUGIN = "napari-unet-gradcam"


@pytest.fixture
def checkpoint(tmp_path):
    return save_checkpoint(tiny_unet(width=4), tmp_path / "tiny.pth", preprocess={"mode": "percentile"})


@pytest.fixture
def ready(make_napari_viewer, checkpoint):
    """A viewer with one 64x64 image and the widget on a tiny checkpoint, two decoder layers."""
    viewer = make_napari_viewer()
    img = viewer.add_image(np.random.default_rng(0).random((64, 64)).astype(np.float32), name="img")
    widget = open_widget(viewer)
    use_checkpoint(widget, checkpoint)
    widget.layers.value = ["up3", "up4"]
    return viewer, img, widget


def ours(viewer, kind=None):
    return [
        ly
        for ly in viewer.layers
        if "unet_gradcam" in ly.metadata and kind in (None, ly.metadata["unet_gradcam"]["kind"])
    ]


def test_picker_offers_the_image_when_a_labels_layer_is_active(make_napari_viewer):
    viewer = make_napari_viewer()
    img = viewer.add_image(np.zeros((32, 32)), name="img")
    viewer.add_labels(np.zeros((32, 32), int), name="paint")  # active now
    widget = open_widget(viewer)
    assert widget.image.value is img


def test_picker_survives_a_run_a_rename_and_reopening_the_dock(ready, qtbot, checkpoint):
    viewer, img, widget = ready
    run_and_wait(qtbot, widget)
    assert widget.image.value is img  # a heatmap became active: not an image choice
    img.name = "renamed"
    assert widget.image.value is img and widget.image.native.currentText() == "renamed"
    run_and_wait(qtbot, widget)
    assert "renamed labels (UNet)" in [ly.name for ly in viewer.layers]
    viewer.window.remove_dock_widget(widget.native)
    assert widget.runner.state is RunState.CLOSED
    again = open_widget(viewer)
    assert again.image.value is img
    use_checkpoint(again, checkpoint)
    again.layers.value = ["up4"]
    run_and_wait(qtbot, again)  # the reopened widget works, and updates the same results
    assert len([ly for ly in viewer.layers if ly.name == "renamed labels (UNet)"]) == 1


def test_rerun_with_another_method_updates_layers_in_place(ready, qtbot):
    viewer, img, widget = ready
    run_and_wait(qtbot, widget)
    before = {ly.metadata["unet_gradcam"]["role"]: ly for ly in ours(viewer)}
    removed = []
    viewer.layers.events.removed.connect(lambda e: removed.append(e.value.name))
    shown = viewer.layers["img Grad-CAM up3 background"]
    shown.visible = True  # the user's choice of what to look at stays
    old = {k: ly.data for k, ly in before.items()}
    widget.method.value = "hirescam"
    run_and_wait(qtbot, widget)
    after = {ly.metadata["unet_gradcam"]["role"]: ly for ly in ours(viewer)}
    assert removed == []
    assert after.keys() == before.keys() and all(after[k] is before[k] for k in after)
    assert shown.name == "img HiResCAM up3 background" and shown.visible
    assert shown.metadata["unet_gradcam"]["method"] == "hirescam"
    assert any(not np.array_equal(after[k].data, old[k]) for k in after)
    widget.layers.value = ["up4"]  # fewer maps: the stale ones go, nothing else
    run_and_wait(qtbot, widget)
    assert sorted(removed) == sorted(f"img HiResCAM up3 {c}" for c in ("background", "nucleus", "boundary"))


def test_a_renamed_heatmap_is_the_users(ready, qtbot):
    viewer, img, widget = ready
    run_and_wait(qtbot, widget)
    mine = viewer.layers["img Grad-CAM up4 nucleus"]
    mine.name = "my favourite map"
    data = mine.data.copy()
    widget.method.value = "gradcam++"
    run_and_wait(qtbot, widget)
    assert mine in viewer.layers and mine.name == "my favourite map"
    np.testing.assert_array_equal(mine.data, data)
    assert "img Grad-CAM++ up4 nucleus" in [ly.name for ly in viewer.layers]


def test_keep_two_runs_and_compare_them_in_the_grid(ready, qtbot):
    viewer, img, widget = ready
    widget.classes.value = [1]
    run_and_wait(qtbot, widget)
    widget.keep()
    assert "img Grad-CAM up4 nucleus #1" in [ly.name for ly in viewer.layers]
    widget.method.value = "hirescam"
    run_and_wait(qtbot, widget)
    names = [ly.name for ly in viewer.layers]
    assert "img Grad-CAM up4 nucleus #1" in names and "img HiResCAM up4 nucleus" in names
    order = list(viewer.layers)
    enter_grid(qtbot, widget)  # what the user looks at (up4 nucleus in each run), a row per run
    assert captions(widget) == ["Grad-CAM #1: up4 / nucleus", "HiResCAM: up4 / nucleus"]
    assert widget.grid.layer.data.shape[:2] == (2 * 76 + 2, 64)
    widget.toggle_grid()
    viewer.layers["img HiResCAM up3 nucleus"].visible = True  # two maps looked at: two columns
    enter_grid(qtbot, widget)
    assert captions(widget) == [
        "Grad-CAM #1: up3 / nucleus",
        "Grad-CAM #1: up4 / nucleus",
        "HiResCAM: up3 / nucleus",
        "HiResCAM: up4 / nucleus",
    ]
    assert widget.grid.layer.data.shape[:2] == (2 * 76 + 2, 2 * 64 + 2)  # a row per run
    widget.toggle_grid()
    assert list(viewer.layers) == order


def test_grid_survives_a_rerun_and_a_closed_dock(ready, qtbot):
    viewer, img, widget = ready
    run_and_wait(qtbot, widget)
    order = list(viewer.layers)
    enter_grid(qtbot, widget)
    views = ours(viewer, "grid-view")
    before = widget.grid.layer.data.copy()
    removed = []
    viewer.layers.events.removed.connect(lambda e: removed.append(e.value.name))
    widget.method.value = "layercam"
    run_and_wait(qtbot, widget)
    assert ours(viewer, "grid-view") == views and removed == []  # updated in place, no orphans
    assert not np.array_equal(widget.grid.layer.data, before)  # shows the new run
    assert all(not ly.visible for ly in order)
    viewer.window.remove_dock_widget(widget.native)
    assert ours(viewer, "grid-view") == [] and not widget.grid.active
    assert list(viewer.layers) == order


def test_stacked_output_names_its_sliders_and_opens_on_the_deepest_foreground_map(ready, qtbot):
    viewer, img, widget = ready
    widget.output.value = "stacked (sliders)"
    run_and_wait(qtbot, widget)
    stack = viewer.layers["img Grad-CAM maps"]
    assert tuple(stack.axis_labels[:2]) == ("decoder layer", "class")
    assert tuple(viewer.dims.current_step[:2]) == (1, 1)  # up4, nucleus
    overlay = viewer.canvas.overlays.text
    assert overlay.visible and overlay.text == "decoder layer up4  |  class nucleus"
    viewer.dims.set_current_step(1, 2)
    assert overlay.text == "decoder layer up4  |  class boundary"
    widget.method.value = "hirescam"
    run_and_wait(qtbot, widget)  # a re-run keeps the user's sliders
    assert tuple(viewer.dims.current_step[:2]) == (1, 2) and stack.name == "img HiResCAM maps"
    enter_grid(qtbot, widget)
    assert captions(widget) == [f"{ly} / {c}" for ly in ("up3", "up4") for c in ("nucleus", "boundary")]
    assert widget.grid.layer.data.shape == (2 * 76 + 2, 2 * 64 + 2, 3)  # 12-px caption strips, 2-px gaps


def test_current_slice_only(make_napari_viewer, qtbot, checkpoint):
    viewer = make_napari_viewer()
    stack = viewer.add_image(np.random.default_rng(1).random((12, 48, 48)).astype(np.float32), name="stack")
    stack.scale = (2.0, 1.0, 1.0)
    widget = open_widget(viewer)
    use_checkpoint(widget, checkpoint)
    widget.layers.value = ["up4"]
    viewer.dims.set_point(0, 10.0)  # world z 10 = slice 5
    widget.current_slice.value = True
    run_and_wait(qtbot, widget)
    labels = viewer.layers["stack labels (UNet)"]
    assert labels.data.shape == (1, 48, 48)
    np.testing.assert_allclose(labels.translate, (10.0, 0, 0))
    assert "slice" in widget.status.value or "map(s)" in widget.status.value


def test_closing_the_dock_mid_run_cancels_and_adds_nothing(make_napari_viewer, qtbot, checkpoint):
    viewer = make_napari_viewer()
    viewer.add_image(np.random.default_rng(0).random((24, 64, 64)).astype(np.float32), name="stack")
    widget = open_widget(viewer)
    use_checkpoint(widget, checkpoint)
    widget.tile_size.value = 32
    widget.run()
    qtbot.waitUntil(lambda: widget.bar.value > 0, timeout=30000)
    cancel = widget.runner._cancel
    viewer.window.remove_dock_widget(widget.native)
    assert cancel.is_set()
    qtbot.waitUntil(lambda: widget.runner._worker is None, timeout=60000)
    qtbot.wait(200)
    assert [ly.name for ly in viewer.layers] == ["stack"]


def test_bad_checkpoint_is_reported_once_and_cleared_by_a_good_one(ready, qtbot, tmp_path, monkeypatch, checkpoint):
    viewer, img, widget = ready
    shown = []
    monkeypatch.setattr(_widget, "show_error", shown.append)
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"\x00\x01 random bytes, not a checkpoint")
    widget.checkpoint.value = bad
    widget.run()
    widget.run()
    assert len(shown) == 1 and "bad.pth" in shown[0]
    assert "not a PyTorch checkpoint" in widget.status.value and "weights_only" not in widget.status.value
    widget.checkpoint.value = checkpoint
    assert widget._model is not None and "bad.pth" not in widget.status.value


def test_export_writes_what_the_cli_writes(ready, qtbot, tmp_path):
    viewer, img, widget = ready
    assert not widget.export_btn.enabled
    run_and_wait(qtbot, widget)
    assert widget.export_btn.enabled
    paths = widget.export(tmp_path / "out", wait=True)
    names = sorted(p.name for p in paths)
    assert names == ["img_contact_sheet.png", "img_labels.tif", "img_maps.tif", "img_metadata.json"]
    np.testing.assert_array_equal(
        tifffile.imread(tmp_path / "out" / "img_labels.tif"), viewer.layers["img labels (UNet)"].data
    )
    assert tifffile.imread(tmp_path / "out" / "img_maps.tif").shape == (2, 3, 64, 64)
    widget.export(tmp_path / "async")  # the button's way: written in a worker thread
    qtbot.waitUntil(lambda: widget.status.value.startswith("Exported 4 file(s)"), timeout=30000)
    assert (tmp_path / "async" / "img_maps.tif").exists()


def test_probabilities_under_the_cursor(ready, qtbot):
    viewer, img, widget = ready
    run_and_wait(qtbot, widget)
    viewer.cursor.position = (10.0, 20.0)
    assert viewer.help.startswith("UNet: background ") and "nucleus" in viewer.help and "boundary" in viewer.help
    values = [float(v) for v in viewer.help.split()[2::2]]
    assert abs(sum(values) - 1) < 0.02


def test_explain_at_a_point(ready, qtbot):
    viewer, img, widget = ready
    img.scale = (0.5, 0.5)
    viewer.add_points([[10.0, 12.0]], name="why here")
    viewer.layers.selection.active = img
    widget.target.value = "region or point from layer"
    widget.region.value = viewer.layers["why here"]
    run_and_wait(qtbot, widget)
    md = viewer.layers["img Grad-CAM up4 nucleus"].metadata["unet_gradcam"]
    assert md["target"] == "mask", widget.status.value


def test_rgb_image_one_channel_of_it(make_napari_viewer, qtbot, checkpoint):
    viewer = make_napari_viewer()
    rgb = np.random.default_rng(0).integers(0, 255, (48, 48, 3), dtype=np.uint8)
    viewer.add_image(rgb, name="rgb", rgb=True)
    widget = open_widget(viewer)
    use_checkpoint(widget, checkpoint)
    widget.layers.value = ["up4"]
    widget.more.value = True
    assert not widget.channels.native.isHidden()
    widget.channels.value = "green"
    widget.scale.value = 0.5
    widget.preprocess.value = "divide by 255"
    run_and_wait(qtbot, widget)
    md = viewer.layers["rgb labels (UNet)"].metadata["unet_gradcam"]
    assert viewer.layers["rgb labels (UNet)"].data.shape == (48, 48), widget.status.value
    assert md["method"] == "gradcam"
    np.testing.assert_array_equal(viewer.layers["rgb"].data, rgb)


def test_pyramid_level_is_explained_and_placed_over_the_pyramid(make_napari_viewer, qtbot, checkpoint, monkeypatch):
    monkeypatch.setattr(_large, "DEFAULT_MAX_PIXELS", 130 * 130)  # as if level 0 were a whole slide
    base = np.random.default_rng(3).random((256, 256)).astype(np.float32)
    levels = [base, base.reshape(128, 2, 128, 2).mean((1, 3)), base.reshape(64, 4, 64, 4).mean((1, 3))]
    viewer = make_napari_viewer()
    pyramid = viewer.add_image(levels, multiscale=True, name="slide", scale=(0.5, 0.5), translate=(10, 20))
    widget = open_widget(viewer)
    use_checkpoint(widget, checkpoint)
    widget.layers.value = ["up4"]
    assert widget.level.value == 1 and not widget.level.native.isHidden()  # the finest level that fits
    assert widget.level.native.currentText().startswith("1: 128x128, ") and "GiB" in widget.level.native.currentText()
    viewer.add_shapes([[[30, 40], [30, 50], [40, 50], [40, 40]]], shape_type="rectangle", name="roi")
    viewer.layers.selection.active = pyramid
    widget.target.value = "region or point from layer"
    widget.region.value = viewer.layers["roi"]
    run_and_wait(qtbot, widget)
    labels = viewer.layers["slide labels (UNet)"]
    assert labels.data.shape == (128, 128), widget.status.value
    np.testing.assert_allclose(labels.scale, (1.0, 1.0))
    np.testing.assert_allclose(labels.translate, (10.25, 20.25))  # napari's own 'extract level' placement
    # A level-1 pixel and the world point of its centre agree through both transforms.
    np.testing.assert_allclose(labels.data_to_world((40, 60)), pyramid.data_to_world((80.5, 120.5)))
    np.testing.assert_array_equal(np.asarray(pyramid.data[0]), base)  # the user's data untouched
