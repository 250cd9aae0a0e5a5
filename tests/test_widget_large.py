"""The widget hands a lazy (dask, zarr) pyramid level to the run unread; results overlay the level."""

from pathlib import Path

import numpy as np
import pytest

from napari_unet_gradcam import _large, _regions, _widget, explain, load_model, predict, save_checkpoint

from .conftest import tiny_unet
from .test_widget import idle, open_widget, run_and_wait, use_checkpoint

da = pytest.importorskip("dask.array")


def test_lazy_pyramid_level_reaches_the_run_unread(make_napari_viewer, qtbot, tmp_path, monkeypatch):
    checkpoint = save_checkpoint(tiny_unet(width=4), tmp_path / "tiny.pth", preprocess={"mode": "percentile"})
    base = np.random.default_rng(5).random((256, 256)).astype(np.float32)
    levels = [da.from_array(base, chunks=64), da.from_array(base.reshape(128, 2, 128, 2).mean((1, 3)), chunks=64)]
    seen = []
    real = _widget.explain

    def spy(data, *args, **kwargs):
        seen.append(type(data))
        return real(data, *args, **kwargs)

    monkeypatch.setattr(_widget, "explain", spy)
    viewer = make_napari_viewer()
    viewer.add_image(levels, multiscale=True, name="slide", scale=(0.5, 0.5))
    widget = open_widget(viewer)
    use_checkpoint(widget, checkpoint)
    widget.layers.value = ["up4"]
    widget.level.value = 0
    run_and_wait(qtbot, widget)
    assert seen and not any(issubclass(t, np.ndarray) for t in seen), seen
    labels = viewer.layers["slide labels (UNet)"]
    np.testing.assert_allclose(labels.scale, (0.5, 0.5))  # level 0's placement
    assert (np.asarray(labels.data) == predict(base, load_model(checkpoint, device="cpu"))).all()


def _big_image(seed=7, shape=(1100, 1300)):
    """Large enough for a two-level results pyramid (the store's pyramid stops at 1024 px)."""
    return np.random.default_rng(seed).random(shape).astype(np.float32)


def _as_if_ram_were_small(monkeypatch):
    monkeypatch.setattr(_large, "system_available_bytes", lambda: 1 << 20)


