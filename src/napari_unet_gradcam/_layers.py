"""Turning an ExplainResult into napari layers placed exactly over their source.

:func:`build_layers` is a pure function of a :class:`Snapshot` and a result: it returns
``(data, kwargs, type)`` tuples, each kwargs carrying a *role* (``labels``, ``instances``,
``heatmap/up4/1``, ``stack``). :func:`iter_apply_layers` puts them into a viewer, updating the
current run's layer of the same role in place: napari runs a full garbage collection for every
removed layer, so a re-run that removed and re-added twelve layers froze the UI for seconds.
"""

from __future__ import annotations

import gc
import hashlib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .pipeline import ExplainResult
from .source import is_lazy

MARK = "unet_gradcam"
LABEL_COLORS = ["transparent", "#00e5ff", "#ff3df5", "#ffd400", "#7cff4f", "#ff7a1a", "#9b7bff", "#ff4d4d"]
STACK_AXES = ("decoder layer", "class")


@dataclass
class Snapshot:
    """What the run needs from the source layer, taken when Run is pressed."""

    name: str
    source_id: str
    data: Any
    rgb: bool
    scale: tuple
    translate: tuple
    axis_labels: tuple | None = None
    units: tuple | None = None
    params: dict = field(default_factory=dict)
    # Leading indices of the one slice explained ("current slice only"); () for the whole layer.
    slice_index: tuple = ()
    # The (y, x) part of the level explained ("visible region only"); None for all of it.
    box: tuple | None = None

    @classmethod
    def of(
        cls, layer, params: dict, slice_index: tuple = (), level: int = 0, box: tuple[slice, slice] | None = None
    ) -> Snapshot:
        from ._regions import level_placement

        data = layer.data[level] if getattr(layer, "multiscale", False) else layer.data
        if is_lazy(data) and not hasattr(data, "dask"):
            import dask.array as da

            data = da.from_array(data, chunks=getattr(data, "chunks", "auto"))  # slicing stays lazy
        scale, translate = level_placement(layer, level)
        if box is not None:
            rgb = (slice(None),) if getattr(layer, "rgb", False) else ()
            data = data[(..., *box, *rgb)]
            starts = (0.0,) * (len(scale) - 2) + (box[0].start, box[1].start)
            translate = tuple(t + s * i for t, s, i in zip(translate, scale, starts, strict=True))
        if slice_index:
            data = data[slice_index]
            # The result stays a (1, ..., Y, X) volume placed at the slice, not a 2-D layer shown on every slice.
            k = len(slice_index)
            translate = (
                tuple(t + s * i for t, s, i in zip(translate[:k], scale[:k], slice_index, strict=True))
                + (translate[k:])
            )
            data = (data if is_lazy(data) else np.asarray(data))[(np.newaxis,) * k]
        if isinstance(data, np.ndarray):
            data = data.copy()  # the run must not see edits made while it goes on
        return cls(
            name=layer.name,
            source_id=source_id(layer),
            data=data,
            rgb=bool(getattr(layer, "rgb", False)),
            scale=scale,
            translate=translate,
            axis_labels=tuple(getattr(layer, "axis_labels", ()) or ()) or None,
            units=tuple(str(u) for u in getattr(layer, "units", ()) or ()) or None,
            params=dict(params),
            slice_index=tuple(slice_index),
            box=box,
        )


def source_id(layer) -> str:
    return str(getattr(layer, "unique_id", id(layer)))


def mark(layer) -> dict:
    """The plugin's provenance on a layer, or {} for anyone else's layer."""
    md = layer.metadata.get(MARK) if isinstance(layer.metadata, dict) else None
    return md or {}


def data_digest(data) -> str:
    """What a labels layer held when the run made it; a lazy one (never painted) by its dask graph's name."""
    if isinstance(data, list):  # a pyramid
        return "|".join(data_digest(level) for level in data)
    if hasattr(data, "dask"):
        return f"dask:{data.name}"
    return hashlib.blake2b(np.ascontiguousarray(data).view(np.uint8), digest_size=16).hexdigest()


def is_current(layer, sid: str | None = None) -> bool:
    """A layer of the latest run that the user has neither kept, renamed nor painted on.

    Only such layers are updated or removed by a later run; anything else is the user's.
    """
    m = mark(layer)
    if not m or m.get("kept") or (sid is not None and m.get("source_id") != sid):
        return False
    if layer.name != m.get("name"):
        return False
    if m.get("kind") in ("labels", "instances"):
        data = list(layer.data) if layer.multiscale else layer.data
        data = data if isinstance(data, list) or hasattr(data, "dask") else np.asarray(data)
        return m.get("digest") == data_digest(data)
    return True


