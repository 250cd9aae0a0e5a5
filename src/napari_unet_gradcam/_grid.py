"""Heatmaps side by side, each over its image: a mosaic the reviewer pans and zooms as one.

Each cell shows the source image in grey with one map added over it in inferno, as the heatmap
layers look in the viewer, captioned with the map's run, decoder layer and class. Kept runs
(``_layers.keep_run``) become rows, so two methods or two checkpoints are compared map by map.

Why a mosaic and not napari's grid mode: napari re-lays every cell of every layer on each layer
addition, move or visibility change (about 2-3 s with 30 layers on a 2-core machine), so a grid
of view layers froze the UI for seconds. The mosaic is one RGB layer with the captions drawn in;
entering, re-running and leaving each change only that layer, and the user's own layers are only
hidden (in one batch), never moved, so leaving restores the layer list exactly.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._layers import MARK, layer_batch, mark, remove_layers, source_id


@dataclass
class Cell:
    key: tuple  # (run, decoder layer, class index): the same cell across re-runs
    caption: str
    heat: Any  # the map's array (a view into a stacked layer's data for stacked output)
    source: Any  # the heatmap or stack layer the map comes from
    lead: int  # 2 for a stacked layer (decoder layer, class axes), else 0
    step: int = 1  # pixels of the layer per pixel of ``heat`` (a pyramid's coarsest level), in y and x


def _coarsest(layer) -> tuple[Any, int]:
    """The layer's data, or for a pyramid (results on disk) its coarsest level and its downsampling."""
    if not getattr(layer, "multiscale", False):
        return layer.data, 1
    factor = np.asarray(layer.downsample_factors[-1], float)[-1]
    return layer.data[-1], int(round(factor))


def _run_label(m: dict) -> str:
    title = m.get("method_title") or m.get("method", "?")
    return f"{title} #{m['kept']}" if m.get("kept") else title


def _maps(layer) -> Iterator[tuple[str, int, str, Any]]:
    """(decoder layer, class index, class name, 2-D or N-D map) for every map a layer holds."""
    m = mark(layer)
    data = _coarsest(layer)[0] if m.get("kind") in ("heatmap", "stack") else None
    if m.get("kind") == "heatmap":
        yield m["layer"], m["class_index"], m["class_name"], data
    elif m.get("kind") == "stack":
        for i, ly in enumerate(m["layers"]):
            indices = m.get("class_indices", range(len(m["classes"])))
            for j, (c, name) in enumerate(zip(indices, m["classes"], strict=True)):
                yield ly, c, name, data[i, j]


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
            # Keyed by run number, not method: a re-run with another method reuses its cells.
            cells.append(Cell((run[0], name, c), caption, data, ly, lead, _coarsest(ly)[1]))
    return cells


def _maps_keys(layer) -> list[tuple[str, int]]:
    return [(name, c) for name, c, *_ in _maps(layer)]


