"""The widget's model sources: a MONAI bundle folder, its decoder stages listed by readable names."""

import numpy as np
import pytest

from .test_widget import open_widget, run_and_wait

pytest.importorskip("monai.networks.nets")


def test_monai_bundle_from_the_widget_lists_its_decoder_stages_and_runs(make_napari_viewer, qtbot, tmp_path):
    from .test_families_loaders import PROPOSED, _bundle

    _bundle(tmp_path, "DynUNet", 2)
    viewer = make_napari_viewer()
    viewer.add_image(np.random.default_rng(0).random((32, 32)).astype(np.float32), name="slice")
    widget = open_widget(viewer)
    assert "MONAI bundle folder" in widget.model.choices and "nnU-Net model folder" in widget.model.choices
    widget.model.value = "MONAI bundle folder"
    assert widget.checkpoint.mode.value == "d"
    widget.checkpoint.value = tmp_path
    assert widget._model is not None, widget.status.value
    assert list(widget.layers.choices) == PROPOSED["DynUNet"]
    assert widget.layers.value == PROPOSED["DynUNet"]
    titles = [widget.layers.native.item(i).text() for i in range(widget.layers.native.count())]
    assert titles[0] == "decoder 1/3 (coarsest): upsamples.0" and titles[-1].startswith("decoder 3/3 (finest)")
    assert "DynUNet, 2-D" in widget.model_info.value
    widget.layers.value = ["upsamples.2"]
    run_and_wait(qtbot, widget)
    maps = [ly for ly in viewer.layers if "upsamples.2" in ly.name]
    assert maps and all(ly.data.shape[-2:] == (32, 32) for ly in maps), [ly.name for ly in viewer.layers]
