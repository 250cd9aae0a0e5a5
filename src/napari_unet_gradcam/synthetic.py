"""Synthetic fluorescence-nuclei images with ground truth, deterministic by seed.

What a widefield or confocal DAPI/Hoechst image holds: nuclei of varied size, shape and
brightness, in clusters that touch, with chromatin texture and nucleoli; some out of focus; an
uneven background; Poisson-Gaussian noise; stored as 8- or 16-bit. The labels are semantic
(background, nucleus, nucleus boundary) so touching nuclei can be told apart.

``artefacts=True`` adds what real DNA stains from other labs show (see ``_Artefacts``); the bundled
model is trained with it. Its random draws come from a second stream, so the plain samples (napari's
sample data, the tests) stay the same for a seed.
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


class _Artefacts:
    """What real DNA stains show beyond clean nuclei, each switched on per image at random.

    Dome-shaped nuclei (a thick nucleus is dim at its rim, which annotators still count as nucleus),
    coarse chromatin domains (dim patches inside nuclei, still nucleus), dim cytoplasmic signal
    around each nucleus (bleed-through, autofluorescence; background), micronuclei beside nuclei
    (labelled nucleus), debris specks and fibres (background), uneven illumination, strong
    out-of-focus haze and detector saturation.
    """

    def __init__(self, seed: int, h: int, w: int):
        self.rng = rng = np.random.default_rng([seed, 18])
        self.radius_mean = float(np.exp(rng.uniform(np.log(4), np.log(36))))  # 10x to 60x objectives
        self.dome = rng.uniform(0.15, 0.7) if rng.random() < 0.6 else None
        # Up to ~0.4x a typical nucleus: brighter cell bodies look like the dim nuclei next to bright
        # ones in real fields, and a model taught they are background drops those nuclei.
        self.cytoplasm = rng.uniform(0.05, 0.3) if rng.random() < 0.4 else None
        self.micronuclei = int(rng.integers(1, 8)) if rng.random() < 0.35 else 0
        self.debris = int(rng.integers(2, 15)) if rng.random() < 0.3 else 0
        self.vignette = rng.uniform(0.2, 0.6) if rng.random() < 0.4 else 0.0
        self.haze = rng.uniform(0.05, 0.4) if rng.random() < 0.4 else 0.0
        self.saturate = rng.uniform(1.2, 3.0) if rng.random() < 0.2 else 1.0
        # Chromatin domains: large nuclei hold dim patches down to about a third of their brightness.
        # Without them, a model taught that dim textured cell bodies are background cuts holes into
        # the dim parts of 40x nuclei (Cell Tracking Challenge CHO nuclei, stop 23).
        self.chromatin = rng.uniform(0.3, 0.9) if rng.random() < 0.5 else 0.0
        self.h, self.w = h, w

    def shade(self, mask: np.ndarray, r: float) -> np.ndarray:
        """A nucleus' thickness profile: flat to a dome, dim at the rim."""
        if self.dome is None:
            return np.ones(mask.shape, np.float32)
        d = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1] / max(r, 1.0)
        thick = np.sqrt(1 - np.clip(1 - d, 0, 1) ** 2)
        return (self.dome + (1 - self.dome) * thick).astype(np.float32)

    def domains(self, mask: np.ndarray, r: float) -> np.ndarray:
        """Coarse chromatin texture, on the scale of a quarter of the nucleus."""
        if not self.chromatin:
            return np.ones(mask.shape, np.float32)
        coarse = _smooth_noise(self.rng, mask.shape, max(1.5, r / 4))
        return np.clip(1 + 0.5 * self.chromatin * coarse, 0.3, 1.8).astype(np.float32)

    def cells(self, instances: np.ndarray, signal: np.ndarray) -> np.ndarray:
        """Dim, textured cell bodies around the nuclei (label: background)."""
        if self.cytoplasm is None or not instances.any():
            return np.zeros(instances.shape, np.float32)
        rng = self.rng
        dist, idx = ndimage.distance_transform_edt(instances == 0, return_indices=True)
        owner = instances[idx[0], idx[1]]
        reach = self.radius_mean * rng.uniform(0.5, 1.6) * (1 + 0.35 * _smooth_noise(rng, instances.shape, 6))
        body = (dist > 0) & (dist < reach)
        level = np.clip(rng.lognormal(0, 0.3, int(instances.max()) + 1), 0.5, 1.3).astype(np.float32)
        tex = 1 + rng.uniform(0.1, 0.5) * _smooth_noise(rng, instances.shape, rng.uniform(1, 3))
        fg = signal[instances > 0]
        ref = float(np.median(fg)) if fg.size else 1.0
        return _blur(body * level[owner] * tex * self.cytoplasm * ref, 1.0).clip(0, None).astype(np.float32)

    def add_micronuclei(self, instances: np.ndarray, signal: np.ndarray) -> None:
        """Small round nuclei a few pixels beside a nucleus; they are nuclei in the labels."""
        rng, label = self.rng, int(instances.max())
        if not label:
            return
        dist = ndimage.distance_transform_edt(instances == 0)
        ys, xs = np.nonzero((dist > 2) & (dist < 3 + 0.4 * self.radius_mean))
        ref = float(np.median(signal[instances > 0]))
        for _ in range(min(self.micronuclei, len(ys))):
            k = rng.integers(len(ys))
            r = float(np.clip(self.radius_mean * rng.uniform(0.12, 0.3), 1.5, 5))
            spot = np.zeros(instances.shape, np.float32)
            _disk(spot, (int(ys[k]), int(xs[k])), round(r), 1.0)
            spot = (spot > 0) & (instances == 0)
            if spot.any():
                label += 1
                instances[spot] = label
                signal[spot] = ref * rng.uniform(0.7, 1.5)

    def add_debris(self, signal: np.ndarray) -> None:
        """Sharp bright specks and thin fibres: dust and precipitate, not nuclei."""
        rng, h, w = self.rng, self.h, self.w
        ref = float(signal.max()) or 1.0
        dots = np.zeros(signal.shape, np.float32)
        for _ in range(self.debris):
            y, x = int(rng.integers(h)), int(rng.integers(w))
            if rng.random() < 0.6:
                dots[y, x] = ref * rng.uniform(3, 12)
            else:
                n = int(rng.integers(10, 50))
                angle = np.cumsum(rng.normal(0, 0.15, n)) + rng.uniform(0, 2 * np.pi)
                py = np.clip(y + np.cumsum(np.sin(angle)), 0, h - 1).astype(int)
                px = np.clip(x + np.cumsum(np.cos(angle)), 0, w - 1).astype(int)
                dots[py, px] = ref * rng.uniform(0.3, 1.0)
        signal += _blur(dots, 0.6)

    def illumination(self) -> np.ndarray:
        if not self.vignette:
            return np.ones((self.h, self.w), np.float32)
        rng = self.rng
        yy, xx = np.mgrid[: self.h, : self.w].astype(np.float32)
        cy, cx = rng.uniform(-0.3, 1.3) * self.h, rng.uniform(-0.3, 1.3) * self.w
        d2 = ((yy - cy) ** 2 + (xx - cx) ** 2) / float(self.h**2 + self.w**2)
        return np.clip(1 - self.vignette * 2 * d2, 0.2, 1)


