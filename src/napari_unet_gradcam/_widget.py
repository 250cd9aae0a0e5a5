"""The dock widget: choose an image and a model, press Run, get labels and heatmaps; then re-run,
keep runs, compare them in a grid, explain a region or a point, and export.

The widget is the form and its wiring. The rest lives beside it: which layers it offers
(``_choices``), the job's life (``_job``), turning results into layers updated in place
(``_layers``), regions through layer transforms (``_regions``), the grid (``_grid``), large
images' levels, time estimates and results on disk (``_large``) and the model cache (``_models``).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    FloatSpinBox,
    Label,
    ProgressBar,
    PushButton,
    Select,
    SpinBox,
)
from napari.utils import progress as napari_progress
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import QEvent, QObject
from qtpy.QtWidgets import QSizePolicy

from ._checks import LastRun, annotate_layers, cost_text, refuse_if_unchecked, show_table
from ._checks import compute as compute_checks
from ._choices import _unwrap, image_layers, pick_source, region_layers
from ._grid import GridView
from ._job import Runner, RunState, step_through
from ._large import (
    Speed,
    Stores,
    default_level,
    file_stem,
    fits_in_ram,
    image_shape_of,
    level_label,
    results_bytes,
)
from ._layers import STACK_AXES, Snapshot, build_layers, iter_apply_layers, keep_run, mark, source_id
from ._models import describe, get_model
from ._regions import image_shape, level_grid, region_mask, visible_box
from .destination import class_names
from .errors import UnetGradcamError
from .families import family, layer_titles, propose_layers, spatial_dims
from .methods import METHODS
from .model import ALL_LAYERS, DECODER_LAYERS
from .pipeline import explain
from .source import is_lazy

if TYPE_CHECKING:
    import napari

TARGETS = {"predicted mask": "predicted", "whole image": "image", "region or point from layer": "region"}
OUTPUTS = {"one layer per map": False, "stacked (sliders)": True}
NORMALIZE = {"per map": "per-map", "shared across the run": "shared", "none (raw values)": "none"}
PREPROCESS = {
    "as the model was trained": "auto",
    "percentile": "percentile",
    "divide by 255": "divide255",
    "none": "none",
}
CHANNELS = {"as is": None, "grey (mean of R, G, B)": "grey", "red": 0, "green": 1, "blue": 2}
BUNDLED = "bundled nuclei model"
# The model sources: a checkpoint file, or a folder of another U-Net family (bundles.load_any).
SOURCES = {
    BUNDLED: None,
    "checkpoint file": "r",
    "MONAI bundle folder": "d",
    "nnU-Net model folder": "d",
    "smp model folder": "d",
}
# Decoder first, so the layers a reviewer picks show without scrolling.
LAYER_ORDER = list(DECODER_LAYERS) + [ly for ly in ALL_LAYERS if ly not in DECODER_LAYERS]

TIPS = {
    "image": "The image layer to explain. Follows the active image layer; your pick survives renames.",
    "model": "The bundled nuclei model, a Pytorch-UNet checkpoint (.pth), a MONAI bundle, an nnU-Net model folder "
    "or a segmentation_models_pytorch folder (save_pretrained).",
    "checkpoint": "A .pth file saved by Pytorch-UNet's train.py or by this plugin. Loaded safely (weights only).",
    "layers": "Decoder layers to explain: up1 is coarse (context), up4 fine (edges). One map per layer and class.",
    "classes": "Classes to explain. None selected: labels only, no maps.",
    "method": "How channel weights are computed. Grad-CAM averages gradients; HiResCAM multiplies them "
    "element-wise (faithful to the score); EigenCAM uses no gradient.",
    "target": "Which pixels' class scores are explained: the pixels predicted as that class, all pixels, "
    "or a region/point you drew on a Shapes, Labels or Points layer.",
    "region": "The Shapes, Labels or Points layer holding the region or point (matched in world coordinates).",
    "normalize": "Per map: each map spans 0-1 (shapes comparable, magnitudes not). Shared: one scale for "
    "the whole run (magnitudes comparable). None: raw values.",
    "output": "One heatmap layer per (layer, class), or one stacked layer with sliders for layer and class.",
    "instances": "Also add a Labels layer with each nucleus its own label, split along the boundary class.",
    "preprocess": "Intensity normalisation before the network. Use what the model was trained with.",
    "scale": "Resize the image by this factor before the network (upstream's --scale), e.g. 0.5 when "
    "objects are twice the size the model knows. Results come back at full size.",
    "channels": "For an RGB image and a one-channel model: which channel to use, or their mean.",
    "current_slice": "For stacks: explain only the slice on screen (much faster on long stacks). With a 3-D "
    "network: the volume on screen (one time point of a series).",
    "level": "For multiscale (pyramid) images: the level to explain, 0 = full resolution, with the size of its "
    "results and the time it would take (from the last run or a quick probe). Chosen by default as the finest "
    "level of at most 4096x4096 pixels whose results fit in RAM; results are placed over the whole pyramid.",
    "visible_only": "Explain only the part of the image on screen (at the chosen pyramid level): pan and zoom "
    "to it, then Run. Channel weights then come from that part alone.",
    "results_dir": "Where results too large for RAM are written, as OME-Zarr, and shown as multiscale layers "
    "read from disk. Empty: a temporary folder, removed when no layer shows it any more. A folder: every run "
    "is written there and kept.",
    "tile_size": "Tile edge in pixels for large images; 0 chooses from free memory. Maps use global weights.",
    "device": "Where the network runs: auto picks CUDA, then Apple MPS, then CPU.",
    "more": "Show preprocessing, scale, channels, output and performance options.",
    "run_btn": "Explain the image with the settings above. Updates the current results in place.",
    "cancel_btn": "Stop the run; nothing is added.",
    "keep_btn": "Set the current results aside (renamed '#1', '#2', ...) so the next run adds new layers to compare.",
    "grid_btn": "Show the maps side by side, each over the image; kept runs become rows. Press again to leave.",
    "export_btn": "Save the last run as the CLI does: labels and maps TIFF, contact sheet PNG, metadata JSON.",
    "check_btn": "How far to trust each map: deletion and insertion curves against a random pixel order, and "
    "the cascading-randomisation correlation (docs/faithfulness.md). Runs in the background; Cancel stops it.",
}


def _devices() -> list[str]:
    out = ["auto", "cpu"]
    if torch.cuda.is_available():
        out += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        out.append("mps")
    return out


class _DockWatch(QObject):
    """Tells the widget when napari takes it out of its dock (the dock's close button)."""

    def __init__(self, widget: GradCamWidget):
        super().__init__(widget.native)
        self.widget = widget
        self.docked = False

    def eventFilter(self, obj, event):  # noqa: N802 (Qt's name)
        if event.type() == QEvent.Type.ParentChange:
            if obj.parent() is not None:
                self.docked = True
            elif self.docked:
                self.widget.close_widget()
        return False


class GradCamWidget(Container):
    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__(labels=True)
        self.viewer = _unwrap(viewer)
        self._model = None
        self._model_error: str | None = None
        self._source = None
        self._last: LastRun | None = None  # what the last finished run explained
        self._checks_panel = None  # the docked table and curves of the last check
        self._added: list = []  # the layers the last run created (not updated)
        self._progress = None
        self._in_progress = False  # inside _on_progress (napari's bar re-enters it through the event loop)
        self.grid = GridView(self.viewer)
        self.runner = Runner()
        self.runner.progressed.connect(self._on_progress)
        self.runner.state_changed.connect(self._on_state)
        self.runner.ended.connect(self._on_ended)
        self._make_controls()
        self._connect()
        self._watch = _DockWatch(self)
        self.native.installEventFilter(self._watch)
        self.native.destroyed.connect(lambda *_: self.close_widget())
        self._refresh_choices()
        self._load_model()

    # -- the form --------------------------------------------------------------------------------
    def _make_controls(self) -> None:
        self.image = ComboBox(label="image", choices=self._image_choices, nullable=True)
        self.model = ComboBox(label="model", choices=list(SOURCES), value=BUNDLED)
        self.checkpoint = FileEdit(label="checkpoint", mode="r", filter="*.pth *.pt *.ckpt", visible=False)
        self.model_info = Label(label="loaded", value="")
        self.layers = Select(label="decoder layers", choices=self._layer_choices, value=list(DECODER_LAYERS))
        self.classes = Select(label="classes", choices=self._class_choices)
        self.method = ComboBox(label="method", choices=[(m.title, m.name) for m in METHODS.values()], value="gradcam")
        self.target = ComboBox(label="target", choices=list(TARGETS), value="predicted mask")
        self.region = ComboBox(label="region layer", choices=self._region_choices, nullable=True, visible=False)
        self.normalize = ComboBox(label="normalise", choices=list(NORMALIZE), value="per map")
        self.more = CheckBox(text="more options", value=False)
        self.preprocess = ComboBox(label="preprocess", choices=list(PREPROCESS), value="as the model was trained")
        self.scale = FloatSpinBox(label="scale", min=0.05, max=4.0, step=0.05, value=1.0)
        self.channels = ComboBox(label="RGB channels", choices=list(CHANNELS), value="as is")
        self.current_slice = CheckBox(text="current slice only", value=False)
        self.level = ComboBox(label="pyramid level", choices=self._level_choices, visible=False)
        self._level_for = None
        self.visible_only = CheckBox(text="visible region only", value=False)
        self.results_dir = FileEdit(label="results folder", mode="d", value="")
        self.speed = Speed()
        self.stores = Stores()
        self._net_lock = threading.Lock()
        self._probing = None
        self.output = ComboBox(label="output", choices=list(OUTPUTS), value="one layer per map")
        self.instances = CheckBox(text="also split nuclei into instances", value=False)
        self.tile_size = SpinBox(label="tile size (0 = auto)", min=0, max=16384, step=64, value=0)
        self.device = ComboBox(label="device", choices=_devices(), value="auto")
        self.run_btn = PushButton(text="Run")
        self.cancel_btn = PushButton(text="Cancel", enabled=False)
        self.keep_btn = PushButton(text="Keep run", enabled=False)
        self.grid_btn = PushButton(text="Grid view of heatmaps")
        self.export_btn = PushButton(text="Export run ...", enabled=False)
        self.check_btn = PushButton(text="Check maps", enabled=False)
        self.bar = ProgressBar(label="progress", value=0, max=1)
        self.status = Label(label="status", value="Ready.")
        self._advanced = [
            self.preprocess,
            self.scale,
            self.channels,
            self.current_slice,
            self.output,
            self.instances,
            self.tile_size,
            self.results_dir,
            self.device,
        ]
        for name, tip in TIPS.items():
            getattr(self, name).tooltip = tip
        self.native.setMaximumWidth(460)
        for label in (self.model_info, self.status):
            label.native.setWordWrap(True)
            label.native.setMinimumWidth(240)
            label.native.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.MinimumExpanding)
        self.layers.native.setMaximumHeight(5 * 19 + 8)  # up1-up4 and outc without scrolling
        self.classes.native.setMaximumHeight(64)
        buttons = Container(layout="horizontal", widgets=[self.run_btn, self.cancel_btn], labels=False)
        compare = Container(layout="horizontal", widgets=[self.keep_btn, self.grid_btn], labels=False)
        for box in (buttons, compare):
            box.margins = (0, 0, 0, 0)
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
                self.level,
                self.visible_only,
                self.normalize,
                self.more,
                *self._advanced,
                buttons,
                compare,
                Container(layout="horizontal", widgets=[self.check_btn, self.export_btn], labels=False),
                self.bar,
                self.status,
            ]
        )
        self._show_advanced(False)

    def _connect(self) -> None:
        self.model.changed.connect(self._on_model_choice)
        self.checkpoint.changed.connect(lambda _: self._load_model())
        self.device.changed.connect(lambda _: self._load_model())
        self.target.changed.connect(lambda v: setattr(self.region, "visible", TARGETS[v] == "region"))
        self.image.changed.connect(self._on_image_picked)
        self.more.changed.connect(self._show_advanced)
        self.run_btn.changed.connect(self.run)
        self.cancel_btn.changed.connect(self.cancel)
        self.keep_btn.changed.connect(self.keep)
        self.grid_btn.changed.connect(self.toggle_grid)
        self.export_btn.changed.connect(self._ask_export)
        self.check_btn.changed.connect(self.check_maps)
        events = self.viewer.layers.events
        self._viewer_connections = [
            (events.inserted, self._on_inserted),
            (events.removed, self._refresh_choices),
            (events.moved, self._refresh_choices),
            (events.reordered, self._refresh_choices),
            (self.viewer.layers.selection.events.active, self._follow_active),
            (self.viewer.cursor.events.position, self._on_cursor),
            (self.viewer.dims.events.current_step, self._on_step),
        ]
        for event, slot in self._viewer_connections:
            event.connect(slot)
        for layer in self.viewer.layers:
            layer.events.name.connect(self._refresh_choices)

    def _show_advanced(self, show: bool) -> None:
        for w in self._advanced:
            w.visible = bool(show)
        self._update_channel_choice()

    # -- layer choices ---------------------------------------------------------------------------
    def _image_choices(self, _=None):
        return [(ly.name, ly) for ly in image_layers(self.viewer)]

    def _level_choices(self, _=None):
        """Each pyramid level with its shape and the memory its results would take."""
        src = self._source
        if not getattr(src, "multiscale", False):
            return [("0", 0)]
        # Labels, probabilities and the four decoder layers' maps for every class, in float32.
        # Each choice's value is its index, so the user's pick survives new time estimates.
        n_classes = len(getattr(self._model, "class_names", None) or [1, 2])
        out = []
        for i in range(len(src.data)):
            shape = image_shape(src, i)
            gib = results_bytes(shape, n_classes, len(DECODER_LAYERS) * n_classes) / 2**30
            seconds = None if self._model is None else self.speed.estimate(self._model, int(np.prod(shape)))
            out.append((level_label(i, shape, gib, seconds), i))
        return out

    def _class_choices(self, _=None):
        names = list(getattr(self._model, "class_names", None) or [])
        return [(f"{i}: {n}", i) for i, n in enumerate(names)]

    def _region_choices(self, _=None):
        return [(ly.name, ly) for ly in region_layers(self.viewer)]

    def _on_inserted(self, event) -> None:
        event.value.events.name.connect(self._refresh_choices)
        self._refresh_choices()

    def _refresh_choices(self, _=None) -> None:
        if self.runner.state is RunState.CLOSED:
            return
        self._source = pick_source(self.viewer, self._source)
        for combo in (self.image, self.region):
            combo.reset_choices()
            # Qt keeps an item's old text when only the layer's name changed.
            for i in range(combo.native.count()):
                layer = combo.native.itemData(i)
                if layer is not None and hasattr(layer, "name"):
                    combo.native.setItemText(i, layer.name)
        if self.image.value is not self._source:
            self.image.value = self._source
        self._update_channel_choice()

    def _follow_active(self, _=None) -> None:
        active = _unwrap(self.viewer.layers.selection.active)
        if any(active is ly for ly in image_layers(self.viewer)):
            self._source = active
        self._refresh_choices()

    def _on_image_picked(self, value) -> None:
        if value is not None:
            self._source = value
        self._update_channel_choice()

    def _update_channel_choice(self) -> None:
        src = self._source
        rgb = bool(getattr(src, "rgb", False))
        self.channels.visible = rgb and bool(self.more.value)
        self.current_slice.enabled = src is not None and len(image_shape(src)) > 2
        pyramid = bool(getattr(src, "multiscale", False))
        if pyramid and self._level_for is not src:
            self._level_for = src
            self.level.reset_choices()
            n_classes = len(getattr(self._model, "class_names", None) or [1, 2])
            self.level.value = default_level(src, n_classes, len(DECODER_LAYERS) * n_classes)
            self._probe_speed()
        self.level.visible = pyramid

    # -- model -----------------------------------------------------------------------------------
    def _on_model_choice(self, value) -> None:
        self.checkpoint.visible = value != BUNDLED
        if SOURCES[value]:
            self.checkpoint.mode = SOURCES[value]
        self._load_model()

    def _layer_choices(self, _=None):
        """Pytorch-UNet's modules by name; another family's decoder stages, coarse to fine, titled."""
        if self._model is None or family(self._model) == "pytorch-unet":
            return LAYER_ORDER
        return [(title, name) for name, title in layer_titles(self._model).items()]

    def _checkpoint_path(self) -> str | None:
        if self.model.value == BUNDLED:
            return None
        path = str(self.checkpoint.value or "")
        return path if path not in ("", ".") else ""

    def _load_model(self) -> None:
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
            self.model_info.value = "Could not load the model (see status)."
            if str(exc) != self._model_error:  # each error once, not on every Run
                self._set_status(str(exc), error=True)
            self._model_error = str(exc)
            return
        if self._model_error is not None and self.status.value == self._model_error:
            self._set_status("Model loaded.")
        self._model_error = None
        if self._model is previous:
            return  # same file, same device: keep the user's class choice
        self.model_info.value = describe(self._model)
        self.model_info.tooltip = self.model_info.value
        self.classes.reset_choices()
        self.classes.value = [c[1] for c in self._class_choices()]
        self.layers.reset_choices()
        if family(self._model) != "pytorch-unet":
            self.layers.value = propose_layers(self._model)
        self._level_for = None  # the levels' memory estimates depend on the model's classes
        self._update_channel_choice()

    # -- running ---------------------------------------------------------------------------------
    def _params(self) -> dict:
        return {
            "layers": tuple(ly for ly in self.layers.choices if ly in self.layers.value),
            "classes": tuple(self.classes.value),
            "method": self.method.value,
            "normalize": NORMALIZE[self.normalize.value],
            "tile_size": int(self.tile_size.value) or None,
            "stacked": OUTPUTS[self.output.value],
            "instances": bool(self.instances.value),
            "preprocess": PREPROCESS[self.preprocess.value],
            "scale": float(self.scale.value),
            "channels": CHANNELS[self.channels.value] if getattr(self._source, "rgb", False) else None,
        }

    def _level(self, layer) -> int:
        return int(self.level.value) if getattr(layer, "multiscale", False) else 0

    def _slice_index(self, layer) -> tuple:
        """Leading (stack) indices of the slice on screen, for 'current slice only'.

        A 3-D network explains volumes: its 'slice' is the whole volume on screen (docs/models.md).
        """
        level = self._level(layer)
        shape = image_shape(layer, level)
        n_stack = len(shape) - (spatial_dims(self._model) if self._model is not None else 2)
        if not (self.current_slice.value and n_stack > 0):
            return ()
        pos = np.asarray(level_grid(layer, level).world_to_data(self.viewer.dims.point), float)[:n_stack]
        shape = shape[:n_stack]
        return tuple(int(np.clip(np.rint(p), 0, s - 1)) for p, s in zip(pos, shape, strict=True))

    def _store_for(self, snap: Snapshot, params: dict) -> Path | None:
        """An OME-Zarr path when the results go to disk: a folder was chosen, or they would not fit in RAM."""
        net = self._model
        if spatial_dims(net) == 3:
            return None  # whole volumes run in RAM (volume.py checks the size)
        folder = str(self.results_dir.value or "")
        folder = None if folder in ("", ".") else folder
        shape = image_shape_of(snap)
        n_classes = len(class_names(net))
        need = results_bytes(shape, n_classes, len(params["layers"]) * len(params["classes"]), params["scale"])
        if folder is None and fits_in_ram(need):
            return None
        why = "Results written to a folder"
        if folder is None:
            why = f"The results (~{need / 2**30:.1f} GiB) do not fit in RAM; on disk they"
        if params["scale"] != 1:
            raise UnetGradcamError(
                f"{why} keep the image's size: set scale to 1, or choose a coarser pyramid level or 'visible "
                "region only'."
            )
        if params["instances"]:
            raise UnetGradcamError(
                f"{why} cannot be split into instances: untick 'also split nuclei into instances', or choose a "
                "coarser pyramid level or 'visible region only'."
            )
        return self.stores.new(snap.name, folder)

    def _refresh_levels(self) -> None:
        """New time estimates in the level list, the user's pick kept."""
        if self.runner.state is not RunState.CLOSED and getattr(self._source, "multiscale", False):
            pick = self.level.value
            self.level.reset_choices()
            self.level.value = pick

    def _probe_speed(self) -> None:
        """Time a small run in a worker, once per model and device, so each level shows a time."""
        net = self._model
        if net is None or spatial_dims(net) == 3 or self.speed.known(net) or self._probing is net:
            return
        from napari.qt.threading import thread_worker

        self._probing = net

        def probe():
            with self._net_lock:
                return self.speed.probe(net)

        def done(result):
            self._probing = None
            self.speed.fit(net, result)
            self._refresh_levels()

        def failed(exc):
            self._probing = None
            self.level.tooltip = f"{TIPS['level']} (No time estimate: a test run failed: {exc})"

        worker = thread_worker(probe, start_thread=False, ignore_errors=True)()
        worker.returned.connect(done)
        worker.errored.connect(failed)
        worker.start()

    def run(self, _=None) -> None:
        if self.runner.busy or self.runner.state is RunState.CLOSED:
            return  # one job at a time; the button is disabled anyway
        layer = self._source
        try:
            if layer is None:
                raise UnetGradcamError("No image layer: open an image (or File > Open Sample > UNet Grad-CAM) first.")
            self._load_model()  # cached; reads the file again only if it changed on disk
            if self._model is None:
                raise UnetGradcamError(self._model_error or "Choose a checkpoint file first.")
            params = self._params()
            index = self._slice_index(layer)
            target = TARGETS[self.target.value]
            box = visible_box(layer, self._level(layer)) if self.visible_only.value else None
            if target == "region":
                target = region_mask(self.region.value, layer, index, self._level(layer), box)
            snap = Snapshot.of(layer, params, index, self._level(layer), box)
            out = self._store_for(snap, params)
        except UnetGradcamError as exc:
            self._set_status(str(exc), error=str(exc) != self._model_error)  # a model error was already shown
            return
        net = self._model

        def compute(progress, cancel):
            # A lazy layer (dask, zarr, a pyramid level) is read tile by tile by the run, never whole here.
            data, rgb = (snap.data if is_lazy(snap.data) else np.asarray(snap.data)), snap.rgb
            if params["channels"] is not None and rgb:
                data = data[..., :3].mean(-1) if params["channels"] == "grey" else data[..., params["channels"]]
                rgb = False
            with self._net_lock:  # the speed probe uses the same modules' hooks
                res = explain(
                    data,
                    net,
                    layers=params["layers"],
                    classes=params["classes"],  # none selected: labels only, like no layers
                    method=params["method"],
                    target=target,
                    preprocess=params["preprocess"],
                    normalize=params["normalize"],
                    tile_size=params["tile_size"],
                    rgb=rgb,
                    scale=params["scale"],
                    progress=progress,
                    cancel=cancel,
                    out=out,
                )
            if params["instances"]:
                res.instances()  # computed here, off the main thread
            inputs.update(image=data, rgb=rgb, net=net)
            return res

        inputs: dict = {}

        self.bar.value = 0
        what = f"slice {index} of '{snap.name}'" if index else f"'{snap.name}'"
        what += " (visible region)" if box is not None else ""
        what += f", writing to {out}" if out is not None else ""
        self._set_status(f"Running {METHODS[params['method']].title} on {what} ...")
        self.runner.start(
            compute, lambda res: self._build(snap, res, inputs, target), lambda res, s: self._finish(snap, res, s)
        )

    def _build(self, snap: Snapshot, res, inputs: dict, target):
        tuples = build_layers(snap, res, snap.params["stacked"])
        before = {id(ly) for ly in self.viewer.layers}
        made = yield from _collect(iter_apply_layers(self.viewer, snap, tuples))
        self._added = [ly for ly in made if id(ly) not in before]
        self._last = LastRun(snap, res, made, inputs["image"], inputs["rgb"], target, inputs["net"])
        self.stores.prune(self.viewer)  # a temporary store this run's layers replaced
        if self.grid.active:
            yield from self.grid.show()

    def _finish(self, snap: Snapshot, res, seconds: float) -> str:
        if self._last is not None:  # the whole run as the user waited for it, pyramids written included
            self.speed.record(self._last.net, int(np.prod(res.labels.shape)), seconds)
            self._refresh_levels()
        made = self._last.layers if self._last else []
        first = next((ly for ly in made if ly.visible and mark(ly).get("kind") in ("heatmap", "stack")), None)
        if first is not None and not self.grid.active:
            self.viewer.layers.selection.active = first
        stack = next((ly for ly in self._added if mark(ly).get("kind") == "stack"), None)
        if stack is not None:  # a new stack opens on its first map; a re-run keeps the user's sliders
            self._open_stack_at_first_map(stack)
        for note in res.metadata.get("notes", []):
            show_warning(note)
        present = any(source_id(ly) == snap.source_id for ly in self.viewer.layers)
        gone = "" if present else " (source layer was removed)"
        dev = next(self._model.parameters()).device if self._model is not None else "?"
        ood = "".join(f" Warning: {w}" for w in res.metadata.get("ood_warnings", []))
        out = res.metadata.get("out")
        disk = f" Results are on disk in {out}, read as you pan." if out else ""
        msg = f"'{snap.name}'{gone}: {len(res.cams)} map(s), {len(made)} layer(s) in {seconds:.1f} s on {dev}."
        return msg + disk + ood

    def cancel(self, _=None) -> None:
        if self.runner.busy:
            self.runner.cancel()
            self._set_status("Cancelling ...")

    def _on_progress(self, done: int, total: int) -> None:
        if self.runner.state is RunState.CLOSED:
            return
        self.bar.max = max(total, 1)
        self.bar.value = min(done, total)
        if self._in_progress:
            return  # napari's progress bar runs the event loop as it updates, which delivers queued reports here
        self._in_progress = True
        try:
            if self._progress is None:
                self._progress = napari_progress(total=total, desc="UNet Grad-CAM")
            self._progress.n = done
            self._progress.refresh()
        finally:
            self._in_progress = False

    def _on_state(self, state: RunState) -> None:
        busy = state in (RunState.RUNNING, RunState.BUILDING)
        self.run_btn.enabled = not busy
        self.cancel_btn.enabled = state is RunState.RUNNING
        self.keep_btn.enabled = not busy and self._last is not None
        self.export_btn.enabled = not busy and self._last is not None
        self.check_btn.enabled = not busy and self._last is not None
        if state is not RunState.RUNNING and self._progress is not None:
            self._progress.close()
            self._progress = None

    def _on_ended(self, message: str, error: bool) -> None:
        self._set_status(message, error=error)
        if message.startswith("Cancelled"):
            show_info("UNet Grad-CAM: run cancelled.")

    def _set_status(self, text: str, error: bool = False) -> None:
        if self.runner.state is RunState.CLOSED:
            return
        self.status.value = text
        self.status.tooltip = text
        if error:
            show_error(f"UNet Grad-CAM: {text}")

    # -- after a run -----------------------------------------------------------------------------
    def _open_stack_at_first_map(self, stack) -> None:
        """Sliders on the deepest decoder layer and the first foreground class, not up1/background."""
        m = mark(stack)
        offset = self.viewer.dims.ndim - stack.ndim
        step = list(self.viewer.dims.current_step)
        step[offset : offset + 2] = m.get("first", [0, 0])
        self.viewer.dims.current_step = tuple(step)
        self._on_step()

    def _on_step(self, _=None) -> None:
        """Name the stacked output's current decoder layer and class on the canvas."""
        overlays = getattr(getattr(self.viewer, "canvas", None), "overlays", None)
        overlay = getattr(overlays, "text", None) or self.viewer.text_overlay  # napari < 0.9: text_overlay
        stacks = [ly for ly in self.viewer.layers if mark(ly).get("kind") == "stack" and ly.visible]
        if not stacks:
            if overlay.text.startswith(STACK_AXES[0]):
                overlay.visible, overlay.text = False, ""
            return
        m, ly = mark(stacks[-1]), stacks[-1]
        offset = self.viewer.dims.ndim - ly.ndim
        i, j = self.viewer.dims.current_step[offset : offset + 2]
        if i < len(m["layers"]) and j < len(m["classes"]):
            overlay.text = f"{STACK_AXES[0]} {m['layers'][i]}  |  {STACK_AXES[1]} {m['classes'][j]}"
            overlay.visible = True

    def _on_cursor(self, _=None) -> None:
        """Class probabilities under the cursor, in the status bar's help field."""
        if self._last is None or self.runner.state is RunState.CLOSED:
            return
        snap, res = self._last.snap, self._last.result
        world = np.asarray(self.viewer.cursor.position, float)
        ndim = len(snap.scale)
        if world.size < ndim:
            return
        idx = np.rint((world[-ndim:] - np.asarray(snap.translate)) / np.asarray(snap.scale)).astype(int)
        shape = res.labels.shape
        if np.any(idx < 0) or np.any(idx >= shape) or res.probabilities is None:  # on disk: not kept
            return
        probs = res.probabilities[(slice(None), *idx)]
        names = res.class_names
        self.viewer.help = "UNet: " + "  ".join(f"{n} {p:.2f}" for n, p in zip(names, probs, strict=False))

    def keep(self, _=None) -> None:
        """Set the current results aside so the next run adds new layers beside them."""
        kept = keep_run(self.viewer)
        if kept:
            k = mark(kept[0])["kept"]
            self._set_status(f"Kept {len(kept)} layer(s) as run #{k}; change a setting and Run to compare.")
        else:
            self._set_status("Nothing to keep: press Run first.")

    def toggle_grid(self, _=None) -> None:
        if self.grid.active:
            self.grid.leave()
            return
        steps = self.grid.show(self._source)
        if not self._has_maps():
            self._set_status("No heatmaps to compare yet: press Run first.")
            return
        self.grid_btn.enabled = False

        def done():
            self.grid_btn.enabled = True

        def failed(exc):
            self.grid_btn.enabled = True
            self._set_status(f"Could not build the grid: {exc}", error=True)

        step_through(steps, done, failed, lambda: self.runner.state is not RunState.CLOSED)

    def _has_maps(self) -> bool:
        return any(mark(ly).get("kind") in ("heatmap", "stack") for ly in self.viewer.layers)

    def check_maps(self, _=None) -> None:
        """Faithfulness and sanity checks of the last run's maps, in the worker, with progress and cancel."""
        if self.runner.busy or self.runner.state is RunState.CLOSED:
            return
        try:
            run = refuse_if_unchecked(self._last)
        except UnetGradcamError as exc:
            self._set_status(str(exc), error=True)
            return
        self.bar.value = 0
        self._set_status(cost_text(run))
        annotated: list[int] = []

        def build(checks):
            annotated.append(annotate_layers(self.viewer, run, checks))
            yield
            self._checks_panel = show_table(self.viewer, checks, self._checks_panel)

        def finish(checks, seconds: float) -> str:
            where = f"in the table and in {annotated[0]} layer(s)' metadata"
            return f"Checked {len(checks.checks)} map(s) in {seconds:.0f} s: the numbers are {where}."

        def compute(progress, cancel):
            with self._net_lock:
                return compute_checks(run, progress, cancel)

        self.runner.start(compute, build, finish)

    def _ask_export(self, _=None) -> None:
        from qtpy.QtWidgets import QFileDialog

        folder = QFileDialog.getExistingDirectory(self.native, "Export the last run to a folder")
        if folder:
            self.export(folder)

    def export(self, folder: str | Path, wait: bool = False) -> list[Path]:
        """Write the last run as the CLI does: labels and maps TIFF, contact sheet PNG, metadata JSON.

        Writes in a worker thread (large stacks take a while); ``wait=True`` writes here and
        returns the paths (scripts and tests).
        """
        from napari.qt.threading import thread_worker

        from .io import write_result

        if self._last is None:
            self._set_status("Nothing to export: press Run first.", error=True)
            return []
        snap, res = self._last.snap, self._last.result
        if res.metadata.get("out"):
            self._set_status(
                f"This run's results are already saved, as OME-Zarr in {res.metadata['out']} (napari and Fiji "
                "open it; copy the folder to keep it). Export writes TIFFs of results held in memory.",
                error=True,
            )
            return []
        stem = file_stem(snap.name)
        n_stack = res.labels.ndim - 2
        axes = "QTZ"[-n_stack:] if n_stack else ""

        def write():
            return write_result(res, np.asarray(snap.data), Path(folder), stem, stack_axes=axes, rgb=snap.rgb)

        def failed(exc):
            self._set_status(f"Could not export to {folder}: {exc}", error=True)

        def written(paths):
            self._set_status(f"Exported {len(paths)} file(s) to {folder}.")

        if wait:
            try:
                paths = write()
            except (OSError, UnetGradcamError) as exc:
                failed(exc)
                return []
            written(paths)
            return paths
        self._set_status(f"Exporting to {folder} ...")
        worker = thread_worker(write, start_thread=False, ignore_errors=True)()
        worker.returned.connect(written)
        worker.errored.connect(failed)
        worker.start()
        return []

    # -- closing ---------------------------------------------------------------------------------
    def close_widget(self) -> None:
        """The dock was closed (or destroyed): cancel the job, leave the grid, let go of the viewer."""
        if self.runner.state is RunState.CLOSED:
            return
        self.runner.close()
        if self._progress is not None:
            self._progress.close()
            self._progress = None
        try:
            if self.grid.active:
                self.grid.leave()
            for event, slot in self._viewer_connections:
                event.disconnect(slot)
            for layer in self.viewer.layers:
                layer.events.name.disconnect(self._refresh_choices)
        except RuntimeError:  # the viewer's Qt side is already gone
            pass


def _collect(steps):
    """Run a layer-building generator, forwarding its pauses; return the layers it made."""
    made = []
    for layer in steps:
        if layer is not None:
            made.append(layer)
        yield
    return made
