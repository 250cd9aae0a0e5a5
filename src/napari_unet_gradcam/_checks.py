"""The widget's "Check maps": faithfulness and sanity numbers for the last run's heatmaps.

The computation is :func:`faithfulness.check_maps` in the widget's worker (progress, cancel);
the numbers go into each heatmap layer's metadata and into a table docked under the canvas.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ._layers import MARK, is_current, mark
from .errors import UnetGradcamError
from .faithfulness import SUMMARY_COLUMNS, MapChecks, estimate_cost


@dataclass
class LastRun:
    """What the last run explained, kept so its maps can be checked and exported."""

    snap: Any  # _layers.Snapshot
    result: Any  # ExplainResult
    layers: list
    image: np.ndarray  # the array explain() was given (after the channel choice)
    rgb: bool
    target: Any  # "predicted", "image" or the region mask
    net: Any  # the model the run used (the widget's choice may have changed since)


def checkable(run: LastRun) -> str | None:
    """Why the run's maps cannot be checked, or None."""
    if not run.result.cams:
        return "The last run made no maps (no layer or class selected)."
    if run.result.metadata.get("out"):
        return (
            "Check maps works on results held in memory; the last run's are on disk. Tick 'visible region only' "
            "(or choose a coarser pyramid level), run, then check."
        )
    if run.result.labels.ndim != 2:
        return "Check maps works on one 2-D image: tick 'current slice only' for a stack, run, then check."
    if run.result.metadata.get("tile_size"):
        return "Check maps needs an untiled run: set tile size to 0 (automatic) on an image that fits."
    return None


def cost_text(run: LastRun) -> str:
    cost = estimate_cost(run.result)
    rand = f" and {cost.explain_runs} randomised network(s)" if cost.explain_runs else ""
    return (
        f"Checking {len(run.result.cams)} map(s): {cost.forward_passes} forward passes{rand}, about "
        f"{cost.times_predict:.0f}x the time of one segmentation (without maps) on a CPU ..."
    )


def compute(run: LastRun, progress, cancel) -> MapChecks:
    from .faithfulness import check_maps

    target = run.target if isinstance(run.target, np.ndarray) else None
    checks = check_maps(run.image, run.net, run.result, target=target, rgb=run.rgb, progress=progress, cancel=cancel)
    _import_plotting()
    return checks


def _import_plotting() -> None:
    """Import matplotlib here, in the worker: its first import (about 1 s) would stall napari's main thread."""
    try:
        import matplotlib.figure  # noqa: F401
        from matplotlib.backends import backend_qtagg  # noqa: F401
    except ImportError:  # the dock says what to install
        pass


def annotate_layers(viewer, run: LastRun, checks: MapChecks) -> int:
    """The numbers into each current heatmap layer's metadata; how many layers got them."""
    rows = {(c.layer, c.class_index): row for c, row in zip(checks.checks, checks.summary_rows(), strict=True)}
    n = 0
    for ly in viewer.layers:
        m = mark(ly)
        row = rows.get((m.get("layer"), m.get("class_index")))
        if m.get("kind") != "heatmap" or row is None or not is_current(ly, run.snap.source_id):
            continue
        ly.metadata = {**ly.metadata, MARK: {**m, "checks": dict(zip(SUMMARY_COLUMNS, row, strict=True))}}
        n += 1
    return n


TABLE_TIP = (
    "Deletion AUC: lower is better (removing the map's top pixels first drops the score fast). "
    "Insertion AUC: higher is better. 'vs random': the ratio to a random pixel order (deletion < 1 "
    "and insertion > 1 beat random). Randomisation rho: the map's rank correlation with the same "
    "map from a network whose layers from the output down to this one are re-initialised "
    "(low = the map depends on the trained weights). Select a row to pick its curves out in the plot. "
    "See docs/faithfulness.md."
)


class ChecksPanel:
    """The table and, where matplotlib is installed, the curves plot; a selected row is drawn thick."""

    def __init__(self):
        from qtpy.QtCore import Qt
        from qtpy.QtWidgets import QLabel, QSplitter, QTableWidget

        self.checks: MapChecks | None = None
        self.widget = QSplitter(Qt.Orientation.Horizontal)
        self.table = QTableWidget()
        self.table.setToolTip(TABLE_TIP)
        self.table.setSelectionBehavior(QTableWidget.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QTableWidget.SelectionMode.SingleSelection)
        self.widget.addWidget(self.table)
        try:
            from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
            from matplotlib.figure import Figure
        except ImportError:
            from .curves_plot import INSTALL_HINT

            self.figure = self.canvas = None
            self.widget.addWidget(QLabel(INSTALL_HINT))
        else:
            self.figure = Figure(figsize=(7, 4))
            self.canvas = FigureCanvasQTAgg(self.figure)
            self.canvas.setMinimumSize(320, 240)
            self.widget.addWidget(self.canvas)
        self.table.itemSelectionChanged.connect(self.draw)

    def alive(self) -> bool:
        try:
            self.table.rowCount()
        except RuntimeError:  # its Qt object was deleted with the dock
            return False
        return True

    def highlighted(self) -> tuple[str, int] | None:
        rows = self.table.selectionModel().selectedRows() if self.checks else []
        return self.checks.checks[rows[0].row()].key if rows else None

    def draw(self) -> None:
        if self.figure is None or self.checks is None:
            return
        from .curves_plot import plot_curves

        plot_curves(self.checks, self.figure, self.highlighted())
        self.canvas.draw_idle()

    def show(self, checks: MapChecks) -> None:
        from qtpy.QtWidgets import QTableWidgetItem

        self.checks = None  # no redraw for the old numbers while the table is refilled
        rows = checks.summary_rows()
        self.table.clearSelection()
        self.table.setColumnCount(len(SUMMARY_COLUMNS))
        self.table.setHorizontalHeaderLabels(list(SUMMARY_COLUMNS))
        self.table.setRowCount(len(rows))
        for i, row in enumerate(rows):
            for j, value in enumerate(row):
                text = value if isinstance(value, str) else ("n/a" if not np.isfinite(value) else f"{value:.3f}")
                self.table.setItem(i, j, QTableWidgetItem(text))
        self.table.resizeColumnsToContents()
        self.checks = checks
        self.draw()


def show_table(viewer, checks: MapChecks, panel: ChecksPanel | None = None) -> ChecksPanel:
    """The table and the curves docked under the canvas (updated in place on later checks); returns them."""
    if panel is not None and not panel.alive():  # the user closed the dock: a new one
        panel = None
    if panel is None:
        panel = ChecksPanel()
        viewer.window.add_dock_widget(panel.widget, name="UNet Grad-CAM map checks", area="bottom")
    panel.show(checks)
    return panel


def refuse_if_unchecked(run: LastRun | None) -> LastRun:
    if run is None:
        raise UnetGradcamError("Nothing to check: press Run first.")
    why = checkable(run)
    if why:
        raise UnetGradcamError(why)
    return run
