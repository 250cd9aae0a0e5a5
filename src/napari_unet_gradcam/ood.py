"""Does an image look unlike what the bundled nuclei model was trained on? Plain sentences, not errors.

The bundled model learnt from synthetic fluorescence nuclei (dark background, bright nuclei of 5-24
px mean radius, see docs/model-card.md). On images far from that its labels can look confident and
still be meaningless, so :func:`check_image` looks at the image and at the labels the model made
and says what looks off and what to try. It is a pure function of its inputs: it never changes
them and never raises for odd data; the checks apply only to a model with a ``nucleus`` class.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

# What the shipped model's training data spans (train.DEFAULT_RECIPE), with some margin.
TRAINED_RADIUS = (5, 24)  # synthetic.generate: mean nucleus radius of a field, in pixels
RADIUS_RANGE = (3.5, 40.0)  # blob radius as the network sees it, measured in half-octave steps
_CROP = 1024
MAX_FOREGROUND = 0.75  # the densest training fields cover about 60-70% of the image
MAX_SATURATED = 0.02  # fraction of nucleus pixels at the image's maximum value
MAX_THICK_BOUNDARY = 0.15  # fraction of boundary pixels more than 2 px from anything else
MIN_CONTRAST = 0.12  # nuclei minus background, as a fraction of the image's range
MAX_MEDIAN = 0.5  # fluorescence: the median pixel is background, in the lower part of the range
MIN_SKEW = 3.0  # fluorescence: the bright tail (nuclei) is far longer than the dark one (noise)

_TRY_SCALE = "try scale={:.2g} so nuclei come out near {:.0f} px radius"
_OWN = "or train your own checkpoint on a few annotated images (napari-unet-gradcam train --images --masks)"


def _grey(image: np.ndarray, shape: tuple[int, ...]) -> np.ndarray | None:
    """The image as one channel with the labels' shape (channels averaged); None if it cannot be matched."""
    img = np.asarray(image)
    if img.shape == shape:
        return img.astype(np.float32, copy=False)
    if img.ndim == len(shape) + 1:
        for axis in range(img.ndim):
            if img.shape[:axis] + img.shape[axis + 1 :] == shape:
                return img.astype(np.float32).mean(axis)
    return None


