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
    if run.result.labels.ndim != 2:
        return "Check maps works on one 2-D image: tick 'current slice only' for a stack, run, then check."
    if run.result.metadata.get("tile_size"):
        return "Check maps needs an untiled run: set tile size to 0 (automatic) on an image that fits."
    return None


def cost_text(run: LastRun) -> str:
    cost = estimate_cost(run.result)
    n = len(run.result.cams)
    return (
        f"Checking {n} map(s): {cost.forward_passes} forward passes and {cost.explain_runs} explain run(s), "
        f"about {cost.forward_passes + 2 * cost.explain_runs}x the time of one segmentation ..."
    )


def compute(run: LastRun, progress, cancel) -> MapChecks:
    from .faithfulness import check_maps

    target = run.target if isinstance(run.target, np.ndarray) else None
    return check_maps(run.image, run.net, run.result, target=target, rgb=run.rgb, progress=progress, cancel=cancel)


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


def show_table(viewer, checks: MapChecks, table=None):
    """A table docked under the canvas (updated in place on later checks); returns it."""
    from qtpy.QtWidgets import QTableWidget, QTableWidgetItem

    rows = checks.summary_rows()
    if table is None:
        table = QTableWidget()
        table.setToolTip(
            "Deletion AUC: lower is better (removing the map's top pixels first drops the score fast). "
            "Insertion AUC: higher is better. 'vs random': the ratio to a random pixel order (deletion < 1 "
            "and insertion > 1 beat random). Randomisation rho: the map's rank correlation with the same "
            "map from a network whose layers from the output down to this one are re-initialised "
            "(low = the map depends on the trained weights). See docs/faithfulness.md."
        )
        viewer.window.add_dock_widget(table, name="UNet Grad-CAM map checks", area="bottom")
    table.setColumnCount(len(SUMMARY_COLUMNS))
    table.setHorizontalHeaderLabels(list(SUMMARY_COLUMNS))
    table.setRowCount(len(rows))
    for i, row in enumerate(rows):
        for j, value in enumerate(row):
            text = value if isinstance(value, str) else ("n/a" if not np.isfinite(value) else f"{value:.3f}")
            table.setItem(i, j, QTableWidgetItem(text))
    table.resizeColumnsToContents()
    return table


def refuse_if_unchecked(run: LastRun | None) -> LastRun:
    if run is None:
        raise UnetGradcamError("Nothing to check: press Run first.")
    why = checkable(run)
    if why:
        raise UnetGradcamError(why)
    return run
