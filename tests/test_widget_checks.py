"""Check maps in the widget: the cost stated first, the table and the curves docked, the numbers in
each heatmap layer's metadata, the plot following the table's selection."""

import numpy as np
import pytest

from napari_unet_gradcam import save_checkpoint
from napari_unet_gradcam.faithfulness import SUMMARY_COLUMNS

from .conftest import tiny_unet
from .test_widget import idle, open_widget, run_and_wait, use_checkpoint


@pytest.fixture
def ready(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    viewer.add_image(np.random.default_rng(0).random((64, 64)).astype(np.float32), name="img")
    widget = open_widget(viewer)
    use_checkpoint(
        widget, save_checkpoint(tiny_unet(width=4), tmp_path / "tiny.pth", preprocess={"mode": "percentile"})
    )
    widget.layers.value = ["up3", "up4"]
    return viewer, widget


def check_and_wait(qtbot, widget):
    widget.check_maps()
    assert "forward passes" in widget.status.value and "x the time" in widget.status.value  # the cost, first
    qtbot.waitUntil(lambda: idle(widget), timeout=120000)


def test_check_maps_after_a_run(ready, qtbot):
    viewer, widget = ready
    widget.classes.value = [1, 2]
    run_and_wait(qtbot, widget)
    assert widget.check_btn.enabled
    check_and_wait(qtbot, widget)
    assert widget.status.value.startswith("Checked 4 map(s)"), widget.status.value
    table = widget._checks_panel.table
    assert table.rowCount() == 4 and table.horizontalHeaderItem(1).text() == "deletion AUC"
    names = [table.item(i, 0).text() for i in range(4)]
    for ly in ("up3", "up4"):
        for cls in ("nucleus", "boundary"):
            checks = viewer.layers[f"img Grad-CAM {ly} {cls}"].metadata["unet_gradcam"]["checks"]
            assert checks["map"] == f"{ly}/{cls}" and set(checks) == set(SUMMARY_COLUMNS)
            row = names.index(f"{ly}/{cls}")
            for col, name in enumerate(SUMMARY_COLUMNS[1:], start=1):
                value = checks[name]
                assert table.item(row, col).text() == ("n/a" if np.isnan(value) else f"{value:.3f}")
    widget.current_slice.value = False
    widget.layers.value = []  # labels only: nothing to check, said clearly
    run_and_wait(qtbot, widget)
    widget.check_maps()
    assert "made no maps" in widget.status.value and idle(widget)


def test_the_plot_follows_the_selected_row(ready, qtbot):
    viewer, widget = ready
    widget.classes.value = [1]
    run_and_wait(qtbot, widget)
    check_and_wait(qtbot, widget)
    panel = widget._checks_panel
    axes = panel.figure.get_axes()
    assert len(axes) == 2  # one class: deletion and insertion
    assert {ln.get_label() for ln in axes[0].get_lines()} == {"up3", "up4", "random order"}
    row = [panel.table.item(i, 0).text() for i in range(2)].index("up4/nucleus")
    panel.table.selectRow(row)
    widths = {ln.get_label(): ln.get_linewidth() for ln in panel.figure.get_axes()[0].get_lines()}
    assert widths["up4"] > widths["up3"]
    # A second check updates the same dock instead of adding one.
    docks = len(viewer.window.dock_widgets)
    check_and_wait(qtbot, widget)
    assert widget._checks_panel is panel and len(viewer.window.dock_widgets) == docks