def _blob_radius(plane: np.ndarray) -> float:
    """The radius of the image's dominant bright blobs, from the scale of the strongest Laplacian-of-Gaussian
    response (normalised by sigma squared) over an image pyramid; half-octave steps, from the image alone.
    """
    g = plane[:_CROP, :_CROP].astype(np.float32)  # a crop bounds the time on huge images
    lo, hi = np.percentile(g, (1, 99.5))
    g = np.clip((g - lo) / max(float(hi - lo), 1e-6), 0, 1)
    best, radius, step = -np.inf, 0.0, 1
    while min(g.shape) >= 24:
        for sigma in (2.0, 2.0 * np.sqrt(2)):
            score = float(np.percentile(-(sigma**2) * ndimage.gaussian_laplace(g, sigma), 99))
            if score > best:
                best, radius = score, sigma * step * np.sqrt(2)  # a disk of radius r peaks at sigma = r / sqrt(2)
        h, w = g.shape[0] // 2 * 2, g.shape[1] // 2 * 2
        g = g[:h, :w].reshape(h // 2, 2, w // 2, 2).mean((1, 3))
        step *= 2
    return radius


def check_image(
    image: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str],
    *,
    scale: float = 1.0,
) -> list[str]:
    """Sentences saying how ``image`` looks unlike the nuclei model's training data; [] when nothing does.

    ``labels`` are the model's class indices for ``image`` (``(*stack, Y, X)``); ``image`` has that
    shape, or one more axis of channels. A stack is judged by its middle plane. ``scale`` is the
    resize factor the run used.
    """
    names = [str(n).lower() for n in class_names]
    if "nucleus" not in names:
        return []
    boundary = names.index("boundary") if "boundary" in names else None
    labels = np.asarray(labels)
    if labels.ndim > 2 and np.shape(image)[: labels.ndim - 2] == labels.shape[:-2]:
        # A stack: its middle plane stands for it, which bounds the time and memory on large stacks.
        mid = np.unravel_index(labels[..., 0, 0].size // 2, labels.shape[:-2])
        image, labels = image[mid], labels[mid]
    grey = _grey(image, labels.shape)
    out: list[str] = []
    if grey is None or grey.size == 0 or not np.isfinite(grey).all():
        return out
    fg = labels > 0
    p_lo, p_mid, p_hi = (float(v) for v in np.percentile(grey, (0.2, 50, 99.8)))
    span = max(p_hi - p_lo, 1e-6)
    top = float(grey.max())
    saturated = 0.0
    if fg.any() and top > p_lo:
        saturated = float(np.mean(grey[fg] >= top))
        if saturated > MAX_SATURATED:
            out.append(
                f"{saturated:.0%} of the pixels labelled nucleus are saturated (at the image's maximum, {top:g}): "
                "touching nuclei may merge and outlines spread into the cell. Record with less exposure or gain "
                "if you can, and check the outlines by eye."
            )
    if (p_mid - p_lo) / span > MAX_MEDIAN:
        out.append(
            "Most of the image is bright, unlike fluorescence (dark background, bright nuclei): brightfield, "
            "stained (H&E, IHC) or inverted images give meaningless labels with this model. Use the fluorescence "
            f"channel of a DNA stain (DAPI, Hoechst), invert an inverted image, {_OWN}."
        )
    elif (p_hi - p_mid) < MIN_SKEW * (p_mid - p_lo) and saturated <= MAX_SATURATED:  # clipping shortens the tail
        out.append(
            "The image has no clear dark background with bright nuclei (its histogram is nearly symmetric): "
            "typical of an out-of-focus plane of a stack, a non-fluorescence image (phase contrast, electron "
            "microscopy) or a field packed with nuclei. Check the labels by eye; use an in-focus plane or the "
            f"fluorescence channel of a DNA stain, {_OWN}."
        )
    if fg.any() and (~fg).any():
        contrast = (float(np.median(grey[fg])) - float(np.median(grey[~fg]))) / span
        if contrast < MIN_CONTRAST:
            out.append(
                "The pixels labelled nucleus are hardly brighter than the rest "
                f"({contrast:.0%} of the image's range): the labels may follow blur, haze or noise, as in an "
                "out-of-focus plane of a stack. Check another plane or channel, or the image's contrast."
            )
    fraction = float(fg.mean())
    if fraction > MAX_FOREGROUND:
        out.append(
            f"{fraction:.0%} of the image is labelled nucleus, more than nuclei cover in the training data: the "
            "model may take cell bodies, cytoplasmic signal or background for nuclei. Check that this is the DNA "
            f"channel, {_TRY_SCALE.format(0.5 * scale, 15)} if the nuclei are large, {_OWN}."
        )
    if boundary is not None:
        edge = labels == boundary
        if edge.sum() > 200:
            thick = float(ndimage.binary_erosion(edge, np.ones((5, 5), bool)).sum() / edge.sum())
            if thick > MAX_THICK_BOUNDARY:
                out.append(
                    f"The boundary class forms bands wider than the 1-2 px it was trained on ({thick:.0%} of it is "
                    "thick): typical of saturated or very large nuclei. "
                    f"{_TRY_SCALE.format(0.5 * scale, 15).capitalize()}, or use a less saturated image."
                )
    r = _blob_radius(grey) * scale
    if r and r < RADIUS_RANGE[0]:
        out.append(
            f"The nuclei look tiny (about {r:.1f} px radius as the model sees them; it was trained on "
            f"{TRAINED_RADIUS[0]}-{TRAINED_RADIUS[1]} px): they may be too small to outline. "
            f"{_TRY_SCALE.format(scale * 8 / r, 8).capitalize()}."
        )
    elif r > RADIUS_RANGE[1]:
        out.append(
            f"The nuclei look very large (about {r:.0f} px radius as the model sees them; it was trained on "
            f"{TRAINED_RADIUS[0]}-{TRAINED_RADIUS[1]} px), so the model may split them along their texture. "
            f"{_TRY_SCALE.format(scale * 15 / r, 15).capitalize()}."
        )
    return out
