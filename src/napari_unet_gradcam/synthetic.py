"""Synthetic fluorescence-nuclei images with ground truth, deterministic by seed.

What a widefield or confocal DAPI/Hoechst image holds: nuclei of varied size, shape and
brightness, in clusters that touch, with chromatin texture and nucleoli; some out of focus; an
uneven background; Poisson-Gaussian noise; stored as 8- or 16-bit. The labels are semantic
(background, nucleus, nucleus boundary) so touching nuclei can be told apart.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

CLASS_NAMES = ("background", "nucleus", "boundary")


@dataclass
class Sample:
    image: np.ndarray  # (Y, X) uint8 or uint16
    instances: np.ndarray  # (Y, X) int32, 0 = background
    classes: np.ndarray  # (Y, X) uint8: 0 background, 1 nucleus, 2 boundary


def _blur(a: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur with OpenCV's kernel radius and border, so samples match those made with OpenCV."""
    radius = (round(8 * sigma + 1) | 1) // 2
    return ndimage.gaussian_filter(a, sigma, mode="mirror", radius=radius)


def _disk(a: np.ndarray, centre: tuple[int, int], radius: int, value: float) -> None:
    """Fill the pixels within ``radius`` of ``centre`` (y, x), clipped to the array."""
    yy, xx = np.ogrid[: a.shape[0], : a.shape[1]]
    a[(yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2] = value


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    n = _blur(rng.standard_normal(shape).astype(np.float32), sigma)
    return n / (n.std() + 1e-6)


def _nucleus_mask(rng: np.random.Generator, radius: float) -> np.ndarray:
    """A filled, slightly irregular ellipse in a square patch."""
    ry = radius * rng.uniform(0.7, 1.0)
    rx = radius * rng.uniform(0.9, 1.3)
    angle = rng.uniform(0, np.pi)
    size = int(np.ceil(2 * max(rx, ry) + 6)) | 1
    c = size // 2
    yy, xx = np.mgrid[:size, :size].astype(np.float32) - c
    ca, sa = np.cos(angle), np.sin(angle)
    u, v = ca * xx + sa * yy, -sa * xx + ca * yy
    theta = np.arctan2(v, u)
    wobble = 1 + sum(rng.uniform(0, 0.06) * np.cos(k * theta + rng.uniform(0, 2 * np.pi)) for k in (2, 3, 5))
    return (u / rx) ** 2 + (v / ry) ** 2 <= wobble**2


def _boundaries(instances: np.ndarray, width: int) -> np.ndarray:
    """Pixels of a nucleus that touch background or another nucleus."""
    size = 2 * width + 1
    hi = ndimage.maximum_filter(instances, size=size, mode="nearest")
    lo = ndimage.minimum_filter(instances, size=size, mode="nearest")
    return (instances > 0) & ((hi != instances) | (lo != instances))


def generate(seed: int, shape: tuple[int, int] = (256, 256)) -> Sample:
    """One image and its labels; the same seed always gives the same sample."""
    rng = np.random.default_rng(seed)
    h, w = shape
    radius_mean = rng.uniform(5, 24)  # pixel size varies between microscopes and objectives
    density = rng.uniform(0.15, 0.75)  # fraction of the area the nuclei would cover
    n = int(density * h * w / (np.pi * radius_mean**2))
    n_clusters = max(1, int(rng.integers(1, 6)))
    centres = rng.uniform(0, 1, (n_clusters, 2)) * (h, w)
    clustered = rng.uniform(0.2, 0.9)
    instances = np.zeros(shape, np.int32)
    signal = np.zeros(shape, np.float32)
    label = 0
    for _ in range(n):
        r = float(np.clip(rng.normal(radius_mean, radius_mean * 0.2), 3, 30))
        mitotic = rng.random() < 0.05  # condensed chromatin: small and far brighter than the rest
        if mitotic:
            r *= 0.6
        mask = _nucleus_mask(rng, r)
        if rng.random() < clustered:
            cy, cx = centres[rng.integers(n_clusters)] + rng.normal(0, 3 * radius_mean, 2)
        else:
            cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        s = mask.shape[0]
        y0, x0 = int(cy) - s // 2, int(cx) - s // 2
        ys, xs = slice(max(0, y0), min(h, y0 + s)), slice(max(0, x0), min(w, x0 + s))
        if ys.stop <= ys.start or xs.stop <= xs.start:
            continue
        m = mask[ys.start - y0 : ys.stop - y0, xs.start - x0 : xs.stop - x0]
        if m.size == 0 or not m.any():
            continue
        # Nuclei push each other aside: skip one that would mostly cover nuclei already there.
        if (instances[ys, xs][m] > 0).mean() > 0.3:
            continue
        label += 1
        instances[ys, xs][m] = label
        tex = 1 + rng.uniform(0.1, 0.45) * _smooth_noise(rng, m.shape, rng.uniform(0.8, 2.0))
        bright = rng.lognormal(0, 0.35) * (rng.uniform(2.5, 5.0) if mitotic else 1.0)
        nucleoli = np.ones(m.shape, np.float32)
        for _ in range(int(rng.integers(0, 4))):
            py, px = rng.integers(0, m.shape[0]), rng.integers(0, m.shape[1])
            _disk(nucleoli, (int(py), int(px)), max(1, int(r / 5)), float(rng.uniform(0.4, 0.8)))
        patch = (m * tex * nucleoli * bright).astype(np.float32)
        if rng.random() < 0.25:  # out of the focal plane
            patch = _blur(patch, rng.uniform(1.0, 3.0))
        signal[ys, xs] = np.where(m, patch, np.maximum(signal[ys, xs], patch))
    signal = _blur(np.clip(signal, 0, None), rng.uniform(0.5, 1.5))
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    gradient = (rng.uniform(-1, 1) * yy / h + rng.uniform(-1, 1) * xx / w) * rng.uniform(0, 0.15)
    background = rng.uniform(0.02, 0.25) + gradient + 0.05 * rng.uniform(0, 1) * _smooth_noise(rng, shape, 20)
    clean = np.clip(signal + np.clip(background, 0, None) + 0.08 * rng.random() * _blur(signal, 8), 0, None)
    photons = rng.uniform(15, 400)  # signal to noise varies from dim live imaging to bright fixed cells
    noisy = rng.poisson(clean * photons).astype(np.float32) / photons
    noisy += rng.normal(0, rng.uniform(0.005, 0.04), shape).astype(np.float32)
    if rng.random() < 0.3:  # oversampled, interpolated or denoised data: the noise itself is smooth
        noisy = _blur(noisy, rng.uniform(0.6, 1.6))
    if rng.random() < 0.5:
        top, dtype = rng.uniform(80, 255), np.uint8
    else:
        top, dtype = rng.uniform(1000, 65535), np.uint16
    offset = rng.uniform(0, 0.1) * top
    image = np.clip(offset + noisy / max(float(np.percentile(noisy, 99.9)), 1e-3) * (top - offset) * 0.9, 0, top)
    classes = (instances > 0).astype(np.uint8)
    classes[_boundaries(instances, 1 if radius_mean < 9 else 2)] = 2
    return Sample(image.astype(dtype), instances, classes)


def nuclei_2d(seed: int = 0, shape: tuple[int, int] = (512, 512)) -> np.ndarray:
    return generate(seed, shape).image


def nuclei_3d(seed: int = 0, shape: tuple[int, int, int] = (16, 256, 256)) -> np.ndarray:
    """A z-stack: one field of nuclei whose focus and brightness change with depth, dark at the ends."""
    z = shape[0]
    base = generate(seed, shape[1:])
    planes = []
    rng = np.random.default_rng(seed + 1)
    img = base.image.astype(np.float32)
    for k in range(z):
        depth = abs(k - (z - 1) / 2) / max(1.0, (z - 1) / 2)
        blurred = _blur(img, 0.5 + 3 * depth)
        plane = blurred * (1 - 0.8 * depth) + rng.normal(0, 0.01 * img.max(), img.shape)
        planes.append(np.clip(plane, 0, None))
    return np.stack(planes).astype(base.image.dtype)