def _placement(snap: Snapshot, lead: int = 0) -> dict:
    kw: dict = {"scale": (1.0,) * lead + tuple(snap.scale), "translate": (0.0,) * lead + tuple(snap.translate)}
    ndim = len(snap.scale)
    if snap.axis_labels or lead:
        own = snap.axis_labels or tuple(f"axis {i - ndim}" for i in range(ndim))
        kw["axis_labels"] = STACK_AXES[:lead] + tuple(own)
    if snap.units:
        kw["units"] = ("pixel",) * lead + tuple(snap.units)
    return kw


def _provenance(snap: Snapshot, res: ExplainResult, **extra) -> dict:
    md = res.metadata
    return {
        MARK: {
            "source": snap.name,
            "source_id": snap.source_id,
            "method": md["method"],
            "method_title": md["method_title"],
            "target": md["target"],
            "normalize": md["normalize"],
            "model_sha256": md["model"]["sha256"],
            "model_path": md["model"]["path"],
            "version": md["version"],
            "slice": list(snap.slice_index),
            "store": md.get("out"),
            **extra,
        }
    }


def label_colormap(n: int) -> dict:
    """Class colours that read well over a dark fluorescence image; background transparent."""
    return {i: LABEL_COLORS[i % len(LABEL_COLORS)] if i else "transparent" for i in range(n)} | {None: "#ffffff"}


def first_shown(layers_order: list[str], classes_order: list[int]) -> tuple[str, int]:
    """The map a reviewer looks at first: the finest layer, the first class that is not background."""
    return layers_order[-1], next((c for c in classes_order if c != 0), classes_order[0])


def store_pyramids(res: ExplainResult) -> tuple[list, dict] | None:
    """A run written to OME-Zarr as pyramids, finest first: (labels levels, {key: normalised map levels}).

    None for a run held in memory. napari shows a list of levels as one multiscale layer and reads
    only the tiles on screen, so results larger than RAM stay on disk.
    """
    path = res.metadata.get("out")
    if not path:
        return None
    from .destination import lazy_normalized
    from .zarr_out import open_levels

    labels, maps = open_levels(path)
    mode, scales = res.metadata["normalize"], res.metadata["ranges"]
    cams = {
        (ly, c): [lazy_normalized(level[i], scales[f"{ly}/{c}"], mode) for level in maps]
        for i, (ly, c) in enumerate(res.cams)  # the store's channel order
    }
    return labels, cams


def _levels(levels: list):
    """One array for a single level (a plain layer), the list for a pyramid (a multiscale layer)."""
    return levels if len(levels) > 1 else levels[0]


def build_layers(snap: Snapshot, res: ExplainResult, stacked: bool = False) -> list[tuple]:
    md = res.metadata
    names = res.class_names
    pyramids = store_pyramids(res)
    out = []
    labels_kw = {
        "name": f"{snap.name} labels (UNet)",
        "metadata": _provenance(snap, res, kind="labels", role="labels", class_names=names),
        "features": {"index": list(range(len(names))), "class": names},
        "opacity": 0.8,
        # Outlines keep the image and a heatmap readable under the segmentation.
        "_contour": 1 if res.cams else 0,
        **_placement(snap),
    }
    out.append((res.labels if pyramids is None else _levels(pyramids[0]), labels_kw, "labels"))
    if snap.params.get("instances"):
        inst_kw = {
            "name": f"{snap.name} instances (UNet)",
            "metadata": _provenance(snap, res, kind="instances", role="instances"),
            "opacity": 0.6,
            **_placement(snap),
        }
        out.append((res.instances(), inst_kw, "labels"))
    keys = list(res.cams)
    if not keys:
        return out
    title = md["method_title"]
    limits = [0.0, 1.0]
    if md["normalize"] == "none":
        lows, highs = zip(*md["ranges"].values(), strict=True)
        limits = [float(min(lows)), float(max(max(highs), min(lows) + 1e-12))]
    layers_order, classes_order = res.layers, res.classes
    common = {"colormap": "inferno", "blending": "additive", "opacity": 0.7, "contrast_limits": limits}
    shown = first_shown(layers_order, classes_order)
    if stacked:
        if pyramids is None:
            data = res.stacked()
        else:
            import dask.array as da

            per_level = zip(*(pyramids[1][ly, c] for ly in layers_order for c in classes_order), strict=True)
            shape = (len(layers_order), len(classes_order))
            data = _levels([da.stack(maps).reshape(*shape, *maps[0].shape) for maps in per_level])
        kw = {
            "name": f"{snap.name} {title} maps",
            "metadata": _provenance(
                snap,
                res,
                kind="stack",
                role="stack",
                layers=layers_order,
                classes=[names[c] for c in classes_order],
                class_indices=classes_order,
                first=[layers_order.index(shown[0]), classes_order.index(shown[1])],
            ),
            **common,
            **_placement(snap, lead=2),
        }
        return [*out, (data, kw, "image")]
    for ly, c in keys:
        kw = {
            "name": f"{snap.name} {title} {ly} {names[c]}",
            "metadata": _provenance(
                snap, res, kind="heatmap", role=f"heatmap/{ly}/{c}", layer=ly, class_index=c, class_name=names[c]
            ),
            "visible": (ly, c) == shown,
            **common,
            **_placement(snap),
        }
        out.append((res.cams[ly, c] if pyramids is None else _levels(pyramids[1][ly, c]), kw, "image"))
    return out


