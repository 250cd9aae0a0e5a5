"""Heatmaps side by side, each over its image, in napari's grid view.

Each cell is a pair of view layers that share the arrays of the source image and of a map (no
copies): the image in grey and the map above it, captioned with the map's run, layer and class.
The user's own layers are only hidden, never moved, so leaving the grid restores the layer list
exactly. Kept runs (``_layers.keep_run``) become rows, so two methods or two checkpoints are
compared map by map.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._layers import MARK, mark, remove_layers, source_id


@dataclass
class Cell:
    key: tuple  # (run, decoder layer, class index): the same cell across re-runs
    caption: str
    heat: Any  # the map's array (a view into a stacked layer's data for stacked output)
    source: Any  # the heatmap or stack layer the map comes from
    lead: int  # 2 for a stacked layer (decoder layer, class axes), else 0


def grid_model(viewer):
    """The viewer's grid model: ``viewer.canvas.grid`` from napari 0.9, ``viewer.grid`` before."""
    canvas = getattr(viewer, "canvas", None)
    return canvas.grid if canvas is not None and hasattr(canvas, "grid") else viewer.grid


def _run_label(m: dict) -> str:
    title = m.get("method_title") or m.get("method", "?")
    return f"{title} #{m['kept']}" if m.get("kept") else title


def _maps(layer) -> Iterator[tuple[str, int, str, Any]]:
    """(decoder layer, class index, class name, 2-D or N-D map) for every map a layer holds."""
    m = mark(layer)
    if m.get("kind") == "heatmap":
        yield m["layer"], m["class_index"], m["class_name"], layer.data
    elif m.get("kind") == "stack":
        for i, ly in enumerate(m["layers"]):
            indices = m.get("class_indices", range(len(m["classes"])))
            for j, (c, name) in enumerate(zip(indices, m["classes"], strict=True)):
                yield ly, c, name, layer.data[i, j]


def plan_cells(viewer, source=None, visible=None) -> list[Cell]:
    """The cells to show: the visible maps' (layer, class), or every foreground map, for each run.

    With kept runs, each run is a row over the maps every run has, so rows line up.
    """
    visible = visible or (lambda ly: ly.visible)
    results = [ly for ly in viewer.layers if mark(ly).get("kind") in ("heatmap", "stack")]
    if source is not None:
        sid = source_id(source)
        results = [ly for ly in results if mark(ly).get("source_id") == sid] or results
    runs: dict[tuple, dict] = {}
    for ly in results:
        m = mark(ly)
        run = (m.get("kept") or float("inf"), _run_label(m))  # kept runs first, in the order kept
        for name, c, cname, data in _maps(ly):
            runs.setdefault(run, {})[name, c] = (cname, data, ly)
    if not runs:
        return []
    shown = {k for ly in results if visible(ly) and mark(ly).get("kind") == "heatmap" for k in _maps_keys(ly)}
    common = set.intersection(*(set(maps) for maps in runs.values()))
    keys = [k for k in next(iter(runs.values())) if k in common]
    if len(shown & common) >= (1 if len(runs) > 1 else 2):
        keys = [k for k in keys if k in shown]
    elif any(c != 0 for _, c in keys):
        keys = [k for k in keys if k[1] != 0]
    cells: list[Cell] = []
    for run in sorted(runs):
        for name, c in keys:
            cname, data, ly = runs[run][name, c]
            caption = f"{name} / {cname}" if len(runs) == 1 else f"{run[1]}: {name} / {cname}"
            lead = 2 if mark(ly).get("kind") == "stack" else 0
            cells.append(Cell((run[1], name, c), caption, data, ly, lead))
    return cells


def _maps_keys(layer) -> list[tuple[str, int]]:
    return [(name, c) for name, c, *_ in _maps(layer)]


