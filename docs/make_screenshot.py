"""Regenerate the screenshots in docs/: napari with the widget on the 2-D sample.

screenshot.png          after one run (Grad-CAM, the bundled model)
screenshot-grid.png     Grad-CAM kept as run #1, then HiResCAM, compared in the grid
screenshot-1366.png     the same window at 1366x768, to check the widget fits a laptop screen
screenshot-checks.png   Check maps on the HiResCAM run: the table and the curves docked

QT_QPA_PLATFORM=xcb xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python docs/make_screenshot.py
"""

import time
from pathlib import Path

import napari
from qtpy.QtWidgets import QApplication

OUT = Path(__file__).parent


def settle(cond=lambda: True, seconds: float = 0.5) -> None:
    while not cond():
        QApplication.processEvents()
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        QApplication.processEvents()


def main() -> None:
    viewer = napari.Viewer(show=True)
    viewer.window.resize(1500, 950)
    viewer.open_sample("napari-unet-gradcam", "nuclei-2d")
    _, widget = viewer.window.add_plugin_dock_widget("napari-unet-gradcam", "UNet Grad-CAM")
    idle = lambda: not widget.runner.busy  # noqa: E731
    widget.layers.value = ["up2", "up3", "up4"]
    widget.run()
    settle(idle)
    viewer.screenshot(str(OUT / "screenshot.png"), canvas_only=False, flash=False)
    widget.keep()
    widget.method.value = "hirescam"
    widget.run()
    settle(idle)
    for name in ("nuclei 2D Grad-CAM up3 nucleus #1", "nuclei 2D HiResCAM up3 nucleus"):
        viewer.layers[name].visible = True  # compare what the reviewer looks at: up3 and up4 nucleus
    widget.toggle_grid()
    settle(lambda: widget.grid.active and widget.grid_btn.enabled)
    viewer.screenshot(str(OUT / "screenshot-grid.png"), canvas_only=False, flash=False)
    viewer.window.resize(1366, 768)
    settle()
    viewer.screenshot(str(OUT / "screenshot-1366.png"), canvas_only=False, flash=False)
    print(widget.status.value)
    viewer.window.resize(1500, 950)
    widget.toggle_grid()
    settle(lambda: not widget.grid.active and widget.grid_btn.enabled)
    widget.check_maps()
    settle(idle, seconds=1.0)
    viewer.screenshot(str(OUT / "screenshot-checks.png"), canvas_only=False, flash=False)
    print(widget.status.value)
    viewer.close()


if __name__ == "__main__":
    main()
