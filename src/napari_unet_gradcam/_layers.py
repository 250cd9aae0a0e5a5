"""Turning an ExplainResult into napari layers placed exactly over their source.

Pure functions of a :class:`Snapshot` and a result: they return ``(data, kwargs, type)`` tuples,
and :func:`apply_layers` puts them into a viewer, replacing the plugin's own earlier layers.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .pipeline import ExplainResult

MARK = "unet_gradcam"
LABEL_COLORS = ["transparent", "#00e5ff", "#ff3df5", "#ffd400", "#7cff4f", "#ff7a1a", "#9b7bff", "#ff4d4d"]


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

    @classmethod
    def of(cls, layer, params: dict) -> Snapshot:
        data = layer.data[0] if getattr(layer, "multiscale", False) else layer.data
        if isinstance(data, np.ndarray):
            data = data.copy()  # the run must not see edits made while it goes on
        return cls(
            name=layer.name,
            source_id=str(getattr(layer, "unique_id", id(layer))),
            data=data,
            rgb=bool(getattr(layer, "rgb", False)),
            scale=tuple(layer.scale),
            translate=tuple(layer.translate),
            axis_labels=tuple(getattr(layer, "axis_labels", ()) or ()) or None,
            units=tuple(str(u) for u in getattr(layer, "units", ()) or ()) or None,
            params=dict(params),
        )


def data_digest(data: np.ndarray) -> str:
    return hashlib.blake2b(np.ascontiguousarray(data).view(np.uint8), digest_size=16).hexdigest()


def _placement(snap: Snapshot, lead: int = 0) -> dict:
    kw: dict = {"scale": (1.0,) * lead + tuple(snap.scale), "translate": (0.0,) * lead + tuple(snap.translate)}
    if snap.axis_labels:
        kw["axis_labels"] = tuple(["decoder layer", "class"][:lead]) + tuple(snap.axis_labels)
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
            "target": md["target"],
            "normalize": md["normalize"],
            "model_sha256": md["model"]["sha256"],
            "model_path": md["model"]["path"],
            "version": md["version"],
            **extra,
        }
    }


def label_colormap(n: int) -> dict:
    """Class colours that read well over a dark fluorescence image; background transparent."""
    return {i: LABEL_COLORS[i % len(LABEL_COLORS)] if i else "transparent" for i in range(n)} | {None: "#ffffff"}


def build_layers(snap: Snapshot, res: ExplainResult, stacked: bool = False) -> list[tuple]:
    md = res.metadata
    names = md["class_names"]
    out = []
    labels_kw = {
        "name": f"{snap.name} labels (UNet)",
        "metadata": _provenance(snap, res, kind="labels", class_names=names),
        "features": {"index": list(range(len(names))), "class": names},
        "opacity": 0.8,
        # Outlines keep the image and a heatmap readable under the segmentation.
        "_contour": 1 if res.cams else 0,
        **_placement(snap),
    }
    out.append((res.labels, labels_kw, "labels"))
    if snap.params.get("instances"):
        inst_kw = {
            "name": f"{snap.name} instances (UNet)",
            "metadata": _provenance(snap, res, kind="instances"),
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
    layers_order = list(dict.fromkeys(k[0] for k in keys))
    classes_order = list(dict.fromkeys(k[1] for k in keys))
    common = {"colormap": "inferno", "blending": "additive", "opacity": 0.7, "contrast_limits": limits}
    if stacked:
        data = np.stack([np.stack([res.cams[ly, c] for c in classes_order]) for ly in layers_order])
        kw = {
            "name": f"{snap.name} {title} maps",
            "metadata": _provenance(
                snap, res, kind="stack", layers=layers_order, classes=[names[c] for c in classes_order]
            ),
            **common,
            **_placement(snap, lead=2),
        }
        return [*out, (data, kw, "image")]
    # One map visible at first: the finest requested layer for the first class that is not background.
    shown = (layers_order[-1], next((c for c in classes_order if c != 0), classes_order[0]))
    for ly, c in keys:
        kw = {
            "name": f"{snap.name} {title} {ly} {names[c]}",
            "metadata": _provenance(snap, res, kind="heatmap", layer=ly, class_index=c, class_name=names[c]),
            "visible": (ly, c) == shown,
            **common,
            **_placement(snap),
        }
        out.append((res.cams[ly, c], kw, "image"))
    return out


def _ours(layer, source_id: str) -> dict | None:
    mark = layer.metadata.get(MARK) if isinstance(layer.metadata, dict) else None
    return mark if mark and mark.get("source_id") == source_id else None


def apply_layers(viewer, snap: Snapshot, tuples: list[tuple]) -> list:
    """Add or update the run's layers at once (see :func:`iter_apply_layers`)."""
    return [layer for layer in iter_apply_layers(viewer, snap, tuples) if layer is not None]


def iter_apply_layers(viewer, snap: Snapshot, tuples: list[tuple]) -> Iterator:
    """Add or update the run's layers one at a time, yielding each (and None between steps).

    napari takes ~0.1 s to add a layer, so the widget adds one per event-loop turn and the UI
    never freezes for the whole set. Earlier maps of the same source are replaced, never piled
    up; a labels layer of ours that the user has edited is left alone and a new one is added.
    """
    from napari.utils.colormaps import DirectLabelColormap

    existing = {layer.name: layer for layer in viewer.layers if _ours(layer, snap.source_id)}
    kept = set()
    for data, kw, kind in tuples:
        kw = dict(kw)
        contour = kw.pop("_contour", 0)
        if kind == "labels":
            if kw["metadata"][MARK]["kind"] == "labels":
                kw["colormap"] = DirectLabelColormap(color_dict=label_colormap(len(kw["features"]["class"])))
            kw["metadata"][MARK]["digest"] = data_digest(data)
        old = existing.get(kw["name"])
        reuse = old is not None and old._type_string == kind and old.data.shape == data.shape
        if reuse and kind == "labels":
            reuse = old.metadata[MARK].get("digest") == data_digest(np.asarray(old.data))
        if reuse:
            old.data = data
            old.metadata = kw["metadata"]
            if kind == "image":
                old.contrast_limits = kw["contrast_limits"]
            else:
                old.contour = contour
            kept.add(old.name)
            yield old
            continue
        if old is not None and kind == "labels":
            kw["name"] = kw["name"] + " (new)"
        if kind == "labels":
            layer = viewer.add_labels(data, **kw)
            if contour:
                yield None  # outlining a large labels layer takes napari a while: its own turn
                layer.contour = contour
        else:
            layer = viewer.add_image(data, **kw)
        kept.add(layer.name)
        yield layer
    for name, layer in existing.items():
        stale = name not in kept and layer.metadata[MARK].get("kind") in ("heatmap", "stack")
        if stale and layer in viewer.layers:
            viewer.layers.remove(layer)