def test_results_too_large_for_ram_go_to_a_temporary_ome_zarr_shown_as_pyramids(
    make_napari_viewer, qtbot, tmp_path, monkeypatch
):
    pytest.importorskip("ome_zarr")
    checkpoint = save_checkpoint(tiny_unet(width=4), tmp_path / "tiny.pth", preprocess={"mode": "percentile"})
    image = _big_image()
    viewer = make_napari_viewer()
    viewer.add_image(image, name="mosaic", scale=(0.5, 0.5), translate=(3, 4))
    widget = open_widget(viewer)
    use_checkpoint(widget, checkpoint)
    widget.layers.value = ["up3", "up4"]
    _as_if_ram_were_small(monkeypatch)
    run_and_wait(qtbot, widget, timeout=180000)
    labels = viewer.layers["mosaic labels (UNet)"]
    assert labels.multiscale and len(labels.data) == 2, widget.status.value
    store = Path(labels.metadata["unet_gradcam"]["store"])
    assert store.is_dir() and _large.Stores().is_temporary(store) is False  # another widget's stores are not ours
    assert widget.stores.is_temporary(store) and "on disk in" in widget.status.value
    np.testing.assert_allclose(labels.scale, (0.5, 0.5))
    np.testing.assert_allclose(labels.translate, (3, 4))
    heat = viewer.layers["mosaic Grad-CAM up4 nucleus"]
    assert heat.multiscale and heat.data[0].shape == image.shape and heat.data[1].shape == (550, 650)
    in_ram = explain(image, load_model(checkpoint, device="cpu"), layers=["up3", "up4"], tile_size=512)
    assert (np.asarray(labels.data[0]) == in_ram.labels).all()  # the same labels as in RAM
    for (ly, c), expected in in_ram.cams.items():  # and the same maps, normalised lazily as in RAM
        name = f"mosaic Grad-CAM {ly} {in_ram.class_names[c]}"
        shown = np.asarray(viewer.layers[name].data[0])
        assert shown.min() >= 0 and shown.max() <= 1  # normalised lazily, per map
        if np.ptp(expected) == 0:  # no pixel of this class: a flat map
            assert np.ptp(shown) == 0
            continue
        assert np.corrcoef(shown.ravel(), expected.ravel())[0, 1] >= 0.9999  # tiles differ at their seams

    # Grid view on pyramids: the coarsest level, placed over the image.
    widget.toggle_grid()
    qtbot.waitUntil(lambda: widget.grid.active and widget.grid_btn.enabled, timeout=30000)
    grid = viewer.layers["grid view"]
    np.testing.assert_allclose(grid.scale[:2], (1.0, 1.0))  # 2x the image's pixel size
    widget.toggle_grid()

    # Export and Check maps say where the results are instead of reading them whole.
    assert widget.export(tmp_path / "out", wait=True) == [] and "OME-Zarr" in widget.status.value
    widget.check_maps()
    assert "on disk" in widget.status.value and widget.runner.state.name == "IDLE"

    # A re-run updates the pyramids in place and removes the store it replaced.
    widget.method.value = "hirescam"
    n_layers = len(viewer.layers)
    run_and_wait(qtbot, widget, timeout=180000)
    assert len(viewer.layers) == n_layers
    assert viewer.layers["mosaic labels (UNet)"] is labels
    new_store = Path(labels.metadata["unet_gradcam"]["store"])
    assert new_store != store and new_store.is_dir() and not store.exists(), widget.status.value
    assert not any("#" in ly.name for ly in viewer.layers)
    np.testing.assert_array_equal(viewer.layers["mosaic"].data, image)  # the user's data untouched

    # A kept run keeps its store through the next run; closing the dock mid-run leaves no partial store.
    widget.keep()
    run_and_wait(qtbot, widget, timeout=180000)
    assert new_store.is_dir() and Path(labels.metadata["unet_gradcam"]["store"]) == new_store
    widget.method.value = "gradcam"
    widget.run()
    qtbot.waitUntil(lambda: widget.bar.value > 0, timeout=60000)
    writing = Path(widget.status.value.split("writing to ")[1].rstrip(" ."))
    viewer.window.remove_dock_widget(widget.native)
    qtbot.waitUntil(lambda: widget.runner._worker is None, timeout=60000)
    assert not writing.exists()


def test_a_chosen_results_folder_keeps_every_run(make_napari_viewer, qtbot, tmp_path):
    pytest.importorskip("ome_zarr")
    checkpoint = save_checkpoint(tiny_unet(width=4), tmp_path / "tiny.pth", preprocess={"mode": "percentile"})
    viewer = make_napari_viewer()
    viewer.add_image(_big_image(shape=(300, 280)), name="small one")
    widget = open_widget(viewer)
    use_checkpoint(widget, checkpoint)
    widget.layers.value = ["up4"]
    widget.results_dir.value = tmp_path / "results"
    widget.scale.value = 0.5
    widget.run()
    assert "scale to 1" in widget.status.value and idle(widget)  # refused before the run, nothing added
    assert len(viewer.layers) == 1
    widget.scale.value = 1.0
    (tmp_path / "results").mkdir()
    run_and_wait(qtbot, widget)
    labels = viewer.layers["small one labels (UNet)"]
    first = Path(labels.metadata["unet_gradcam"]["store"])
    run_and_wait(qtbot, widget)
    second = Path(labels.metadata["unet_gradcam"]["store"])
    stores = set((tmp_path / "results").glob("small_one-*.ome.zarr"))
    assert stores == {first, second} and first != second, widget.status.value  # the user's folder: nothing removed
    assert not labels.multiscale


