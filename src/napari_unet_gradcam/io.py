"""Reading images from disk and writing a run's results, never leaving a half-written file."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np
import tifffile

from .errors import InputError
from .mask_values import labels_as_mask_values
from .pipeline import ExplainResult

TIFF_SUFFIXES = {".tif", ".tiff"}
PLAIN_SUFFIXES = {".png", ".jpg", ".jpeg"}


def read_image(path: str | Path) -> tuple[np.ndarray, str | None]:
    """The image and its axes string where the file records one (TIFF), else None."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file.")
    if path.is_dir():
        raise InputError(f"{path}: is a directory, not an image.")
    suffix = path.suffix.lower()
    if suffix in TIFF_SUFFIXES:
        try:
            with tifffile.TiffFile(path) as tif:
                series = tif.series[0]
                return series.asarray(), series.axes
        except Exception as exc:  # tifffile raises many types for broken files
            raise InputError(f"{path}: not a readable TIFF ({type(exc).__name__}: {exc}).") from None
    if suffix in PLAIN_SUFFIXES:
        data = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if data is None:
            raise InputError(f"{path}: not a readable {suffix[1:].upper()} image.")
        if data.ndim == 3:  # OpenCV reads colour as BGR(A)
            data = cv2.cvtColor(data, cv2.COLOR_BGRA2RGBA if data.shape[2] == 4 else cv2.COLOR_BGR2RGB)
        return data, None
    raise InputError(f"{path}: unsupported file type {suffix or '(none)'}; use TIFF, PNG or JPEG.")


def layout_from_axes(axes: str | None, shape: tuple[int, ...]) -> dict:
    """explain() keyword arguments for a TIFF's axes (C = channels, S = RGB samples)."""
    if not axes or len(axes) != len(shape):
        return {}
    if "S" in axes and axes.endswith("S"):
        return {"rgb": True}
    if "C" in axes:
        return {"channel_axis": axes.index("C"), "rgb": False}
    return {"rgb": False}


@contextmanager
def atomic_outputs() -> Iterator[callable]:
    """Collect files written through ``target(path)``; on failure remove every one of them."""
    written: list[tuple[Path, Path]] = []

    def target(final: Path) -> Path:
        tmp = final.with_name(final.name + ".part")
        written.append((tmp, final))
        return tmp

    try:
        yield target
        for tmp, final in written:
            os.replace(tmp, final)
    except BaseException:
        for tmp, _ in written:
            tmp.unlink(missing_ok=True)
        raise


def _display(image: np.ndarray) -> np.ndarray:
    """A 2-D uint8 view for the contact sheet: mean over channels, percentile contrast."""
    img = image.astype(np.float32)
    lo, hi = np.percentile(img, (1, 99.8))
    return (np.clip((img - lo) / (hi - lo if hi > lo else 1.0), 0, 1) * 255).astype(np.uint8)


