"""The widget hands a lazy (dask, zarr) pyramid level to the run unread; results overlay the level."""

import numpy as np
import pytest

from napari_unet_gradcam import _widget, load_model, predict, save_checkpoint

from .conftest import tiny_unet
from .test_widget import open_widget, run_and_wait, use_checkpoint

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