def test_visible_region_only_explains_what_is_on_screen(make_napari_viewer, qtbot, tmp_path):
    checkpoint = save_checkpoint(tiny_unet(width=4), tmp_path / "tiny.pth", preprocess={"mode": "percentile"})
    image = _big_image(shape=(512, 512))
    viewer = make_napari_viewer(show=True)
    layer = viewer.add_image(image, name="field", scale=(2.0, 2.0))
    widget = open_widget(viewer)
    use_checkpoint(widget, checkpoint)
    widget.layers.value = ["up4"]
    viewer.camera.center = (300.0, 400.0)
    viewer.camera.zoom = 6.0
    qtbot.waitUntil(lambda: np.ptp(layer.corner_pixels[:, -1]) < 300, timeout=10000)
    (ys, xs) = _regions.visible_box(layer)
    widget.visible_only.value = True
    run_and_wait(qtbot, widget)
    labels = viewer.layers["field labels (UNet)"]
    assert labels.data.shape == (ys.stop - ys.start, xs.stop - xs.start), widget.status.value
    assert labels.data.shape[1] < 300 and (ys.start, xs.start) != (0, 0)
    np.testing.assert_allclose(labels.translate, (2.0 * ys.start, 2.0 * xs.start))
    centre = labels.world_to_data(viewer.camera.center[-2:])
    assert all(0 <= c < s for c, s in zip(centre, labels.data.shape, strict=True))  # under the view's centre
    crop = image[ys, xs]
    assert (np.asarray(labels.data) == predict(crop, load_model(checkpoint, device="cpu"))).all()

    viewer.camera.center = (5000.0, 5000.0)  # panned off the image
    qtbot.waitUntil(lambda: layer.corner_pixels[0, -1] >= layer.corner_pixels[1, -1], timeout=10000)
    widget.run()
    assert "No part of 'field' is on screen" in widget.status.value and idle(widget)


def test_estimates_read_as_a_reviewer_wants_them():
    assert [_large.duration(s) for s in (0.4, 42, 720, 11200)] == ["<1 s", "~42 s", "~12 min", "~3.1 h"]
    assert _large.level_label(2, (4096, 4096), 1.2, 75.0) == "2: 4096x4096, 1.2 GiB, ~75 s"
    assert _large.level_label(0, (99999, 99999), 1e9, None) == "0: 99999x99999, 1e+09 GiB on disk"


def test_time_estimates_separate_the_fixed_cost_from_the_cost_per_pixel():
    net = tiny_unet(width=4)
    speed = _large.Speed()
    assert speed.estimate(net, 10) is None
    speed.fit(net, [(4 * 65536, 1.3), (65536, 0.4)])  # 0.1 s fixed, 1 s per 327,680 pixels
    assert speed.estimate(net, 65536 * 100) == pytest.approx(0.1 + 100 * 0.3)
    speed.record(net, 65536 * 10, 6.1)  # a run: 6 s beyond the fixed part
    assert speed.estimate(net, 65536 * 100) == pytest.approx(0.1 + 60.0)
    speed.fit(net, [(65536, 0.5), (4 * 65536, 0.45)])  # noise: the larger probe was faster
    assert speed.estimate(net, 65536) == pytest.approx(0.45 / 4)


def test_pyramid_levels_show_a_time_estimate_from_a_probe_then_from_runs(make_napari_viewer, qtbot, tmp_path):
    checkpoint = save_checkpoint(tiny_unet(width=4), tmp_path / "tiny.pth", preprocess={"mode": "percentile"})
    base = np.random.default_rng(5).random((256, 256)).astype(np.float32)
    viewer = make_napari_viewer()
    widget = open_widget(viewer)
    use_checkpoint(widget, checkpoint)
    viewer.add_image([base, base[::2, ::2]], multiscale=True, name="slide")
    qtbot.waitUntil(lambda: widget.level.native.itemText(0).endswith(" s"), timeout=30000)
    texts = [widget.level.native.itemText(i) for i in range(widget.level.native.count())]
    assert texts[0].startswith("0: 256x256, ") and texts[0].endswith(" s"), texts
    widget.level.value = 1
    run_and_wait(qtbot, widget)
    assert widget.level.value == 1  # a new estimate does not reset the user's pick