def generate(seed: int, shape: tuple[int, int] = (256, 256), artefacts: bool = False) -> Sample:
    """One image and its labels; the same seed always gives the same sample."""
    rng = np.random.default_rng(seed)
    h, w = shape
    radius_mean = rng.uniform(5, 24)  # pixel size varies between microscopes and objectives
    extra = _Artefacts(seed, h, w) if artefacts else None
    if extra is not None:
        radius_mean = extra.radius_mean
    density = rng.uniform(0.15, 0.75)  # fraction of the area the nuclei would cover
    n = int(density * h * w / (np.pi * radius_mean**2))
    n_clusters = max(1, int(rng.integers(1, 6)))
    centres = rng.uniform(0, 1, (n_clusters, 2)) * (h, w)
    clustered = rng.uniform(0.2, 0.9)
    instances = np.zeros(shape, np.int32)
    signal = np.zeros(shape, np.float32)
    label = 0
    for _ in range(n):
        r = float(np.clip(rng.normal(radius_mean, radius_mean * 0.2), 3, 30 if extra is None else 45))
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
        if extra is not None:
            patch *= extra.shade(m, r) * extra.domains(m, r)
        if rng.random() < 0.25:  # out of the focal plane
            patch = _blur(patch, rng.uniform(1.0, 3.0))
        signal[ys, xs] = np.where(m, patch, np.maximum(signal[ys, xs], patch))
    if extra is not None:
        if extra.micronuclei:
            extra.add_micronuclei(instances, signal)
        signal += extra.cells(instances, signal)
        if extra.debris:
            extra.add_debris(signal)
    signal = _blur(np.clip(signal, 0, None), rng.uniform(0.5, 1.5))
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    gradient = (rng.uniform(-1, 1) * yy / h + rng.uniform(-1, 1) * xx / w) * rng.uniform(0, 0.15)
    background = rng.uniform(0.02, 0.25) + gradient + 0.05 * rng.uniform(0, 1) * _smooth_noise(rng, shape, 20)
    clean = np.clip(signal + np.clip(background, 0, None) + 0.08 * rng.random() * _blur(signal, 8), 0, None)
    if extra is not None:
        if extra.haze:
            clean += extra.haze * _blur(signal, extra.rng.uniform(4, 15))
        clean *= extra.illumination()
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
    gain = 0.9 * (extra.saturate if extra is not None else 1.0)  # above 1: the brightest nuclei saturate
    image = np.clip(offset + noisy / max(float(np.percentile(noisy, 99.9)), 1e-3) * (top - offset) * gain, 0, top)
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
