"""Training a Pytorch-UNet: the bundled nuclei model from synthetic data, or a user's own folders.

``napari-unet-gradcam train`` reproduces the shipped weights (fixed seeds, CPU): the plain recipe,
then a fine-tuning stage on images with real-stain artefacts (docs/model-card.md). With
``--images DIR --masks DIR`` it trains on a user's data instead, matching files by name, and writes
the upstream checkpoint layout plus this project's metadata; ``--init`` fine-tunes a checkpoint.
"""

from __future__ import annotations

import math
import os
import random
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .checkpoint import MAX_CLASSES, save_checkpoint
from .errors import InputError
from .image import PERCENTILES, apply_preprocess
from .model import OutConv, UNet
from .synthetic import CLASS_NAMES, generate

PREPROCESS = {"mode": "percentile", "low": PERCENTILES[0], "high": PERCENTILES[1]}
DEFAULT_RECIPE = {
    "width": 16,
    "bilinear": True,
    "steps": 4000,
    "batch": 8,
    "patch": 128,
    "lr": 2e-3,
    "n_train": 320,
    "n_val": 16,
    "seed": 0,
    "class_weights": [1.0, 1.0, 2.5],
    "artefacts": False,
    "zoom": 0.0,  # the share of crops resized by x0.5-x2
}
# A candidate recipe, not the shipped one yet: the generator's real-stain artefacts (cytoplasmic
# signal, micronuclei, debris, saturation... see synthetic._Artefacts) on more images.
ARTEFACTS_RECIPE = {"artefacts": True, "n_train": 480}
# A second candidate: the shipped recipe's 320 plain images plus 160 with artefacts, so the model keeps
# seeing clean widefield fields as often as it sees artefacts' look-alikes of them.
MIXED_RECIPE = {"artefacts": 1 / 3, "n_train": 480}
# The shipped model: the plain recipe above, then this fine-tuning stage from it (train_bundled).
# Its own batch order (seed 1) over the plain recipe's images (data_seed 0) and 160 more with artefacts.
FINETUNE_RECIPE = {
    "steps": 1500,
    "lr": 5e-4,
    "artefacts": 1 / 3,
    "n_train": 480,
    "zoom": 0.3,
    "seed": 1,
    "data_seed": 0,
}
_VAL_SEED_OFFSET = 1_000_000


def _normalise(img: np.ndarray) -> np.ndarray:
    return apply_preprocess(img.astype(np.float32)[None], dict(PREPROCESS))[0]


