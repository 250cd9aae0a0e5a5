"""Faults in the GUI: the widget stays usable, says what happened, and leaves no half-made layer."""

import numpy as np
import pytest

from napari_unet_gradcam import save_checkpoint
from napari_unet_gradcam._job import RunState

from .conftest import tiny_unet
from .test_widget import idle, open_widget, run_and_wait, use_checkpoint


@pytest.fixture
def checkpoint(tmp_path):
    return save_checkpoint(tiny_unet(width=4), tmp_path / "tiny.pth", preprocess={"mode": "percentile"})


def slow_setup(make_napari_viewer, checkpoint):
    viewer = make_napari_viewer()
    layer = viewer.add_image(np.random.default_rng(0).random((24, 64, 64)).astype(np.float32), name="stack")
    widget = open_widget(viewer)
    use_checkpoint(widget, checkpoint)
    widget.tile_size.value = 32  # many small steps, so there is a "mid-run"
    return viewer, layer, widget


def test_source_deleted_mid_run_results_still_land_under_its_name(make_napari_viewer, qtbot, checkpoint):
    viewer, layer, widget = slow_setup(make_napari_viewer, checkpoint)
    widget.layers.value = ["up4"]
    widget.run()
    qtbot.waitUntil(lambda: widget.bar.value > 0, timeout=30000)
    viewer.layers.remove(layer)
    qtbot.waitUntil(lambda: idle(widget), timeout=120000)
    names = [ly.name for ly in viewer.layers]
    assert "stack labels (UNet)" in names and viewer.layers["stack labels (UNet)"].data.shape == (24, 64, 64)
    assert "source layer was removed" in widget.status.value


def test_run_pressed_twice_starts_one_job(make_napari_viewer, qtbot, checkpoint):
    viewer, _, widget = slow_setup(make_napari_viewer, checkpoint)
    widget.layers.value = ["up4"]
    widget.run()
    first = widget.runner._worker
    widget.run()
    widget.run_btn.native.click()  # disabled: does nothing
    assert widget.runner._worker is first
    qtbot.waitUntil(lambda: idle(widget), timeout=120000)
    assert len([ly for ly in viewer.layers if ly.name.startswith("stack labels")]) == 1


def test_exception_inside_worker_is_reported(make_napari_viewer, qtbot, checkpoint, monkeypatch):
    from napari_unet_gradcam import _widget

    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((32, 32)), name="img")
    widget = open_widget(viewer)
    use_checkpoint(widget, checkpoint)

    def boom(*a, **k):
        raise RuntimeError("simulated failure deep in the network")

    monkeypatch.setattr(_widget, "explain", boom)
    run_and_wait(qtbot, widget)
    assert "RuntimeError" in widget.status.value and "simulated failure" in widget.status.value
    assert [ly.name for ly in viewer.layers] == ["img"] and widget.run_btn.enabled
    monkeypatch.undo()
    run_and_wait(qtbot, widget)
    assert "img labels (UNet)" in [ly.name for ly in viewer.layers]


def test_checkpoint_replaced_on_disk_between_runs_is_reloaded(make_napari_viewer, qtbot, checkpoint):
    viewer = make_napari_viewer()
    viewer.add_image(np.random.default_rng(1).random((32, 32)), name="img")
    widget = open_widget(viewer)
    use_checkpoint(widget, checkpoint)
    widget.layers.value = ["up4"]
    run_and_wait(qtbot, widget)
    sha1 = viewer.layers["img labels (UNet)"].metadata["unet_gradcam"]["model_sha256"]
    binary = tiny_unet(n_classes=1, width=4, seed=9)
    save_checkpoint(binary, checkpoint, class_names=["background", "cell"])  # same path, new model
    run_and_wait(qtbot, widget)
    md = viewer.layers["img labels (UNet)"].metadata["unet_gradcam"]
    assert md["model_sha256"] != sha1
    assert "cell" in widget.model_info.value
    assert "img Grad-CAM up4 cell" in [ly.name for ly in viewer.layers]


def test_viewer_closed_mid_run(make_napari_viewer, qtbot, checkpoint):
    viewer, _, widget = slow_setup(make_napari_viewer, checkpoint)
    widget.run()
    qtbot.waitUntil(lambda: widget.bar.value > 0, timeout=30000)
    cancel = widget.runner._cancel
    viewer.close()
    assert widget.runner.state is RunState.CLOSED and cancel.is_set()


def test_hostile_checkpoints_are_refused_in_the_widget(make_napari_viewer, qtbot, tmp_path):
    from .conftest import hostile_checkpoints

    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((32, 32)), name="img")
    widget = open_widget(viewer)
    widget.model.value = "checkpoint file"
    files = hostile_checkpoints(tmp_path / "bad")
    for kind, path in files.items():
        widget.checkpoint.value = path
        assert widget._model is None, kind
        assert path.name in widget.status.value, (kind, widget.status.value)
        widget.run()
        assert idle(widget) and [ly.name for ly in viewer.layers] == ["img"], kind
    assert not (tmp_path / "bad" / "pwned").exists()


def test_four_channel_model_on_one_channel_image(make_napari_viewer, qtbot, tmp_path):
    path = save_checkpoint(tiny_unet(n_channels=4, width=4), tmp_path / "four.pth")
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((32, 32)), name="img")
    widget = open_widget(viewer)
    use_checkpoint(widget, path)
    run_and_wait(qtbot, widget)
    assert "1 channel(s)" in widget.status.value and "expects 4" in widget.status.value
    assert [ly.name for ly in viewer.layers] == ["img"] and widget.run_btn.enabled
