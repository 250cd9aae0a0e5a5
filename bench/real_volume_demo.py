"""One real MRI volume with a lesion mask, explained end to end by a 3-D U-Net trained briefly on it.

Data: the test cases in pyradiomics 3.1.0's source distribution (``data/brain1_image.nrrd`` and
``brain1_label.nrrd``: a contrast-enhanced T1 MRI, 256x256x25 voxels of 0.78x0.78x6.5 mm, with a
lesion label; ``brain2`` is a second patient, held out). Fetched once from PyPI (sha256 pinned)
into bench/.data/ (gitignored). pyradiomics is BSD-3-Clause (Copyright 2017 Harvard Medical
School, its LICENSE.txt is copied beside the data); the package does not name the scans' origin.

What it does: z-scores each head and halves it in-plane (128x128x25, 1.56x1.56x6.5 mm), trains a
MONAI BasicUNet on patches of brain1 for ``--minutes``, saves it as a MONAI bundle, loads that
bundle with ``bundles.load_any`` and explains both volumes with Grad-CAM for the lesion class.
It prints the lesion Dice (brain1: the fit; brain2: held out) and where each decoder stage's map
concentrates: the fraction of its mass inside the dilated lesion, against the fraction of the head
that region is (what a map spread evenly would give).

    nice -n 10 .venv/bin/python bench/real_volume_demo.py --minutes 10 --threads 2
    QT_QPA_PLATFORM=xcb xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python bench/real_volume_demo.py --screenshot
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import tarfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import tifffile
import torch
from scipy import ndimage

ROOT = Path(__file__).resolve().parent
DATA = ROOT / ".data"
BUNDLE = DATA / "brain1_bundle"
SDIST = (
    "https://files.pythonhosted.org/packages/03/c1/20fc2c50ab1e3304da36d866042a1905a2b05a1431ece35448ab6b4578f2/"
    "pyradiomics-3.1.0.tar.gz"
)
SDIST_SHA256 = "24722c962a6bbd09bc39c1c67dbffe92435f9692a421fabaae8a6b4511eb48e4"
CASES = ("brain1", "brain2")
SPACING = (6.5, 1.5625, 1.5625)  # mm per voxel (z, y, x) after halving in-plane
PATCH = (16, 48, 48)
FEATURES = (8, 8, 16, 32, 64, 8)
LAYERS = ["upcat_4", "upcat_3", "upcat_2", "upcat_1"]
_NRRD_TYPES = {"short": "<i2", "int": "<i4", "ushort": "<u2", "unsigned short": "<u2", "float": "<f4", "uchar": "u1"}


def fetch() -> None:
    """The NRRD files and the licence from pyradiomics' sdist, checked against the pinned sha256."""
    wanted = [f"data/{c}_{k}.nrrd" for c in CASES for k in ("image", "label")] + ["LICENSE.txt"]
    if all((DATA / Path(w).name).exists() for w in wanted):
        return
    DATA.mkdir(parents=True, exist_ok=True)
    blob = urllib.request.urlopen(SDIST, timeout=120).read()
    if hashlib.sha256(blob).hexdigest() != SDIST_SHA256:
        raise SystemExit("pyradiomics-3.1.0.tar.gz does not have the pinned sha256; not used.")
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as tar:
        for w in wanted:
            member = tar.getmember(f"pyradiomics-3.1.0/{w}")
            (DATA / Path(w).name).write_bytes(tar.extractfile(member).read())


def read_nrrd(path: Path) -> np.ndarray:
    """A (Z, Y, X) array from a gzip or raw NRRD file (the only encodings these cases use)."""
    head, _, body = path.read_bytes().partition(b"\n\n")
    fields = dict(
        (k.strip(), v.strip()) for k, _, v in (ln.partition(":") for ln in head.decode().splitlines()[1:]) if _
    )
    if fields.get("encoding") not in ("gzip", "raw") or fields.get("endian", "little") != "little":
        raise SystemExit(f"{path}: NRRD encoding {fields.get('encoding')!r} is not read here.")
    sizes = [int(s) for s in fields["sizes"].split()]
    data = gzip.decompress(body) if fields["encoding"] == "gzip" else body
    return np.frombuffer(data, _NRRD_TYPES[fields["type"]]).reshape(sizes[::-1])