def contact_sheet(image2d: np.ndarray, res: ExplainResult, index: tuple = (), cell: int = 256) -> np.ndarray:
    """Rows = decoder layers, columns = classes; each map over the image, titled; BGR uint8."""
    layers = list(dict.fromkeys(k[0] for k in res.cams))
    classes = list(dict.fromkeys(k[1] for k in res.cams))
    names = res.metadata["class_names"]
    h, w = image2d.shape
    s = cell / max(h, w)
    size = (max(1, round(w * s)), max(1, round(h * s)))
    gray = cv2.cvtColor(cv2.resize(_display(image2d), size, interpolation=cv2.INTER_AREA), cv2.COLOR_GRAY2BGR)
    title_h = 22

    def titled(tile: np.ndarray, text: str) -> np.ndarray:
        bar = np.full((title_h, tile.shape[1], 3), 32, np.uint8)
        cv2.putText(bar, text, (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (235, 235, 235), 1, cv2.LINE_AA)
        return np.concatenate([bar, tile], 0)

    labels = cv2.resize(res.labels[index].astype(np.uint8), size, interpolation=cv2.INTER_NEAREST)
    palette = np.array([[0, 0, 0], [255, 229, 0], [245, 61, 255], [0, 212, 255]], np.uint8)
    overlay = gray.copy()
    fg = labels > 0
    overlay[fg] = (0.5 * gray[fg] + 0.5 * palette[labels[fg] % len(palette)]).astype(np.uint8)
    rows = [[titled(gray, "image"), titled(overlay, "labels")] + [titled(np.zeros_like(gray), "")] * (len(classes) - 2)]
    for ly in layers:
        row = []
        for c in classes:
            m = cv2.resize(res.cams[ly, c][index], size, interpolation=cv2.INTER_LINEAR)
            heat = cv2.applyColorMap((np.clip(m, 0, 1) * 255).astype(np.uint8), cv2.COLORMAP_INFERNO)
            row.append(titled(cv2.addWeighted(gray, 0.45, heat, 0.75, 0), f"{ly} / {names[c]}"))
        rows.append(row)
    width = max(len(r) for r in rows)
    blank = titled(np.zeros_like(gray), "")
    rows = [r + [blank] * (width - len(r)) for r in rows]
    return np.concatenate([np.concatenate(r[:width], 1) for r in rows], 0)


def write_result(
    res: ExplainResult,
    image: np.ndarray,
    out_dir: Path,
    stem: str,
    stack_axes: str = "",
    probabilities: bool = False,
    rgb: bool = False,
    instances: bool = False,
    mask_values: list | None = None,
) -> list[Path]:
    """Labels TIFF, maps TIFF (decoder layer, class, stack..., Y, X), contact sheet PNG, metadata JSON.

    With ``mask_values`` the labels TIFF holds each class's mask value instead of its index.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    layers = list(dict.fromkeys(k[0] for k in res.cams))
    classes = list(dict.fromkeys(k[1] for k in res.cams))
    names = res.metadata["class_names"]
    yx = stack_axes + "YX"
    finals = []
    with atomic_outputs() as target:
        p = out_dir / f"{stem}_labels.tif"
        if mask_values is None:
            labels, meta = res.labels.astype(np.uint16 if res.labels.max() > 255 else np.uint8), {"axes": yx}
        else:
            labels = labels_as_mask_values(res.labels, mask_values)
            meta = {"axes": yx + "S" * (labels.ndim - res.labels.ndim), "mask_values": mask_values}
        tifffile.imwrite(target(p), labels, metadata={**meta, "class_names": names})
        finals.append(p)
        if res.cams:
            cams = np.stack([np.stack([res.cams[ly, c] for c in classes]) for ly in layers]).astype(np.float32)
            p = out_dir / f"{stem}_maps.tif"
            tifffile.imwrite(
                target(p),
                cams,
                metadata={
                    "axes": "QC" + yx,
                    "decoder_layers": layers,
                    "classes": [names[c] for c in classes],
                    "method": res.metadata["method"],
                    "normalize": res.metadata["normalize"],
                },
            )
            finals.append(p)
            mid = tuple(s // 2 for s in res.labels.shape[:-2])
            img2d = image.mean(-1) if rgb else image
            img2d = img2d[mid] if img2d.ndim > 2 else img2d
            while img2d.ndim > 2:  # channel-first multichannel: show the channel mean
                img2d = img2d.mean(0)
            p = out_dir / f"{stem}_contact_sheet.png"
            ok, buf = cv2.imencode(".png", contact_sheet(img2d, res, mid))
            target(p).write_bytes(buf.tobytes())
            finals.append(p)
        if instances:
            p = out_dir / f"{stem}_instances.tif"
            tifffile.imwrite(target(p), res.instances(), metadata={"axes": yx})
            finals.append(p)
        if probabilities:
            p = out_dir / f"{stem}_probabilities.tif"
            tifffile.imwrite(target(p), res.probabilities, metadata={"axes": "C" + yx, "classes": names})
            finals.append(p)
        p = out_dir / f"{stem}_metadata.json"
        target(p).write_text(json.dumps(res.metadata, indent=2, default=str))
        finals.append(p)
    return finals