def grid_shape(cells: list[Cell]) -> tuple[int, int]:
    """Rows x columns: a row per run when runs are compared, else a row per decoder layer."""
    runs = list(dict.fromkeys(c.key[0] for c in cells))  # kept number, or inf for the current run
    rows = len(runs) if len(runs) > 1 else len({c.key[1] for c in cells})
    return rows, -(-len(cells) // rows)


def _unit(data, limits) -> np.ndarray:
    lo, hi = (float(v) for v in limits)
    out = (np.asarray(data, np.float32) - lo) / max(hi - lo, 1e-12)
    return np.clip(out, 0, 1, out=out)


def composite(under, under_limits, heat, heat_layer) -> np.ndarray:
    """The image in grey plus the map in its colormap, added as napari's additive blending does."""
    gray = _unit(under.mean(-1) if under.ndim == heat.ndim + 1 else under, under_limits)
    colors = heat_layer.colormap.map(_unit(heat, heat_layer.contrast_limits).ravel())[:, :3]
    rgb = gray[..., None] + heat_layer.opacity * colors.reshape(*np.shape(heat), 3)
    return (np.clip(rgb, 0, 1) * 255).astype(np.uint8)


def _caption_strip(text: str, width: int, height: int) -> np.ndarray:
    from PIL import Image, ImageDraw, ImageFont

    strip = Image.new("RGB", (width, height), (24, 24, 24))
    font = ImageFont.load_default(size=max(8, int(height * 0.7)))
    ImageDraw.Draw(strip).text((height // 4, height // 8), text, fill=(235, 235, 235), font=font)
    return np.asarray(strip)


def cell_geometry(h: int, w: int) -> tuple[int, int]:
    """(caption strip height, gap between cells) in pixels, for cells of h x w."""
    bar = max(12, round(0.06 * max(h, w)))  # the caption, legible at the zoom that shows a whole cell
    return bar, max(2, round(0.02 * max(h, w)))


def mosaic(cells: list[Cell], under, under_limits) -> Iterator[np.ndarray]:
    """All cells tiled into one RGB array, each under a caption strip, with a gap between cells.

    Yields the (partly filled) array after each cell, so a caller on the UI thread can let the
    event loop run between cells; the last value is the whole mosaic.
    """
    rows, cols = grid_shape(cells)
    shape = np.shape(cells[0].heat)
    h, w = shape[-2:]
    bar, gap = cell_geometry(h, w)
    ch = bar + h
    out = np.zeros((*shape[:-2], rows * ch + (rows - 1) * gap, cols * w + (cols - 1) * gap, 3), np.uint8)
    below = np.asarray(under) if under is not None else np.zeros(shape, np.float32)
    for i, cell in enumerate(cells):
        y, x = (i // cols) * (ch + gap), (i % cols) * (w + gap)
        out[..., y : y + bar, x : x + w, :] = _caption_strip(cell.caption, w, bar)
        out[..., y + bar : y + ch, x : x + w, :] = composite(below, under_limits, cell.heat, cell.source)
        yield out


class GridView:
    """Owns the grid's one layer; everything else in the viewer is only hidden and shown again."""

    def __init__(self, viewer):
        self.viewer = viewer
        self.layer = None
        self.captions: list[str] = []
        self.hidden: dict[int, tuple] = {}  # id(layer) -> (layer, visible before the grid)
        self.source = None

    @property
    def active(self) -> bool:
        return self.layer is not None

    def _hide_others(self) -> None:
        """Hide every other layer, with one scene-graph update for all of them."""
        with layer_batch(self.viewer):
            for ly in self.viewer.layers:
                if ly is self.layer:
                    continue
                if id(ly) not in self.hidden:
                    self.hidden[id(ly)] = (ly, ly.visible)
                if ly.visible:
                    ly.visible = False

    def _under(self, cell: Cell):
        src = self.source
        n = np.ndim(cell.heat)
        if src is None or src not in self.viewer.layers:
            return None, (0.0, 1.0)
        levels = list(src.data) if getattr(src, "multiscale", False) else [src.data]
        for data in levels:  # the pyramid level the maps were made on
            if tuple(np.shape(data)[:n]) == np.shape(cell.heat):
                return data, src.contrast_limits
        return None, (0.0, 1.0)

    def show(self, source=None) -> Iterator[None]:
        """Enter the grid, or bring it up to date after a run (its layer updated in place)."""
        if source is not None or not self.active:
            self.source = source
        was_visible = {i: vis for i, (_, vis) in self.hidden.items()}
        cells = plan_cells(self.viewer, self.source, lambda ly: was_visible.get(id(ly), ly.visible))
        if not cells:
            return
        for data in mosaic(cells, *self._under(cells[0])):  # noqa: B007 (the last value is the whole mosaic)
            yield  # one cell per event-loop turn
        self.captions = [c.caption for c in cells]
        self._hide_others()
        yield
        if self.active and self.layer in self.viewer.layers and self.layer.data.shape == data.shape:
            self.layer.data = data
            return
        if self.active:
            self.leave(restore=False)
        placed, lead = cells[0].source, cells[0].lead
        scale, translate = np.asarray(placed.scale)[lead:], np.asarray(placed.translate)[lead:]
        # A pyramid's coarsest level sits where napari shows it: pixels `step` times larger, centred.
        step = np.ones_like(scale)
        step[-2:] = cells[0].step
        self.layer = self.viewer.add_image(
            data,
            name="grid view",
            rgb=True,
            scale=scale * step,
            translate=translate + (step - 1) / 2 * scale,
            metadata={MARK: {"kind": "grid-view", "captions": self.captions}},
        )
        self.viewer.reset_view()

    def leave(self, restore: bool = True) -> None:
        layer, self.layer = self.layer, None
        if layer is not None:
            remove_layers(self.viewer, [layer])
        if restore:
            with layer_batch(self.viewer):
                for ly, vis in self.hidden.values():
                    if ly in self.viewer.layers and ly.visible != vis:
                        ly.visible = vis
            self.hidden = {}
            self.viewer.reset_view()
