"""Regenerate docs/screenshot.png: napari with the widget after one run on the 2-D sample.

QT_QPA_PLATFORM=xcb xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python docs/make_screenshot.py
"""

from pathlib import Path

import napari
from qtpy.QtWidgets import QApplication

OUT = Path(__file__).parent


def main(grid: bool = False) -> None:
    viewer = napari.Viewer(show=True)
    viewer.window.resize(1500, 950)
    viewer.open_sample("napari-unet-gradcam", "nuclei-2d")
    _, widget = viewer.window.add_plugin_dock_widget("napari-unet-gradcam", "UNet Grad-CAM")
    widget.run()
    while widget._worker is not None:
        QApplication.processEvents()
    viewer.window._qt_window.repaint()
    viewer.screenshot(str(OUT / "screenshot.png"), canvas_only=False, flash=False)
    widget.toggle_grid()
    QApplication.processEvents()
    viewer.screenshot(str(OUT / "screenshot-grid.png"), canvas_only=False, flash=False)
    print(widget.status.value)
    viewer.close()


if __name__ == "__main__":
    main()