def load_case(case: str) -> tuple[np.ndarray, np.ndarray]:
    """The head z-scored (over voxels brighter than 5 % of its 99th percentile), halved in-plane; the lesion."""
    image = read_nrrd(DATA / f"{case}_image.nrrd").astype(np.float32)
    label = read_nrrd(DATA / f"{case}_label.nrrd") > 0
    z, y, x = image.shape
    image = image.reshape(z, y // 2, 2, x // 2, 2).mean((2, 4))
    label = label.reshape(z, y // 2, 2, x // 2, 2).mean((2, 4)) >= 0.5
    head = image > 0.05 * np.percentile(image, 99)
    image = np.clip((image - image[head].mean()) / image[head].std(), -5, 5)
    return image.astype(np.float32), label


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / max(a.sum() + b.sum(), 1))


def patches(image, label, rng, n):
    """n (image, label) patches: two thirds centred near a lesion voxel, flipped and rescaled at random."""
    lesion = np.argwhere(label)
    xs, ys = [], []
    for i in range(n):
        if i % 3 and len(lesion):
            centre = lesion[rng.integers(len(lesion))] + rng.integers(-8, 9, 3) * (0, 2, 2)
        else:
            centre = [rng.integers(s) for s in image.shape]
        start = [int(np.clip(c - p // 2, 0, s - p)) for c, p, s in zip(centre, PATCH, image.shape, strict=True)]
        sl = tuple(slice(s, s + p) for s, p in zip(start, PATCH, strict=True))
        x, y = image[sl], label[sl]
        for axis in (1, 2):
            if rng.random() < 0.5:
                x, y = np.flip(x, axis), np.flip(y, axis)
        xs.append(x * rng.uniform(0.9, 1.1) + rng.normal(0, 0.1))
        ys.append(y)
    return torch.from_numpy(np.stack(xs)[:, None].copy()), torch.from_numpy(np.stack(ys)[:, None].astype(np.int64))


def train(minutes: float, threads: int, seed: int) -> dict:
    from monai.losses import DiceCELoss
    from monai.networks.nets import BasicUNet

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    image, label = load_case("brain1")
    net = BasicUNet(spatial_dims=3, in_channels=1, out_channels=2, features=FEATURES)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    t0, step, losses = time.perf_counter(), 0, []
    while time.perf_counter() - t0 < 60 * minutes:
        x, y = patches(image, label, rng, 2)
        loss = loss_fn(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        step += 1
        if step % 50 == 0:
            print(f"step {step}: loss {np.mean(losses[-50:]):.3f} ({time.perf_counter() - t0:.0f} s)", flush=True)
    save_bundle(net.eval())
    return {"steps": step, "seconds": round(time.perf_counter() - t0), "final_loss": float(np.mean(losses[-50:]))}


def save_bundle(net) -> None:
    """The trained network as a MONAI bundle: what a user would hand to the plugin."""
    (BUNDLE / "configs").mkdir(parents=True, exist_ok=True)
    (BUNDLE / "models").mkdir(exist_ok=True)
    network_def = {
        "_target_": "monai.networks.nets.BasicUNet",
        "spatial_dims": 3,
        "in_channels": 1,
        "out_channels": 2,
        "features": list(FEATURES),
    }
    (BUNDLE / "configs" / "inference.json").write_text(json.dumps({"network_def": network_def}, indent=2))
    meta = {"network_data_format": {"outputs": {"pred": {"channel_def": {"0": "background", "1": "lesion"}}}}}
    (BUNDLE / "configs" / "metadata.json").write_text(json.dumps(meta, indent=2))
    torch.save(net.state_dict(), BUNDLE / "models" / "model.pt")


def where_maps_go(res, label: np.ndarray, image: np.ndarray) -> dict:
    """Per decoder stage: mass inside the dilated lesion, against that region's share of the head."""
    region = ndimage.binary_dilation(label, np.ones((3, 5, 5), bool))  # one slice, two voxels in-plane
    head = image > image.min() + 0.5
    out = {"region_share_of_head": round(float(region[head].mean()), 4)}
    centre = np.array(ndimage.center_of_mass(label))
    for ly in res.layers:
        m = np.clip(res.cams[ly, 1], 0, None)
        peak = np.unravel_index(np.argmax(m), m.shape)
        out[ly] = {
            "mass_in_lesion": round(float(m[region].sum() / max(m.sum(), 1e-12)), 4),
            "peak_in_lesion": bool(region[peak]),
            "peak_to_lesion_centre_mm": round(float(np.linalg.norm((np.array(peak) - centre) * SPACING)), 1),
        }
    return out


def evaluate() -> dict:
    from napari_unet_gradcam import explain
    from napari_unet_gradcam.bundles import load_any

    net = load_any(BUNDLE, device="cpu")
    report = {}
    for case in CASES:
        image, label = load_case(case)
        tifffile.imwrite(DATA / f"{case}_zscore.tif", image, metadata={"axes": "ZYX"})
        t0 = time.perf_counter()
        res = explain(image, net, layers=LAYERS, classes=[1], preprocess="none", normalize="none")
        pred = res.labels == 1
        report[case] = {
            "dice": round(dice(pred, label), 3),
            "lesion_voxels": int(label.sum()),
            "predicted_voxels": int(pred.sum()),
            "explain_seconds": round(time.perf_counter() - t0, 1),
            "maps": where_maps_go(res, label, image),
        }
        print(case, json.dumps(report[case], indent=1), flush=True)
    return report


def screenshot(out: Path) -> None:
    """napari with brain1, the widget run on it from the bundle, the finest map over the lesion's middle slice."""
    import napari
    from qtpy.QtWidgets import QApplication

    def settle(cond=lambda: True, seconds=0.5):
        while not cond():
            QApplication.processEvents()
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            QApplication.processEvents()

    image, label = load_case("brain1")
    viewer = napari.Viewer(show=True)
    viewer.window.resize(1500, 950)
    viewer.add_image(image, name="brain1 MRI", scale=SPACING, colormap="gray")
    from napari.utils.colormaps import DirectLabelColormap

    truth = viewer.add_labels(label.astype(np.uint8), name="lesion (ground truth)", scale=SPACING, opacity=1.0)
    truth.colormap = DirectLabelColormap(color_dict={0: "transparent", 1: "lime", None: "transparent"})
    truth.contour = 1
    _, widget = viewer.window.add_plugin_dock_widget("napari-unet-gradcam", "UNet Grad-CAM")
    widget.image.value = viewer.layers["brain1 MRI"]
    widget.model.value = "MONAI bundle folder"
    widget.checkpoint.value = BUNDLE
    widget.layers.value = ["upcat_2", "upcat_1"]
    widget.classes.value = [1]
    widget.preprocess.value = "none"
    widget.run()
    settle(lambda: not widget.runner.busy, 1.0)
    print(widget.status.value)
    z = int(round(ndimage.center_of_mass(label)[0]))
    viewer.dims.set_point(0, z * SPACING[0])
    for ly in viewer.layers:
        if "upcat_1 lesion" in ly.name:
            ly.visible, viewer.layers.selection.active = True, ly
        elif "Grad-CAM" in ly.name:
            ly.visible = False
    viewer.layers.move(viewer.layers.index(truth), len(viewer.layers))  # the true outline on top
    viewer.reset_view()
    centre = np.array(ndimage.center_of_mass(label)) * SPACING
    viewer.camera.center = (centre[1] + 10, centre[2] - 50)  # the lesion right of centre, most of the head in view
    viewer.camera.zoom *= 1.25
    settle(seconds=1.0)
    viewer.screenshot(str(out), canvas_only=False, flash=False)
    viewer.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--minutes", type=float, default=10.0, help="training time (wall clock)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-training", action="store_true", help="explain with the bundle already in bench/.data/")
    p.add_argument("--screenshot", action="store_true", help="only the napari screenshot (needs a display)")
    args = p.parse_args()
    fetch()
    if args.screenshot:
        screenshot(ROOT.parent / "docs" / "screenshot-3d.png")
        return
    torch.set_num_threads(args.threads)
    trained = None if args.skip_training else train(args.minutes, args.threads, args.seed)
    report = {"training": trained, **evaluate()}
    (ROOT / "out").mkdir(exist_ok=True)
    (ROOT / "out" / "real_volume.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
