"""Regenerate docs/screenshot-large.png and measure panning over results read from disk.

A 4096 x 4096 mosaic of synthetic fields, as a three-level dask pyramid (as napari opens an
OME-Zarr slide). Level 1 (2048 x 2048) is explained with a results folder chosen, so the
results are an OME-Zarr store shown as multiscale layers; then the view pans and zooms over them
while a timer measures the longest main-thread stall, side by side with the same moves over the
source pyramid alone.

QT_QPA_PLATFORM=xcb xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python docs/make_screenshot_large.py
"""

import sys
import tempfile
from pathlib import Path

import dask.array as da
import napari
import numpy as np

sys.path.insert(0, str(Path(__file__).parents[1] / "bench"))
from bench_ui import StallMeter, pump  # noqa: E402
from napari_unet_gradcam.synthetic import nuclei_2d  # noqa: E402

OUT = Path(__file__).parent


def mosaic() -> list:
    """16 synthetic fields of 1024 x 1024 stitched into 4096 x 4096, as a three-level pyramid."""
    fields = [nuclei_2d(seed=100 + k, shape=(1024, 1024)) for k in range(16)]
    big = np.block([fields[r * 4 : r * 4 + 4] for r in range(4)])
    level0 = da.from_array(big, chunks=512)
    return [level0, level0[::2, ::2], level0[::4, ::4]]


def moves(viewer, meter) -> float:
    meter.start()
    for center, zoom in [((1024, 1024), 1.0), ((3000, 3000), 2.0), ((500, 3500), 0.5), ((2048, 2048), 0.2)]:
        viewer.camera.center, viewer.camera.zoom = center, zoom
        pump(0.6)
    return meter.stop()[0]


def main() -> None:
    viewer = napari.Viewer(show=True)
    viewer.window.resize(1500, 950)
    levels = mosaic()
    limits = tuple(float(v) for v in np.percentile(np.asarray(levels[2]), (1, 99.8)))
    viewer.add_image(levels, multiscale=True, name="mosaic", contrast_limits=limits, colormap="gray")
    _, widget = viewer.window.add_plugin_dock_widget("napari-unet-gradcam", "UNet Grad-CAM")
    pump(1.0)
    while widget._probing is not None:  # the time estimate's probe
        pump(0.2)
    meter = StallMeter()
    source_only = moves(viewer, meter)
    widget.level.value = 1
    widget.layers.value = ["up3", "up4"]
    widget.more.value = True
    folder = Path(tempfile.mkdtemp(prefix="unet-gradcam-shot-"))
    widget.results_dir.value = folder
    widget.run()
    while widget.runner.busy:
        pump(0.2)
    print(widget.status.value)
    print("levels:", [widget.level.native.itemText(i) for i in range(widget.level.native.count())])
    with_results = moves(viewer, meter)
    print(f"longest stall while panning: source only {source_only:.0f} ms, with results on disk {with_results:.0f} ms")
    viewer.camera.center, viewer.camera.zoom = (1200, 1400), 0.45
    pump(1.5)
    viewer.screenshot(str(OUT / "screenshot-large.png"), canvas_only=False, flash=False)
    viewer.close()


if __name__ == "__main__":
    main()