def synthetic_set(
    n: int, seed: int, shape=(256, 256), artefacts: bool | float = False
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """``n`` samples from seeds ``seed``...; ``artefacts`` (a fraction; True = all) switches the generator's
    real-stain artefacts on for the last images, so a mixed set keeps the plain set's first images."""
    n_artefacts = round(float(artefacts) * n)
    samples = [generate(seed + i, shape, artefacts=i >= n - n_artefacts) for i in range(n)]
    return [_normalise(s.image) for s in samples], [s.classes.astype(np.int64) for s in samples]


def folder_set(images: Path, masks: Path) -> tuple[list[np.ndarray], list[np.ndarray], list]:
    """Images and masks matched by file stem; mask values become classes in sorted order, as upstream."""
    from .io import read_image

    for what, folder in (("--images", images), ("--masks", masks)):
        if not Path(folder).is_dir():
            raise InputError(f"{what} {folder} is not a folder; give the folder that holds the files.")
    pairs = []
    mask_files = {p.stem.removesuffix("_mask"): p for p in sorted(Path(masks).iterdir()) if p.is_file()}
    for p in sorted(Path(images).iterdir()):
        if p.is_file() and p.stem in mask_files:
            pairs.append((p, mask_files[p.stem]))
    if not pairs:
        raise InputError(f"No image in {images} has a mask of the same name in {masks}.")
    imgs, raw_masks, values = [], [], set()
    for ip, mp in pairs:
        img = read_image(ip)[0]
        if img.ndim == 3:
            img = img.mean(-1)
        m = read_image(mp)[0]
        if m.ndim == 3:
            m = m[..., 0]
        if m.shape != img.shape:
            raise InputError(f"Mask {mp} has shape {m.shape}, but its image {ip} has {img.shape}.")
        values.update(_class_values(m, mp))
        if len(values) > MAX_CLASSES:
            raise InputError(
                f"The masks hold more than {MAX_CLASSES} different values (counting up to {mp}): a mask holds one "
                "value per class (e.g. 0 background, 255 nucleus). Instance labels or images are not masks; "
                "turn instance labels into one class with labels > 0."
            )
        imgs.append(_normalise(img))
        raw_masks.append(m)
    if len(values) < 2:
        raise InputError(
            f"Every mask in {masks} holds only the value {values.pop()}: there is nothing to learn. The masks "
            "must mark objects with a value other than the background's."
        )
    mask_values = sorted(values)
    # Every mask value is in mask_values, so its sorted position is its class index.
    masks_idx = [np.searchsorted(mask_values, m).astype(np.int64) for m in raw_masks]
    return imgs, masks_idx, mask_values


def _class_values(mask: np.ndarray, path: Path) -> set[int]:
    """The integer values of one mask; refuse fractions, NaN and non-numeric data."""
    if mask.dtype.kind not in "biuf":
        raise InputError(f"Mask {path} holds {mask.dtype} data; masks hold integer class values.")
    found = np.unique(mask)
    whole = np.isfinite(found) & (found == np.round(found)) if mask.dtype.kind == "f" else np.ones(len(found), bool)
    if not whole.all():
        odd = found[~whole][0]
        raise InputError(
            f"Mask {path} holds fractional or non-finite values (e.g. {odd}): a mask holds one integer value per "
            "class. Is it a probability map? Threshold it and save it as 8- or 16-bit integers."
        )
    return {int(v) for v in found}


def check_destination(out: Path, *inputs: Path | None) -> None:
    """Refuse a checkpoint path that cannot be written, before any training time is spent."""
    if out.is_dir():
        raise InputError(f"{out} is a folder; give the checkpoint's file name, e.g. {out / 'model.pth'}.")
    if not out.parent.is_dir():
        raise InputError(f"Cannot save to {out}: the folder {out.parent} does not exist; create it first.")
    if not os.access(out.parent, os.W_OK | os.X_OK):
        raise InputError(f"Cannot save to {out}: the folder {out.parent} is not writable by you.")
    for folder in inputs:
        if folder is not None and out.exists() and out.resolve().parent == Path(folder).resolve():
            raise InputError(f"Cannot save to {out}: it would overwrite a file in {folder}; save it elsewhere.")


def _batch(rng: random.Random, imgs, masks, size: int, n: int, zoom: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` random crops with flips, rotations and contrast jitter; ``zoom`` of them resized by ×0.5-×2 (so
    the model sees each pixel size, and the smooth look of interpolated images)."""
    xs, ys = [], []
    for _ in range(n):
        factor = math.exp(rng.uniform(-math.log(2), math.log(2))) if zoom and rng.random() < zoom else 1.0
        x, y = _crop(rng, imgs, masks, max(8, round(size / factor)))
        xs.append(_resized(torch.from_numpy(x), size, "bilinear"))
        ys.append(_resized(torch.from_numpy(y), size, "nearest"))
    return torch.stack(xs)[:, None].float(), torch.stack(ys).long()


def _resized(a: torch.Tensor, size: int, mode: str) -> torch.Tensor:
    if a.shape[-1] == size:
        return a
    smaller = a.shape[-1] > size
    out = F.interpolate(a[None, None].float(), size=(size, size), mode=mode, antialias=smaller and mode != "nearest")
    return out[0, 0].to(a.dtype)


def _crop(rng: random.Random, imgs, masks, size: int) -> tuple[np.ndarray, np.ndarray]:
    i = rng.randrange(len(imgs))
    img, m = imgs[i], masks[i]
    if min(img.shape) < size:
        pad = [(0, max(0, size - img.shape[0])), (0, max(0, size - img.shape[1]))]
        img, m = np.pad(img, pad, mode="reflect"), np.pad(m, pad)
    y0 = rng.randrange(img.shape[0] - size + 1)
    x0 = rng.randrange(img.shape[1] - size + 1)
    pi, pm = img[y0 : y0 + size, x0 : x0 + size], m[y0 : y0 + size, x0 : x0 + size]
    k = rng.randrange(4)
    pi, pm = np.rot90(pi, k), np.rot90(pm, k)
    if rng.random() < 0.5:
        pi, pm = pi[:, ::-1], pm[:, ::-1]
    # Percentiles differ between images: teach the model a range of contrast around them.
    pi = np.clip(pi, -0.2, None) * rng.uniform(0.6, 1.4) + rng.uniform(-0.1, 0.1)
    return np.ascontiguousarray(pi, dtype=np.float32), np.ascontiguousarray(pm)


def _load_start(init: str | Path | None) -> UNet | None:
    if init is None:
        return None
    from .checkpoint import load_model

    start = load_model(None if str(init) == "bundled" else init, device="cpu")
    if start.n_channels != 1:
        raise InputError(
            f"{init} takes {start.n_channels} input channels; training here feeds one. "
            "Fine-tune a one-channel checkpoint, or train from scratch (leave out --init)."
        )
    return start


def _from_start(start: UNet, n_classes: int) -> UNet:
    """The starting network, with a new output layer when the data have other classes than it."""
    if start.n_classes != n_classes:
        start.outc = OutConv(start.outc.conv.in_channels, n_classes)
        start.n_classes = n_classes
    return start.train()


def foreground_iou(pred: np.ndarray, truth: np.ndarray) -> float:
    p, t = pred > 0, truth > 0
    union = (p | t).sum()
    return float((p & t).sum() / union) if union else 1.0


@torch.no_grad()
def validate(net: UNet, imgs, masks) -> dict:
    net.eval()
    ious, accs = [], []
    for img, m in zip(imgs, masks, strict=True):
        pred = net(torch.from_numpy(img)[None, None]).argmax(1)[0].numpy()
        ious.append(foreground_iou(pred, m))
        accs.append(float((pred == m).mean()))
    net.train()
    return {"foreground_iou": round(float(np.mean(ious)), 4), "pixel_accuracy": round(float(np.mean(accs)), 4)}


def _progress_line(step: int, total: int, loss: float, t0: float, extra: str = "") -> None:
    done = step / total
    bar = "#" * int(30 * done)
    eta = (time.perf_counter() - t0) / max(done, 1e-9) * (1 - done)
    sys.stderr.write(f"\r[{bar:<30}] {step}/{total} loss {loss:.3f} eta {eta:4.0f}s {extra}")
    sys.stderr.flush()


def train(
    out: str | Path,
    *,
    images: str | Path | None = None,
    masks: str | Path | None = None,
    steps: int | None = None,
    seed: int | None = None,
    width: int | None = None,
    threads: int | None = None,
    init: str | Path | None = None,
    log: Callable[[str], None] | None = print,
    **overrides,
) -> dict:
    """Train and save a checkpoint at ``out``; return the training record stored in it.

    ``init``: start from this checkpoint's weights (fine-tuning) instead of random ones; its width
    and up-sampling replace the recipe's, and its output layer is made anew when the data have other
    classes.
    """
    out = Path(out)
    check_destination(out, *(Path(p) for p in (images, masks) if p is not None))
    start = _load_start(init)
    if start is not None:
        overrides.update(width=start.width, bilinear=start.bilinear)
        width = None
    recipe = dict(DEFAULT_RECIPE, **overrides)
    for key, val in (("steps", steps), ("seed", seed), ("width", width)):
        if val is not None:
            recipe[key] = val
    if recipe["steps"] < 1:
        raise InputError(f"--steps must be at least 1, not {recipe['steps']}.")
    if not recipe["lr"] > 0:
        raise InputError(f"--lr must be a positive learning rate such as 5e-4, not {recipe['lr']}.")
    torch.manual_seed(recipe["seed"])
    rng = random.Random(recipe["seed"])
    if threads:
        torch.set_num_threads(threads)
    extra_val = None  # a second validation set, scored apart
    if images is not None or masks is not None:
        if images is None or masks is None:
            raise InputError("Training on your own data needs both --images and --masks folders.")
        all_imgs, all_masks, mask_values = folder_set(Path(images), Path(masks))
        n_val = max(1, len(all_imgs) // 10) if len(all_imgs) > 1 else 0
        tr_i, tr_m = all_imgs[n_val:] or all_imgs, all_masks[n_val:] or all_masks
        va_i, va_m = all_imgs[:n_val] or all_imgs, all_masks[:n_val] or all_masks
        class_names = ["background"] + [f"class {v}" for v in mask_values[1:]]
        source = {"images": str(images), "masks": str(masks), "n_images": len(all_imgs)}
    else:
        data_seed = recipe.get("data_seed", recipe["seed"])
        tr_i, tr_m = synthetic_set(recipe["n_train"], data_seed, artefacts=recipe["artefacts"])
        val_seed = data_seed + _VAL_SEED_OFFSET
        va_i, va_m = synthetic_set(recipe["n_val"], val_seed, artefacts=float(recipe["artefacts"]) >= 1)
        if 0 < recipe["artefacts"] < 1:  # a mixed recipe is judged on plain and on artefact images apart
            extra_val = synthetic_set(recipe["n_val"], val_seed, artefacts=True)
        mask_values, class_names = [0, 1, 2], list(CLASS_NAMES)
        source = {
            "synthetic": "napari_unet_gradcam.synthetic.generate",
            "n_train": recipe["n_train"],
            "artefacts": recipe["artefacts"],
        }
    n_classes = len(mask_values)
    if start is None:
        net = UNet(1, n_classes, bilinear=recipe["bilinear"], width=recipe["width"])
    else:
        new_head = start.n_classes != n_classes
        recipe["init"] = {"path": str(init), "sha256": start.checkpoint_sha256, "new_head": new_head}
        net = _from_start(start, n_classes)
    weights = torch.tensor((recipe["class_weights"] + [1.0] * n_classes)[:n_classes])
    opt = torch.optim.AdamW(net.parameters(), lr=recipe["lr"], weight_decay=1e-4)
    total = recipe["steps"]
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=recipe["lr"], total_steps=total, pct_start=0.1)
    history = []
    t0 = time.perf_counter()
    net.train()
    epoch_len = max(1, total // 8)
    for step in range(1, total + 1):
        x, y = _batch(rng, tr_i, tr_m, recipe["patch"], recipe["batch"], recipe["zoom"])
        logits = net(x)
        loss = F.cross_entropy(logits, y, weight=weights)
        probs = logits.softmax(1)
        fg_p, fg_t = 1 - probs[:, 0], (y > 0).float()
        dice = 1 - (2 * (fg_p * fg_t).sum() + 1) / (fg_p.sum() + fg_t.sum() + 1)
        opt.zero_grad(set_to_none=True)
        (loss + dice).backward()
        opt.step()
        sched.step()
        if log:
            _progress_line(step, total, loss.detach().item(), t0)
        if step % epoch_len == 0 or step == total:
            score = validate(net, va_i, va_m)
            if extra_val is not None:
                score["artefacts"] = validate(net, *extra_val)
            history.append({"step": step, "loss": round(loss.detach().item(), 4), **score})
            if log:
                sys.stderr.write("\n")
                log(f"epoch {len(history)}: step {step}, validation {score}")
    net.eval()
    record = {
        "recipe": recipe,
        "source": source,
        "history": history,
        "seconds": round(time.perf_counter() - t0, 1),
        "torch": str(torch.__version__),
    }
    save_checkpoint(net, out, mask_values=mask_values, class_names=class_names, preprocess=PREPROCESS, training=record)
    return record


def train_bundled(
    out: str | Path,
    *,
    plain: str | Path | None = None,
    threads: int | None = None,
    log: Callable[[str], None] | None = print,
) -> dict:
    """Reproduce the bundled weights: the plain recipe, then FINETUNE_RECIPE from its result.

    ``plain``: the plain stage's weights, to run the second stage only (the shipped file's record
    names the sha256 of the plain weights it started from).
    """
    out = Path(out)
    check_destination(out)
    if plain is not None:
        return train(out, init=plain, threads=threads, log=log, **FINETUNE_RECIPE)
    with tempfile.TemporaryDirectory() as tmp:
        plain = Path(tmp) / "plain.pth"
        if log:
            log("Stage 1 of 2: the plain recipe")
        train(plain, threads=threads, log=log)
        if log:
            log("Stage 2 of 2: fine-tuning on images with real-stain artefacts and zoomed crops")
        return train(out, init=plain, threads=threads, log=log, **FINETUNE_RECIPE)
