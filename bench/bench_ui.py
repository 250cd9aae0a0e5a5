"""The longest Qt event-loop stall through a reviewer's loop in the widget.

A QTimer asks to fire every 5 ms; the largest gap between two firings is how long the UI froze.
The longest CPython garbage collection inside the window is reported beside it: in napari's
large object graph a full collection takes a few hundred ms and lands on whatever allocates.

Steps, on the bundled model and the 2-D sample (512^2, 12 maps): first run; re-run with another
method (layers updated in place); the same re-run the old way (result layers removed, then
added again) side by side; grid on; re-run inside the grid; grid off; keep the run, re-run with a
third method, grid of the two runs on and off. Then first runs on a 3-D stack and on 2048^2,
each against a blocking call on the UI thread.

    QT_QPA_PLATFORM=xcb xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python bench/bench_ui.py
"""

from __future__ import annotations

import argparse
import gc
import time

import napari
import numpy as np
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QApplication

from napari_unet_gradcam import explain, load_model
from napari_unet_gradcam._layers import mark
from napari_unet_gradcam.synthetic import nuclei_2d, nuclei_3d


class StallMeter:
    def __init__(self):
        self.last = time.perf_counter()
        self.gaps: list[float] = []
        self.timer = QTimer()
        self.timer.setInterval(5)
        self.timer.timeout.connect(self._tick)
        self.gc_pauses: list[float] = []
        self._gc_t0 = 0.0

    def _tick(self):
        now = time.perf_counter()
        self.gaps.append(now - self.last)
        self.last = now

    def _gc(self, phase, info):
        if phase == "start":
            self._gc_t0 = time.perf_counter()
        else:
            self.gc_pauses.append(time.perf_counter() - self._gc_t0)

    def start(self):
        self.gaps.clear()
        self.gc_pauses.clear()
        gc.callbacks.append(self._gc)
        self.last = time.perf_counter()
        self.timer.start()

    def stop(self) -> tuple[float, float, float]:
        self.timer.stop()
        gc.callbacks.remove(self._gc)
        longest_gc = max(self.gc_pauses, default=0.0) * 1000
        gaps = self.gaps or [0.0]
        return max(gaps) * 1000, float(np.percentile(gaps, 99)) * 1000, longest_gc


def pump(seconds: float):
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        QApplication.processEvents()


def wait(cond):
    while not cond():
        QApplication.processEvents()
        time.sleep(0.001)


def measure(meter: StallMeter, rows: list, name: str, how: str, action, until) -> None:
    print("step:", how, flush=True)
    pump(0.3)
    meter.start()
    t = time.perf_counter()
    action()
    wait(until)
    pump(0.2)
    rows.append((name, how, time.perf_counter() - t, *meter.stop()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="the review loop only, no 3-D / 2048^2 rows")
    ap.add_argument(
        "--old-way", action="store_true", help="also time the old re-run (can crash Mesa's software GL, see docs)"
    )
    args = ap.parse_args()
    viewer = napari.Viewer(show=True)
    viewer.window.resize(1500, 950)
    _, widget = viewer.window.add_plugin_dock_widget("napari-unet-gradcam", "UNet Grad-CAM")
    meter = StallMeter()
    rows: list = []
    idle = lambda: not widget.runner.busy  # noqa: E731
    grid_done = lambda: widget.grid_btn.enabled  # noqa: E731
    name = "2-D 512x512"
    layer = viewer.add_image(nuclei_2d(7), name=name)
    viewer.layers.selection.active = layer
    measure(meter, rows, name, "first run (13 layers added)", widget.run, idle)
    widget.method.value = "hirescam"
    measure(meter, rows, name, "re-run, other method (in place)", widget.run, idle)

    def old_way():
        for ly in [ly for ly in viewer.layers if mark(ly)]:
            viewer.layers.remove(ly)  # one by one, as the widget did before
        widget.run()

    if args.old_way:
        widget.method.value = "gradcam++"
        measure(meter, rows, name, "re-run the old way (remove all, add again)", old_way, idle)
    widget.method.value = "layercam"
    measure(meter, rows, name, "re-run, other method (in place)", widget.run, idle)
    measure(meter, rows, name, "grid on (8 cells)", widget.toggle_grid, grid_done)
    widget.method.value = "xgradcam"
    measure(meter, rows, name, "re-run inside the grid", widget.run, idle)
    measure(meter, rows, name, "grid off", widget.toggle_grid, lambda: True)
    measure(meter, rows, name, "keep run", widget.keep, lambda: True)
    widget.method.value = "gradcam"
    measure(meter, rows, name, "run beside the kept one (13 layers added)", widget.run, idle)
    measure(meter, rows, name, "grid of two runs on", widget.toggle_grid, grid_done)
    measure(meter, rows, name, "grid of two runs off", widget.toggle_grid, lambda: True)
    if not args.quick:
        for name, data in (("3-D 16x256x256", nuclei_3d(11)), ("2-D 2048x2048", np.tile(nuclei_2d(7), (4, 4)))):
            layer = viewer.add_image(data, name=name)
            viewer.layers.selection.active = layer
            measure(meter, rows, name, "widget, first run", widget.run, idle)
            net = load_model(device="cpu")
            done: list = []
            # The naive way: explain() called on the UI thread, from an event, as a button would.
            measure(
                meter,
                rows,
                name,
                "blocking call on the UI thread",
                lambda d=data, n=net, out=done: QTimer.singleShot(0, lambda: out.append(explain(d, n))),
                lambda out=done: bool(out),
            )
    print("| image | step | wall s | longest stall ms | 99th percentile gap ms | longest GC pause ms |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]:.1f} | {r[3]:.0f} | {r[4]:.0f} | {r[5]:.0f} |")
    viewer.close()


if __name__ == "__main__":
    main()