@contextmanager
def layer_batch(viewer):
    """Remove or hide layers with one scene-graph update and a collection of young objects only.

    napari's canvas calls ``gc.collect()`` after each removal (a Windows OpenGL workaround); in
    napari's large object graph a full collection takes 0.2-1 s. Batching makes it one call, and
    freezing the existing heap for the duration makes that call scan only new objects. The
    frozen objects are handed back to the collector afterwards, so nothing is kept alive.
    """
    gc.freeze()
    try:
        batched = getattr(viewer.layers, "batched_update", None)
        if batched is None:
            yield
        else:
            with batched():
                yield
    finally:
        gc.unfreeze()


def remove_layers(viewer, layers: Iterable) -> None:
    doomed = [ly for ly in layers if ly in viewer.layers]
    if not doomed:
        return
    with layer_batch(viewer):
        for ly in doomed:
            viewer.layers.remove(ly)


def _update_in_place(old, data, kw: dict, kind: str, contour: int) -> None:
    old.data = data
    old.name = kw["name"]
    if kind == "image":
        old.contrast_limits = kw["contrast_limits"]
    else:
        # Replacing a live Labels layer's colormap texture is needless when the classes are the
        # same, and Labels textures being replaced is where Mesa's GL crashed (docs/napari-face.md).
        n_classes = len(kw.get("features", {}).get("class", ()))
        if n_classes and n_classes != len(mark(old).get("class_names", ())):
            old.colormap = kw["colormap"]
            old.features = kw["features"]
        if old.contour != contour:
            old.contour = contour
    old.metadata = kw["metadata"]


def _same_frame(old, kind: str, data, kw: dict) -> bool:
    pyramid = isinstance(data, list)  # napari cannot turn a layer into a multiscale one or back
    return (
        old._type_string == kind
        and bool(old.multiscale) == pyramid
        and old.ndim == np.ndim(data[0] if pyramid else data)
        and np.allclose(old.scale, kw["scale"])
        and np.allclose(old.translate, kw["translate"])
    )


def apply_layers(viewer, snap: Snapshot, tuples: list[tuple]) -> list:
    """Add or update the run's layers at once (see :func:`iter_apply_layers`)."""
    return [layer for layer in iter_apply_layers(viewer, snap, tuples) if layer is not None]


def iter_apply_layers(viewer, snap: Snapshot, tuples: list[tuple]) -> Iterator:
    """Add or update the run's layers one at a time, yielding each (and None between steps).

    napari takes ~0.1 s to add a layer, so the widget adds one per event-loop turn and the UI
    never freezes for the whole set. The current run's layer of the same role is updated in
    place (data, name, contrast, metadata; the user's visibility choice stays); a layer the user
    kept, renamed or painted on is theirs and is never touched; a map the new run no longer
    makes is removed, all in one batch.
    """
    from napari.utils.colormaps import DirectLabelColormap

    current = {mark(ly)["role"]: ly for ly in viewer.layers if is_current(ly, snap.source_id) and mark(ly).get("role")}
    kept = set()
    for data, kw, kind in tuples:
        kw = dict(kw)
        contour = kw.pop("_contour", 0)
        md = kw["metadata"][MARK]
        if kind == "labels":
            if md["kind"] == "labels":
                kw["colormap"] = DirectLabelColormap(color_dict=label_colormap(len(kw["features"]["class"])))
            md["digest"] = data_digest(data)
        old = current.get(md["role"])
        if isinstance(data, list):
            kw["multiscale"] = True
        if old is not None and _same_frame(old, kind, data, kw):
            _update_in_place(old, data, kw, kind, contour)
            md["name"] = old.name  # napari may have made the name unique
            kept.add(id(old))
            yield old
            continue
        if kind == "labels":
            layer = viewer.add_labels(data, **kw)
            if contour:
                yield None  # outlining a large labels layer takes napari a while: its own turn
                layer.contour = contour
        else:
            layer = viewer.add_image(data, **kw)
        layer.metadata[MARK]["name"] = layer.name
        kept.add(id(layer))
        yield layer
    remove_layers(viewer, [ly for ly in current.values() if id(ly) not in kept])


def keep_run(viewer, sid: str | None = None) -> list:
    """Set the current run's layers aside for comparison: renamed ``... #k``, never updated again."""
    layers = [ly for ly in viewer.layers if is_current(ly, sid) and mark(ly).get("kind") != "grid-view"]
    if not layers:
        return []
    k = 1 + max((mark(ly).get("kept") or 0 for ly in viewer.layers), default=0)
    for ly in layers:
        m = dict(mark(ly), kept=k)
        ly.name = f"{ly.name} #{k}"
        m["name"] = ly.name
        ly.metadata = {**ly.metadata, MARK: m}
    return layers
