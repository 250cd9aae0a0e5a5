"""The longest Qt event-loop stall while the widget runs, against a run that blocks the UI.

A QTimer asks to fire every 5 ms; the largest gap between two firings is how long the UI froze.
The longest CPython garbage collection inside the window is reported beside it: in napari's
large object graph a full collection takes a few hundred ms and lands on whatever allocates.

    QT_QPA_PLATFORM=xcb xvfb-run -a .venv/bin/python bench/bench_ui.py
"""

from __future__ import annotations

import gc
import time

import napari
import numpy as np
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QApplication

from napari_unet_gradcam import explain, load_model
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
        return max(self.gaps) * 1000, float(np.percentile(self.gaps, 99)) * 1000, longest_gc


def pump(seconds: float):
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        QApplication.processEvents()


def main() -> None:
    viewer = napari.Viewer(show=True)
    _, widget = viewer.window.add_plugin_dock_widget("napari-unet-gradcam", "UNet Grad-CAM")
    meter = StallMeter()
    rows = []
    for name, data in (
        ("2-D 512x512", nuclei_2d(7)),
        ("3-D 16x256x256", nuclei_3d(11)),
        ("2-D 2048x2048", np.tile(nuclei_2d(7), (4, 4))),
    ):
        layer = viewer.add_image(data, name=name)
        viewer.layers.selection.active = layer
        pump(0.5)
        meter.start()
        t = time.perf_counter()
        widget.run()
        while widget._worker is not None or widget._building:  # layers are built on the main thread
            QApplication.processEvents()
            time.sleep(0.001)
        pump(0.3)
        rows.append((name, "widget (thread_worker)", time.perf_counter() - t, *meter.stop()))
        net = load_model(device="cpu")
        meter.start()
        pump(0.1)
        t = time.perf_counter()
        done = []
        # The naive way: explain() called on the UI thread, from an event, as a button would.
        QTimer.singleShot(0, lambda d=data, n=net, out=done: out.append(explain(d, n)))
        while not done:
            QApplication.processEvents()
        pump(0.2)
        rows.append((name, "blocking call on the UI thread", time.perf_counter() - t, *meter.stop()))
    print("| image | how | wall s | longest stall ms | 99th percentile gap ms | longest GC pause ms |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]:.1f} | {r[3]:.0f} | {r[4]:.0f} | {r[5]:.0f} |")
    viewer.close()


if __name__ == "__main__":
    main()