def _grid_shape(cells: list[Cell]) -> tuple[int, int]:
    runs = list(dict.fromkeys(c.key[0] for c in cells))
    if len(runs) > 1:
        return len(runs), -(-len(cells) // len(runs))
    rows = len({c.key[1] for c in cells})
    return (rows, -(-len(cells) // rows)) if rows > 1 else (-1, -1)


class GridView:
    """Owns the view layers of the grid; everything else in the viewer is only hidden and shown."""

    def __init__(self, viewer):
        self.viewer = viewer
        self.views: dict[tuple, tuple] = {}  # cell key -> (image view, map view)
        self.hidden: dict[int, tuple] = {}  # id(layer) -> (layer, visible before the grid)
        self.source = None

    @property
    def active(self) -> bool:
        return bool(self.views)

    def _under_kwargs(self, cell: Cell) -> tuple[Any, dict]:
        src = self.source
        scale, translate = np.asarray(cell.source.scale)[cell.lead :], np.asarray(cell.source.translate)[cell.lead :]
        if (
            src is not None
            and src in self.viewer.layers
            and np.shape(src.data)[: np.ndim(cell.heat)] == np.shape(cell.heat)
        ):
            kw = {"contrast_limits": list(src.contrast_limits), "rgb": bool(getattr(src, "rgb", False))}
            return src.data, {**kw, "scale": scale, "translate": translate}
        return np.zeros(np.shape(cell.heat), np.float32), {"scale": scale, "translate": translate}

    def _heat_kwargs(self, cell: Cell) -> dict:
        ly = cell.source
        return {
            "name": cell.caption,
            "colormap": ly.colormap.name,
            "contrast_limits": list(ly.contrast_limits),
            "blending": "additive",
            "opacity": ly.opacity,
            "scale": np.asarray(ly.scale)[cell.lead :],
            "translate": np.asarray(ly.translate)[cell.lead :],
        }

    def _hide_others(self) -> None:
        ours = {id(v) for pair in self.views.values() for v in pair}
        for ly in self.viewer.layers:
            if id(ly) not in ours and id(ly) not in self.hidden:
                self.hidden[id(ly)] = (ly, ly.visible)
            if id(ly) not in ours:
                ly.visible = False

    def show(self, source=None) -> Iterator[None]:
        """Enter the grid, or bring it up to date after a run; one layer addition per step."""
        if source is not None or not self.active:
            self.source = source
        was_visible = {i: vis for i, (_, vis) in self.hidden.items()}
        cells = plan_cells(self.viewer, self.source, lambda ly: was_visible.get(id(ly), ly.visible))
        if not cells:
            return
        self._hide_others()
        stale = [pair for key, pair in self.views.items() if key not in {c.key for c in cells}]
        self.views = {k: v for k, v in self.views.items() if k in {c.key for c in cells}}
        remove_layers(self.viewer, [v for pair in stale for v in pair])
        for cell in cells:
            pair = self.views.get(cell.key)
            under_data, under_kw = self._under_kwargs(cell)
            heat_kw = self._heat_kwargs(cell)
            if pair is not None and all(v in self.viewer.layers for v in pair):
                under, heat = pair
                heat.data, heat.name, heat.contrast_limits = cell.heat, heat_kw["name"], heat_kw["contrast_limits"]
                if under.data is not under_data:
                    under.data = under_data
                continue
            under = self.viewer.add_image(
                under_data,
                name=f"grid image: {cell.caption}",
                colormap="gray",
                metadata={MARK: {"kind": "grid-view"}},
                **under_kw,
            )
            yield
            heat = self.viewer.add_image(cell.heat, metadata={MARK: {"kind": "grid-view"}}, **heat_kw)
            overlay = getattr(heat, "name_overlay", None)
            if overlay is not None:
                overlay.visible = True  # the caption in the cell (napari >= 0.6)
            self.views[cell.key] = (under, heat)
            yield
        self._arrange(cells)

    def _arrange(self, cells: list[Cell]) -> None:
        """Pairs on top of the list, first cell topmost: napari fills cells from the top with stride -2."""
        layers = self.viewer.layers
        for cell in reversed(cells):
            for v in self.views[cell.key]:
                layers.move(layers.index(v), len(layers))
        grid = grid_model(self.viewer)
        grid.stride = -2
        grid.shape = _grid_shape(cells)
        grid.enabled = True
        self.viewer.reset_view()

    def leave(self) -> None:
        views = [v for pair in self.views.values() for v in pair]
        self.views = {}
        remove_layers(self.viewer, views)
        for ly, vis in self.hidden.values():
            if ly in self.viewer.layers:
                ly.visible = vis
        self.hidden = {}
        grid = grid_model(self.viewer)
        grid.enabled = False
        grid.stride = 1
        grid.shape = (-1, -1)
        self.viewer.reset_view()
