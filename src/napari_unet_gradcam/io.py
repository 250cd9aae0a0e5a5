"""Reading images from disk and writing a run's results, never leaving a half-written file."""

from __future__ import annotations

import json
from functools import cache
from io import BytesIO
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image, ImageDraw, ImageFont

from ._inferno import inferno_lut
from .atomic import atomic_outputs
from .errors import InputError
from .headers import check_declared_size, check_tiff_chunks, plain_header, quiet_tifffile
from .mask_values import labels_as_mask_values
from .pipeline import ExplainResult

TIFF_SUFFIXES = {".tif", ".tiff"}
PLAIN_SUFFIXES = {".png", ".jpg", ".jpeg"}


def read_image(path: str | Path, *, max_bytes: int | None = None) -> tuple[np.ndarray, str | None]:
    """The image and its axes string where the file records one (TIFF), else None.

    The shape the file declares is checked before decoding (``headers.check_declared_size``;
    ``max_bytes``: the float32 size allowed, default half the memory available).
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file.")
    if path.is_dir() and path.suffix.lower() == ".zarr":  # docs/large-data.md
        raise InputError(
            f"{path}: a zarr image is read block by block: on the command line add --workers 1 (or more); "
            "from Python pass zarr.open(...) to explain(..., out=...)."
        )
    if path.is_dir():
        raise InputError(f"{path}: is a directory, not an image.")
    suffix = path.suffix.lower()
    if suffix in TIFF_SUFFIXES:
        try:
            with quiet_tifffile(), tifffile.TiffFile(path) as tif:
                series = tif.series[0]
                check_declared_size(path, series.shape, series.dtype.itemsize, max_bytes)
                check_tiff_chunks(path, series.shape, series.keyframe.chunks, series.dtype.itemsize)
                return series.asarray(), series.axes
        except InputError:
            raise
        except Exception as exc:  # tifffile raises many types for broken files
            raise InputError(f"{path}: not a readable TIFF ({type(exc).__name__}: {exc}).") from None
    if suffix in PLAIN_SUFFIXES:
        declared = plain_header(path)
        if declared is not None:
            check_declared_size(path, *declared, max_bytes)
        try:
            with Image.open(path) as im:
                data = np.asarray(_plain_mode(im))
                if im.mode == "I" and im.format == "PNG":  # older Pillow (10.1) opens 16-bit grey PNGs as int32
                    data = data.astype(np.uint16)
                return data, None
        except Exception as exc:  # Pillow raises many types for broken or hostile files
            kind = suffix[1:].upper()
            raise InputError(f"{path}: not a readable {kind} image ({type(exc).__name__}: {exc}).") from None
    raise InputError(f"{path}: unsupported file type {suffix or '(none)'}; use TIFF, PNG or JPEG.")


def output_names(stem: str, probabilities: bool = False, instances: bool = False) -> list[str]:
    """Every file name ``write_result`` may write for ``stem`` (maps and sheet only when there are maps)."""
    names = [f"{stem}_labels.tif", f"{stem}_maps.tif", f"{stem}_contact_sheet.png"]
    names += [f"{stem}_instances.tif"] * instances + [f"{stem}_probabilities.tif"] * probabilities
    return names + [f"{stem}_metadata.json"]


def _plain_mode(im: Image.Image) -> Image.Image:
    """Palette, bilevel and other coded modes as the grey or RGB(A) values they stand for."""
    if im.mode == "P":
        return im.convert("RGBA" if "transparency" in im.info else "RGB")
    if im.mode in ("1", "PA", "LA", "CMYK", "YCbCr"):
        return im.convert({"1": "L", "PA": "RGBA", "LA": "RGBA", "CMYK": "RGB", "YCbCr": "RGB"}[im.mode])
    return im


def layout_from_axes(axes: str | None, shape: tuple[int, ...]) -> dict:
    """explain() keyword arguments for a TIFF's axes (C = channels, S = RGB samples)."""
    if not axes or len(axes) != len(shape):
        return {}
    if "S" in axes and axes.endswith("S"):
        return {"rgb": True}
    if "C" in axes:
        return {"channel_axis": axes.index("C"), "rgb": False}
    return {"rgb": False}


def _display(image: np.ndarray) -> np.ndarray:
    """A 2-D uint8 view for the contact sheet: mean over channels, percentile contrast."""
    img = image.astype(np.float32)
    lo, hi = np.percentile(img, (1, 99.8))
    return (np.clip((img - lo) / (hi - lo if hi > lo else 1.0), 0, 1) * 255).astype(np.uint8)


def contact_sheet(image2d: np.ndarray, res: ExplainResult, index: tuple = (), cell: int = 256) -> np.ndarray:
    """Rows = decoder layers, columns = classes; each map over the image, titled; RGB uint8."""
    layers, classes, names = res.layers, res.classes, res.class_names
    h, w = image2d.shape
    s = cell / max(h, w)
    size = (max(1, round(w * s)), max(1, round(h * s)))
    gray = np.repeat(_resized(_display(image2d), size, Image.Resampling.BILINEAR)[..., None], 3, axis=2)
    title_h = 22

    def titled(tile: np.ndarray, text: str) -> np.ndarray:
        bar = Image.new("RGB", (tile.shape[1], title_h), (32, 32, 32))
        ImageDraw.Draw(bar).text((4, 4), text, fill=(235, 235, 235), font=_title_font())
        return np.concatenate([np.asarray(bar), tile], 0)

    labels = _resized(res.labels[index].astype(np.uint8), size, Image.Resampling.NEAREST)
    palette = np.array([[0, 0, 0], [0, 229, 255], [255, 61, 245], [255, 212, 0]], np.uint8)
    overlay = gray.copy()
    fg = labels > 0
    overlay[fg] = (0.5 * gray[fg] + 0.5 * palette[labels[fg] % len(palette)]).astype(np.uint8)
    rows = [[titled(gray, "image"), titled(overlay, "labels")] + [titled(np.zeros_like(gray), "")] * (len(classes) - 2)]
    for ly in layers:
        row = []
        for c in classes:
            m = _resized(res.cams[ly, c][index].astype(np.float32), size, Image.Resampling.BILINEAR)
            heat = inferno_lut()[(np.clip(m, 0, 1) * 255).astype(np.uint8)]
            blend = np.clip(np.rint(0.45 * gray + 0.75 * heat), 0, 255).astype(np.uint8)
            row.append(titled(blend, f"{ly} / {names[c]}"))
        rows.append(row)
    width = max(len(r) for r in rows)
    blank = titled(np.zeros_like(gray), "")
    rows = [r + [blank] * (width - len(r)) for r in rows]
    return np.concatenate([np.concatenate(r[:width], 1) for r in rows], 0)


def _resized(a: np.ndarray, size: tuple[int, int], resample: Image.Resampling) -> np.ndarray:
    """A uint8 or float32 2-D array at ``size`` (width, height); Pillow averages when it shrinks."""
    return np.asarray(Image.fromarray(a).resize(size, resample))


@cache
def _title_font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=13)  # Pillow's bundled font: the same on every machine


def png_bytes(rgb: np.ndarray) -> bytes:
    buf = BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


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
    layers, classes, names = res.layers, res.classes, res.class_names
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
            cams = res.stacked().astype(np.float32, copy=False)
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
            target(p).write(png_bytes(contact_sheet(img2d, res, mid)))
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
        target(p).write(json.dumps(res.metadata, indent=2, default=str).encode())
        finals.append(p)
    return finals
