"""A 3-D network on a volume layer in a real viewer: labels and 3-D maps placed on the source."""

import numpy as np
import pytest

from .test_widget import open_widget, run_and_wait

pytest.importorskip("monai.networks.nets")


def test_3d_bundle_on_a_scaled_volume_layer(make_napari_viewer, qtbot, tmp_path):
    from napari_unet_gradcam import explain
    from napari_unet_gradcam.bundles import load_any

    from .test_families_loaders import _bundle

    _bundle(tmp_path, "BasicUNet", 3)
    vol = np.random.default_rng(0).random((20, 32, 28)).astype(np.float32)
    vol[6:14, 8:20, 5:18] += 1.0
    viewer = make_napari_viewer()
    src = viewer.add_image(vol, name="vol", scale=(2, 0.5, 0.5), translate=(10, -3, 4))
    widget = open_widget(viewer)
    widget.model.value = "MONAI bundle folder"
    widget.checkpoint.value = tmp_path
    assert widget._model is not None, widget.status.value
    assert "BasicUNet, 3-D" in widget.model_info.value
    widget.layers.value = ["upcat_2", "upcat_1"]
    widget.preprocess.value = "none"
    run_and_wait(qtbot, widget)
    assert "error" not in widget.status.value.lower(), widget.status.value
    ref = explain(vol, load_any(tmp_path, device="cpu"), layers=["upcat_2", "upcat_1"], preprocess="none")
    labels = viewer.layers["vol labels (UNet)"]
    np.testing.assert_array_equal(labels.data, ref.labels)
    maps = [ly for ly in viewer.layers if "upcat_1" in ly.name or "upcat_2" in ly.name]
    assert len(maps) == 6, [ly.name for ly in viewer.layers]
    for ly in [labels, *maps]:
        assert ly.data.shape == vol.shape
        np.testing.assert_allclose(ly.scale, src.scale)
        np.testing.assert_allclose(ly.translate, src.translate)
    tumour = viewer.layers[next(ly.name for ly in maps if ly.name.endswith("upcat_1 tumour"))]
    np.testing.assert_allclose(tumour.data, ref.cams["upcat_1", 2], atol=1e-6)

    # A re-run with another method updates the same layers in place.
    ids = {id(ly) for ly in viewer.layers}
    widget.method.value = "gradcam++"
    run_and_wait(qtbot, widget)
    ref = explain(
        vol, load_any(tmp_path, device="cpu"), layers=["upcat_2", "upcat_1"], preprocess="none", method="gradcam++"
    )
    assert {id(ly) for ly in viewer.layers} == ids, [ly.name for ly in viewer.layers]
    tumour = next(ly for ly in viewer.layers if "upcat_1 tumour" in ly.name)
    np.testing.assert_allclose(tumour.data, ref.cams["upcat_1", 2], atol=1e-6)

    # 'current slice only' on a volume: the network is 3-D, so the volume on screen runs whole.
    viewer.dims.set_point(0, 20.0)
    widget.current_slice.value = True
    run_and_wait(qtbot, widget)
    assert "error" not in widget.status.value.lower(), widget.status.value
    labels = next(ly for ly in viewer.layers if ly.name.startswith("vol labels"))
    assert labels.data.shape == vol.shape

    # On a time series of volumes it explains the time point on screen, placed there.
    series = viewer.add_image(np.stack([vol, vol[::-1]]), name="series", scale=(1, 2, 0.5, 0.5))
    widget.image.value = series
    viewer.dims.set_point(0, 1.0)
    run_and_wait(qtbot, widget)
    labels = viewer.layers["series labels (UNet)"]
    assert labels.data.shape == (1, *vol.shape), widget.status.value
    assert labels.translate[0] == 1.0
    ref = explain(
        vol[::-1],
        load_any(tmp_path, device="cpu"),
        layers=["upcat_2", "upcat_1"],
        method="gradcam++",
        preprocess="none",
    )
    np.testing.assert_array_equal(labels.data[0], ref.labels)
