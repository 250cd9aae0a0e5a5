"""The dock widget: choose an image and a model, press Run, get labels and heatmaps.

The widget snapshots its inputs on Run, runs the core in a napari ``thread_worker`` and builds
layers on the main thread when the worker returns, so the UI never waits on the network.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

import numpy as np
import torch
from magicgui.widgets import CheckBox, ComboBox, Container, FileEdit, Label, ProgressBar, PushButton, Select, SpinBox
from napari.qt.threading import thread_worker
from napari.utils import progress as napari_progress
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import QObject, QTimer, Signal
from qtpy.QtWidgets import QSizePolicy

from ._layers import MARK, Snapshot, build_layers, iter_apply_layers
from ._models import describe, get_model
from .errors import Cancelled, UnetGradcamError
from .methods import METHODS
from .model import ALL_LAYERS, DECODER_LAYERS
from .pipeline import explain

if TYPE_CHECKING:
    import napari

log = logging.getLogger(__name__)

TARGETS = {"predicted mask": "predicted", "whole image": "image", "region from layer": "region"}
OUTPUTS = {"one layer per map": False, "stacked (sliders)": True}
NORMALIZE = {"per map": "per-map", "shared across the run": "shared"}
BUNDLED = "bundled nuclei model"


# A zero-delay chain of layer additions ran back to back (two or three ~50 ms additions per
# event-loop pass, bench/bench_ui.py); a short delay lets paints and input in between.
LAYER_GAP_MS = 10


class _Relay(QObject):
    """Carries progress from the worker thread to the main thread (queued across threads)."""

    progressed = Signal(int, int)


def _unwrap(obj):
    """napari hands plugins proxies of its objects; identity checks need the objects themselves."""
    return getattr(obj, "__wrapped__", obj)


def _devices() -> list[str]:
    out = ["auto", "cpu"]
    if torch.cuda.is_available():
        out += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        out.append("mps")
    return out


class GradCamWidget(Container):
    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__(labels=True)
        self.viewer = _unwrap(viewer)
        self._model = None
        self._model_error: str | None = None
        self._worker = None
        self._building = False
        self._cancel = threading.Event()
        self._closed = False
        self._progress = None
        self._relay = _Relay()
        self._relay.progressed.connect(self._on_progress)

        self.image = ComboBox(label="image", choices=self._image_choices, nullable=True)
        self.model = ComboBox(label="model", choices=[BUNDLED, "checkpoint file"], value=BUNDLED)
        self.checkpoint = FileEdit(label="checkpoint", mode="r", filter="*.pth *.pt *.ckpt", visible=False)
        self.model_info = Label(label="loaded", value="")
        self.layers = Select(label="decoder layers", choices=list(ALL_LAYERS), value=list(DECODER_LAYERS))
        self.classes = Select(label="classes", choices=self._class_choices)
        self.method = ComboBox(label="method", choices=[(m.title, m.name) for m in METHODS.values()], value="gradcam")
        self.target = ComboBox(label="target", choices=list(TARGETS), value="predicted mask")
        self.region = ComboBox(label="region layer", choices=self._region_choices, nullable=True, visible=False)
        self.normalize = ComboBox(label="normalise", choices=list(NORMALIZE), value="per map")
        self.output = ComboBox(label="output", choices=list(OUTPUTS), value="one layer per map")
        self.instances = CheckBox(text="also split nuclei into instances", value=False)
        self.tile_size = SpinBox(label="tile size (0 = auto)", min=0, max=16384, step=64, value=0)
        self.device = ComboBox(label="device", choices=_devices(), value="auto")
        self.run_btn = PushButton(text="Run")
        self.cancel_btn = PushButton(text="Cancel", enabled=False)
        self.grid_btn = PushButton(text="Grid view of heatmaps")
        self.bar = ProgressBar(label="progress", value=0, max=1, visible=True)
        self.status = Label(label="status", value="Ready.")
        self.native.setMaximumWidth(460)
        self.model_info.native.setWordWrap(True)
        self.status.native.setWordWrap(True)
        for label in (self.model_info, self.status):
            label.native.setMinimumWidth(260)
            label.native.setMinimumHeight(36)
            label.native.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.MinimumExpanding)
        self.layers.native.setMaximumHeight(110)
        self.classes.native.setMaximumHeight(80)
        self.extend(
            [
                self.image,
                self.model,
                self.checkpoint,
                self.model_info,
                self.layers,
                self.classes,
                self.method,
                self.target,
                self.region,
                self.normalize,
                self.output,
                self.instances,
                self.tile_size,
                self.device,
                self.run_btn,
                self.cancel_btn,
                self.grid_btn,
                self.bar,
                self.status,
            ]
        )
        self.model.changed.connect(self._on_model_choice)
        self.checkpoint.changed.connect(lambda _: self._load_model())
        self.device.changed.connect(lambda _: self._load_model())
        self.target.changed.connect(lambda v: setattr(self.region, "visible", v == "region from layer"))
        self.run_btn.changed.connect(self.run)
        self.cancel_btn.changed.connect(self.cancel)
        self.grid_btn.changed.connect(self.toggle_grid)
        events = self.viewer.layers.events
        for ev in (events.inserted, events.removed, events.moved, events.reordered):
            ev.connect(self._reset_layer_choices)
        events.inserted.connect(lambda e: e.value.events.name.connect(self._reset_layer_choices))
        for layer in self.viewer.layers:
            layer.events.name.connect(self._reset_layer_choices)
        self.viewer.layers.selection.events.active.connect(self._follow_active)
        self.native.destroyed.connect(self._on_destroyed)
        self._follow_active()
        self._load_model()

    # -- choices ---------------------------------------------------------------------------------
    def _image_choices(self, _=None):
        from napari.layers import Image

        return [
            (layer.name, layer) for layer in self.viewer.layers if isinstance(layer, Image) and not self._mark(layer)
        ]

    def _class_choices(self, _=None):
        names = list(getattr(self._model, "class_names", None) or [])
        return [(f"{i}: {n}", i) for i, n in enumerate(names)]

    def _region_choices(self, _=None):
        from napari.layers import Labels, Shapes

        return [(layer.name, layer) for layer in self.viewer.layers if isinstance(layer, (Labels, Shapes))]

    def _reset_layer_choices(self, _=None):
        if self._closed:
            return
        current = self.image.value
        for combo in (self.image, self.region):
            combo.reset_choices()
            # Qt keeps an item's old text when only the layer's name changed.
            for i in range(combo.native.count()):
                layer = combo.native.itemData(i)
                if layer is not None and hasattr(layer, "name"):
                    combo.native.setItemText(i, layer.name)
        valid = [c[1] for c in self._image_choices()]
        active = self.viewer.layers.selection.active
        if any(current is v for v in valid):
            self.image.value = current
        elif any(active is v for v in valid):
            self.image.value = active

    def _follow_active(self, _=None):
        active = self.viewer.layers.selection.active
        self._reset_layer_choices()
        if active is not None and any(active is c[1] for c in self._image_choices()):
            self.image.value = active

    # -- model -----------------------------------------------------------------------------------
    def _on_model_choice(self, value):
        self.checkpoint.visible = value != BUNDLED
        self._load_model()

    def _checkpoint_path(self) -> str | None:
        if self.model.value == BUNDLED:
            return None
        path = str(self.checkpoint.value or "")
        return path if path not in ("", ".") else ""

    def _load_model(self):
        path = self._checkpoint_path()
        if path == "":
            self.model_info.value = "Choose a checkpoint file (.pth)."
            self._model = None
            self.classes.reset_choices()
            return
        previous = self._model
        try:
            self._model = get_model(path, self.device.value)
        except UnetGradcamError as exc:
            self._model = None
            self.classes.reset_choices()
            self._model_error = str(exc)
            self.model_info.value = "Could not load the model (see status)."
            self._set_status(str(exc), error=True)
            return
        self._model_error = None
        if self._model is previous:
            return  # same file, same device: keep the user's class choice
        self.model_info.value = describe(self._model)
        self.model_info.tooltip = self.model_info.value
        self.classes.reset_choices()
        self.classes.value = [c[1] for c in self._class_choices()]

    # -- running ---------------------------------------------------------------------------------
    def _params(self) -> dict:
        tile = int(self.tile_size.value)
        return {
            "layers": tuple(self.layers.value),
            "classes": tuple(self.classes.value),
            "method": self.method.value,
            "normalize": NORMALIZE[self.normalize.value],
            "tile_size": tile or None,
            "stacked": OUTPUTS[self.output.value],
            "instances": bool(self.instances.value),
        }

    def _region_mask(self, image_layer):
        """The region layer as a boolean mask on the image's grid."""
        from napari.layers import Shapes

        layer = self.region.value
        if layer is None:
            raise UnetGradcamError("Target 'region from layer' needs a Labels or Shapes layer: draw one, then pick it.")
        shape = image_layer.data.shape[:-1] if image_layer.rgb else image_layer.data.shape
        if isinstance(layer, Shapes):
            if len(layer.data) == 0:
                raise UnetGradcamError(f"The Shapes layer '{layer.name}' is empty: draw a region first.")
            mask = layer.to_masks(mask_shape=shape[-2:]).any(0)
        else:
            mask = np.asarray(layer.data) > 0
        if mask.shape[-2:] != tuple(shape[-2:]):
            raise UnetGradcamError(
                f"The region layer '{layer.name}' has shape {mask.shape}, the image {tuple(shape)}: "
                "use a region drawn on this image."
            )
        if not mask.any():
            raise UnetGradcamError(f"The region layer '{layer.name}' marks no pixel: paint or draw a region first.")
        return mask.copy()

    def run(self, _=None):
        if self._worker is not None:
            return  # one job at a time; the button is disabled anyway
        layer = self.image.value
        try:
            if layer is None:
                raise UnetGradcamError("No image layer: open an image (or File > Open Sample > UNet Grad-CAM) first.")
            self._load_model()  # cached; reads the file again only if it changed on disk
            if self._model is None:
                raise UnetGradcamError(self._model_error or "Choose a checkpoint file first.")
            params = self._params()
            target = TARGETS[self.target.value]
            if target == "region":
                target = self._region_mask(layer)
            snap = Snapshot.of(layer, params)
        except UnetGradcamError as exc:
            self._set_status(str(exc), error=True)
            return
        net = self._model
        self._cancel = threading.Event()
        cancel = self._cancel
        relay = self._relay

        def job():
            # napari imports pandas on first use of layer features; do it here, not on the UI thread.
            import pandas  # noqa: F401

            data = np.asarray(snap.data)
            res = explain(
                data,
                net,
                layers=params["layers"],
                classes=params["classes"],  # none selected: labels only, like no layers
                method=params["method"],
                target=target,
                normalize=params["normalize"],
                tile_size=params["tile_size"],
                rgb=snap.rgb,
                progress=lambda done, total: relay.progressed.emit(done, total),
                cancel=cancel,
            )
            if params["instances"]:
                res.instances()  # computed here, off the main thread
            return res

        worker = thread_worker(job, start_thread=False, ignore_errors=True)()
        t0 = time.perf_counter()
        worker.returned.connect(lambda res: self._on_done(snap, res, t0))
        worker.errored.connect(self._on_error)
        worker.finished.connect(self._on_finished)
        self._worker = worker
        self.run_btn.enabled = False
        self.cancel_btn.enabled = True
        self.bar.value = 0
        self._set_status(f"Running {METHODS[params['method']].title} on '{snap.name}' ...")
        worker.start()

    def cancel(self, _=None):
        if self._worker is not None:
            self._cancel.set()
            self._set_status("Cancelling ...")

    def _on_progress(self, done: int, total: int):
        if self._closed:
            return
        self.bar.max = max(total, 1)
        self.bar.value = min(done, total)
        if self._progress is None:
            self._progress = napari_progress(total=total, desc="UNet Grad-CAM")
        self._progress.n = done
        self._progress.refresh()

    def _on_done(self, snap: Snapshot, res, t0: float):
        if self._closed:
            return
        self._building = True
        steps = iter_apply_layers(self.viewer, snap, build_layers(snap, res, stacked=snap.params["stacked"]))
        made: list = []

        def add_next():
            if self._closed:
                self._end_job()
                return
            try:
                layer = next(steps)
                if layer is not None:
                    made.append(layer)
            except StopIteration:
                self._finish_layers(snap, res, t0, made)
                return
            except Exception as exc:  # a layer the viewer refuses must not leave the widget stuck
                log.exception("Adding the result layers failed")
                self._set_status(f"Could not add the result layers: {exc}", error=True)
                self._end_job()
                return
            QTimer.singleShot(LAYER_GAP_MS, add_next)

        QTimer.singleShot(0, add_next)

    def _finish_layers(self, snap: Snapshot, res, t0: float, made: list):
        n_maps = len(res.cams)
        gone = "" if any(layer.name == snap.name for layer in self.viewer.layers) else " (source layer was removed)"
        dev = next(self._model.parameters()).device if self._model is not None else "?"
        self._set_status(
            f"'{snap.name}'{gone}: {n_maps} map(s), {len(made)} layer(s) in {time.perf_counter() - t0:.1f} s on {dev}."
        )
        first = next((ly for ly in made if ly.visible and self._mark(ly).get("kind") == "heatmap"), None)
        if first is not None:
            self.viewer.layers.selection.active = first
        for note in res.metadata.get("notes", []):
            show_warning(note)
        self._end_job()

    def _on_error(self, exc: Exception):
        if self._closed:
            return
        if isinstance(exc, Cancelled):
            self._set_status("Cancelled: no layers were added.")
            show_info("UNet Grad-CAM: run cancelled.")
        elif isinstance(exc, UnetGradcamError):
            self._set_status(str(exc), error=True)
        else:
            log.error("UNet Grad-CAM run failed", exc_info=exc)
            self._set_status(f"The run failed: {type(exc).__name__}: {exc}", error=True)

    def _on_finished(self):
        if self._progress is not None:
            self._progress.close()
            self._progress = None
        if not self._closed:
            self.cancel_btn.enabled = False  # nothing left to cancel while layers are being added
        if not self._building:
            self._end_job()

    def _end_job(self):
        """The job is over once its layers are in the viewer (or it failed): Run is free again."""
        self._worker = None
        self._building = False
        if not self._closed:
            self.run_btn.enabled = True
            self.cancel_btn.enabled = False

    def _set_status(self, text: str, error: bool = False):
        if self._closed:
            return
        self.status.value = text
        self.status.tooltip = text
        if error:
            show_error(f"UNet Grad-CAM: {text}")

    def _on_destroyed(self, *_):
        self._closed = True
        self._cancel.set()

    # -- comparing -------------------------------------------------------------------------------
    def toggle_grid(self, _=None):
        """Heatmaps side by side, each over its image (napari's grid, two layers per cell).

        The image under each map is an extra view layer sharing the source's array (no copy);
        leaving the grid removes those views and restores what was visible.
        """
        grid = _grid(self.viewer)
        if grid.enabled:
            self._leave_grid()
            return
        source = self.image.value
        heatmaps = [ly for ly in self.viewer.layers if self._mark(ly).get("kind") == "heatmap"]
        if source is not None:
            sid = str(getattr(source, "unique_id", id(source)))
            heatmaps = [ly for ly in heatmaps if self._mark(ly).get("source_id") == sid] or heatmaps
        shown = [ly for ly in heatmaps if ly.visible]
        if len(shown) < 2:  # nothing chosen yet: every foreground map
            shown = [ly for ly in heatmaps if self._mark(ly).get("class_index") != 0] or heatmaps
        if not shown:
            self._set_status("No heatmaps to compare yet: press Run first.")
            return
        self._grid_restore = {ly: ly.visible for ly in self.viewer.layers}
        self._grid_order = list(self.viewer.layers)
        for ly in self.viewer.layers:
            ly.visible = False
        layers = self.viewer.layers
        # The top pair lands in the top-left cell, so the first map is moved last.
        for h in reversed(shown):
            under = source if source is not None else None
            data = under.data if under is not None else np.zeros(h.data.shape, np.float32)
            view = self.viewer.add_image(
                data,
                name=f"grid view: {h.name}",
                colormap="gray",
                contrast_limits=list(under.contrast_limits) if under is not None else None,
                scale=h.scale,
                translate=h.translate,
                metadata={MARK: {"kind": "grid-view"}},
            )
            # napari groups layers into cells by list position: each pair goes on top, map above view.
            layers.move(layers.index(view), len(layers))
            layers.move(layers.index(h), len(layers))
            h.visible = True
        rows = len({self._mark(h).get("layer") for h in shown})
        grid.stride = -2
        grid.shape = (rows, -(-len(shown) // rows)) if rows > 1 else (-1, -1)
        grid.enabled = True
        self.viewer.reset_view()

    def _leave_grid(self):
        for ly in [ly for ly in self.viewer.layers if self._mark(ly).get("kind") == "grid-view"]:
            self.viewer.layers.remove(ly)
        layers = self.viewer.layers
        for i, ly in enumerate(ly for ly in getattr(self, "_grid_order", []) if ly in layers):
            layers.move(layers.index(ly), i)
        for ly, vis in getattr(self, "_grid_restore", {}).items():
            if ly in layers:
                ly.visible = vis
        self._grid_restore, self._grid_order = {}, []
        grid = _grid(self.viewer)
        grid.enabled = False
        grid.stride = 1
        grid.shape = (-1, -1)
        self.viewer.reset_view()

    @staticmethod
    def _mark(layer) -> dict:
        md = layer.metadata.get(MARK) if isinstance(layer.metadata, dict) else None
        return md or {}


def _grid(viewer):
    """The viewer's grid model: ``viewer.canvas.grid`` from napari 0.9, ``viewer.grid`` before."""
    canvas = getattr(viewer, "canvas", None)
    return canvas.grid if canvas is not None and hasattr(canvas, "grid") else viewer.grid
