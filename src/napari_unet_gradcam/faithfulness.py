"""How far to trust each map: deletion and insertion curves, and the cascading randomisation check.

For every (layer, class) map of an :class:`~napari_unet_gradcam.ExplainResult`:

* **Deletion**: the map's top-k% pixels are replaced by a baseline (a blurred copy of the image,
  or its mean) and the class's Seg-Grad-CAM score (its logits summed over the target region,
  fixed from the unperturbed prediction) is recorded for a few k. A map that finds what the
  network uses makes the score fall fast: a low area under the curve.
* **Insertion**: start from the baseline and put the top-k% pixels back: the score should rise
  fast, a high area.
* Both again in a seeded random pixel order, so an area can be read against chance.
* **Cascading randomisation** (Adebayo et al., *Sanity Checks for Saliency Maps*, NeurIPS 2018):
  a copy of the network has its modules from the output down to the explained layer
  re-initialised, the map is computed again with :func:`explain`, and its Spearman rank
  correlation with the original map is reported; a map that barely changes explains nothing
  about the trained weights.

Perturbed images need forward passes only (no backward), on a private channels-last, BatchNorm-folded
copy of the network; on an accelerator several fractions go through it in one batch (a CPU is no
faster per image in batches); the random order is shared by all maps, and maps that rank pixels
identically (e.g. Eigen-CAM's, the same for every class) share their passes. Randomisation takes one
randomised copy per layer: one forward pass, one backward pass per class. Definitions, biases and
measured values: docs/faithfulness.md.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from scipy import ndimage, stats
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from .engine import explain_tensor, map_to_input, model_lock
from .errors import InputError
from .image import network_size, pad_to, prepare
from .methods import get_method
from .pipeline import ExplainResult, progress_steps

ProgressCallback = Callable[[int, int], None]
#: Fractions of the pixels removed (deletion) or put back (insertion), 0 and 1 included: dense where
#: the curves bend (the first tenth), sparse where they flatten out.
DEFAULT_STEPS = (0.0, 0.05, 0.1, 0.2, 0.4, 0.8, 1.0)
#: A coarser curve at about a third of the cost: two intermediate points instead of six.
QUICK_STEPS = (0.0, 0.1, 0.3, 1.0)
BASELINES = ("blur", "mean")
#: Gaussian sigma of the "blur" baseline, in the network's pixels: about a nucleus radius
#: of the bundled model's training data (5-24 px), so a blurred nucleus loses its edges.
DEFAULT_BLUR_SIGMA = 10.0
SUMMARY_COLUMNS = (
    "map",
    "deletion AUC",
    "insertion AUC",
    "deletion vs random",
    "insertion vs random",
    "randomisation rho",
)
#: Below this random-order area a ratio would only amplify noise: it is reported as NaN.
MIN_RANDOM_AUC = 0.05
_BATCH_BYTES = 1 << 30  # activations of one batch of perturbed images on an accelerator, roughly


@dataclass
class MapCheck:
    """The checks of one (layer, class) map; curves are sampled at :attr:`MapChecks.steps`.

    Scores are normalised as ``(S - S_baseline) / (S_image - S_baseline)``: 1 for the unperturbed
    image, 0 for the all-baseline image. Deletion: lower AUC is better; insertion: higher.
    ``*_vs_random`` divide by the random order's AUC (NaN where that is below ``MIN_RANDOM_AUC``);
    ``randomisation_rho`` is NaN where randomisation was off or a map was constant.
    """

    layer: str
    class_index: int
    class_name: str
    deletion: list[float]
    insertion: list[float]
    deletion_auc: float
    insertion_auc: float
    deletion_auc_random: float
    insertion_auc_random: float
    deletion_vs_random: float
    insertion_vs_random: float
    randomisation_rho: float = math.nan

    @property
    def key(self) -> tuple[str, int]:
        return self.layer, self.class_index


@dataclass
class MapChecks:
    """Every map's checks, the shared random-order curves and how they were computed."""

    steps: list[float]
    baseline: str
    target: str
    method: str
    seed: int
    checks: list[MapCheck]
    random_deletion: dict[int, list[float]]  # class index -> curve
    random_insertion: dict[int, list[float]]
    score_image: dict[int, float]  # class index -> raw score of the unperturbed image
    score_baseline: dict[int, float]
    forward_passes: int = 0
    explain_runs: int = 0  # randomised networks (the name kept from when each map took an explain() run)
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def __getitem__(self, key: tuple[str, int]) -> MapCheck:
        for c in self.checks:
            if c.key == key:
                return c
        raise KeyError(key)

    def summary_rows(self) -> list[tuple[str, float, float, float, float, float]]:
        """One row per map in :data:`SUMMARY_COLUMNS` order, for a table."""
        return [
            (
                f"{c.layer}/{c.class_name}",
                c.deletion_auc,
                c.insertion_auc,
                c.deletion_vs_random,
                c.insertion_vs_random,
                c.randomisation_rho,
            )
            for c in self.checks
        ]

    def to_dict(self) -> dict:
        """Plain JSON types; NaN becomes None."""
        return _nan_to_none(asdict(self))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str) -> MapChecks:
        d = _none_to_nan(json.loads(text))
        for k in ("random_deletion", "random_insertion", "score_image", "score_baseline"):
            d[k] = {int(c): v for c, v in d[k].items()}
        d["checks"] = [MapCheck(**c) for c in d["checks"]]
        return cls(**d)


#: Time of one check step in predict() times of the same image, on a CPU (bench/bench_faithfulness.py,
#: docs/benchmarks.md): a perturbed forward pass (no preprocessing, BatchNorm folded), one randomised
#: network's forward pass, and each class's backward pass through its decoder part.
PASS_COST, RANDOM_FORWARD_COST, RANDOM_BACKWARD_COST = 0.85, 1.0, 0.6


@dataclass(frozen=True)
class CheckCost:
    """What :func:`check_maps` will run: single-image forward passes for the curves; for randomisation,
    one randomised network per layer, each with one forward pass and one backward pass per class."""

    forward_passes: int
    explain_runs: int  # randomised networks (one per checked layer)
    backward_passes: int = 0

    @property
    def times_predict(self) -> float:
        """The estimated time in predict() times of the same image on a CPU (docs/benchmarks.md)."""
        return (
            self.forward_passes * PASS_COST
            + self.explain_runs * RANDOM_FORWARD_COST
            + self.backward_passes * RANDOM_BACKWARD_COST
        )


def _nan_to_none(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {str(k): _nan_to_none(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_nan_to_none(x) for x in v]
    return v


def _none_to_nan(v):
    if v is None:
        return math.nan
    if isinstance(v, dict):
        return {k: (v[k] if k == "notes" else _none_to_nan(x)) for k, x in v.items()}
    if isinstance(v, list):
        return [_none_to_nan(x) for x in v]
    return v


def _check_steps(steps: Sequence[float]) -> list[float]:
    s = sorted({float(v) for v in steps} | {0.0, 1.0})
    if not all(0.0 <= v <= 1.0 for v in s):
        raise InputError(f"steps are fractions of the pixels; they must lie in [0, 1], got {list(steps)}.")
    return s


def _maps_to_check(result: ExplainResult, maps: Iterable[tuple[str, int]] | None) -> list[tuple[str, int]]:
    if not result.cams:
        raise InputError("The result holds no maps; run explain() with at least one layer and class first.")
    keys = list(result.cams) if maps is None else [(str(ly), int(c)) for ly, c in maps]
    missing = [k for k in keys if k not in result.cams]
    if missing:
        raise InputError(f"The result has no map for {missing}; its maps are {list(result.cams)}.")
    return keys


def _order_key(m: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(m, np.float32).tobytes()).hexdigest()


def estimate_cost(
    result: ExplainResult,
    *,
    steps: Sequence[float] = DEFAULT_STEPS,
    randomisation: bool = True,
    maps: Iterable[tuple[str, int]] | None = None,
) -> CheckCost:
    """How many forward and backward passes :func:`check_maps` will take, and about how long."""
    keys = _maps_to_check(result, maps)
    inner = len(_check_steps(steps)) - 2
    orders = len({_order_key(result.cams[k]) for k in keys})
    # Two curves per distinct pixel order, the random order's two, and the image and the baseline.
    passes = 2 * inner * (orders + 1) + 2
    if not randomisation:
        return CheckCost(passes, 0, 0)
    backward = len(keys) if get_method(str(result.metadata.get("method", "gradcam"))).needs_gradients else 0
    return CheckCost(passes, len({ly for ly, _ in keys}), backward)


# -- the score -----------------------------------------------------------------------------------
def _nearest(arr: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    h, w = size
    H, W = arr.shape[-2:]
    if (h, w) == (H, W):
        return arr
    rows = np.minimum(((np.arange(h) + 0.5) * H / h).astype(int), H - 1)
    cols = np.minimum(((np.arange(w) + 0.5) * W / w).astype(int), W - 1)
    return arr[..., rows[:, None], cols[None, :]]


def _class_logit(logits: torch.Tensor, cls: int) -> torch.Tensor:
    """(B, h, w): class ``cls``'s logit; a one-channel sigmoid model's background is ``-logit``."""
    if logits.shape[1] == 1:
        return logits[:, 0] if cls == 1 else -logits[:, 0]
    return logits[:, cls]


def fold_batchnorm(module: nn.Module) -> nn.Module:
    """Every eval-mode ``Conv2d`` directly followed by a ``BatchNorm2d`` in a ``Sequential``, as one conv.

    In place; for a private eval-mode copy only. The same function up to float rounding (on the
    bundled model logits differ by about 1e-5 of their range), one pass over the activations fewer:
    a 512x512 forward pass about 12 % faster on a CPU (docs/benchmarks.md).
    """
    for name, child in module.named_children():
        if not isinstance(child, nn.Sequential):
            fold_batchnorm(child)
            continue
        mods, out = list(child), []
        while mods:
            m = mods.pop(0)
            nxt = mods[0] if mods else None
            if (
                isinstance(m, nn.Conv2d)
                and isinstance(nxt, nn.BatchNorm2d)
                and nxt.track_running_stats
                and not (m.training or nxt.training)
            ):
                out.append(fuse_conv_bn_eval(m, mods.pop(0)))
            else:
                out.append(fold_batchnorm(m))
        setattr(module, name, nn.Sequential(*out))
    return module


class _Scorer:
    """Forward passes of batches of images, each returning every checked class's score.

    The passes run on a private eval-mode copy of the network: the user's module is never switched
    to eval mode or locked (another thread may explain() with it meanwhile). The copy's BatchNorm
    layers are folded into their convolutions, and on a CPU or CUDA device its weights and inputs
    are channels-last, which runs the U-Net's convolutions faster than the module's own layout
    (bench/bench_faithfulness.py; docs/benchmarks.md). Images are padded as explain() pads them.
    """

    def __init__(self, net: nn.Module, regions: dict[int, torch.Tensor], device: torch.device):
        self.regions, self.device = regions, device
        with model_lock(net):  # as in randomised_copy: no other run's hooks in the copy
            self.net = fold_batchnorm(copy.deepcopy(net).eval())
        self.layout = torch.channels_last if device.type in ("cpu", "cuda") else torch.contiguous_format
        self.net.to(memory_format=self.layout)
        self.passes = 0

    def __call__(self, batch: np.ndarray) -> dict[int, np.ndarray]:
        h, w = batch.shape[-2:]
        x = torch.from_numpy(pad_to(batch, network_size(h, w))).to(self.device)
        with torch.inference_mode():
            logits = self.net(x.contiguous(memory_format=self.layout)).float()[..., :h, :w]
        self.passes += x.shape[0]
        return {c: (_class_logit(logits, c) * r).sum((1, 2)).double().cpu().numpy() for c, r in self.regions.items()}


def _baseline_image(x: np.ndarray, kind: str, sigma: float) -> np.ndarray:
    if kind == "blur":
        return np.stack([ndimage.gaussian_filter(ch, sigma, mode="reflect") for ch in x]).astype(np.float32)
    return np.broadcast_to(x.mean(axis=(1, 2), keepdims=True, dtype=np.float64), x.shape).astype(np.float32)


def _pixel_order(m: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Flat indices from the highest map value down; ties (e.g. Grad-CAM's zeros) in random order."""
    return np.lexsort((rng.random(m.size), -m.ravel().astype(np.float64)))


def _curve_batch(x: np.ndarray, base: np.ndarray, order: np.ndarray, counts: list[int], insertion: bool) -> np.ndarray:
    c, h, w = x.shape
    start, end = (base, x) if insertion else (x, base)
    out = np.empty((len(counts), c, h, w), np.float32)
    for i, n in enumerate(counts):
        chosen = np.zeros(h * w, bool)
        chosen[order[:n]] = True
        out[i] = np.where(chosen.reshape(h, w), end, start)
    return out


def _default_batch(device: torch.device, width: int, size: tuple[int, int]) -> int:
    """One image per pass on a CPU, where batches are no faster per image (measured); else what fits."""
    if device.type == "cpu":
        return 1
    # Inference keeps the skip connections and a few decoder tensors: about 8 x width channels at full size.
    return max(1, _BATCH_BYTES // (8 * width * size[0] * size[1] * 4))


class _Curves:
    """Deletion and insertion curves of one image, in batches of perturbed copies, every class at once."""

    def __init__(self, x: np.ndarray, base: np.ndarray, scorer: _Scorer, fractions: list[float], bs: int, step):
        self.x, self.base, self.scorer, self.bs, self.step = x, base, scorer, bs, step
        ends = scorer(np.stack([x, base]))
        step()
        self.s_img = {c: float(v[0]) for c, v in ends.items()}
        self.s_base = {c: float(v[1]) for c, v in ends.items()}
        self.counts = [round(f * x.shape[-1] * x.shape[-2]) for f in fractions[1:-1]]

    def curves(self, order: np.ndarray) -> tuple[dict[int, list[float]], dict[int, list[float]]]:
        """(deletion, insertion): class -> normalised scores at every fraction."""
        out = []
        for insertion in (False, True):
            raw: dict[int, list[float]] = {c: [] for c in self.s_img}
            for s in range(0, len(self.counts), self.bs):
                part = self.scorer(_curve_batch(self.x, self.base, order, self.counts[s : s + self.bs], insertion))
                for c in raw:
                    raw[c].extend(part[c].tolist())
                self.step()
            out.append({c: self._normalised(c, v, insertion) for c, v in raw.items()})
        return out[0], out[1]

    def _normalised(self, c: int, inner: list[float], insertion: bool) -> list[float]:
        """``(S - S_baseline) / (S_image - S_baseline)``, with the exact end points."""
        s_img, s_base = self.s_img[c], self.s_base[c]
        span = s_img - s_base
        if abs(span) < 1e-6 * max(1.0, abs(s_img)):
            return [math.nan] * (len(inner) + 2)
        first, last = (0.0, 1.0) if insertion else (1.0, 0.0)
        return [first, *((v - s_base) / span for v in inner), last]


def _auc(xs: Sequence[float], ys: Sequence[float]) -> float:
    y = np.asarray(ys, np.float64)
    return float(np.sum((y[1:] + y[:-1]) * np.diff(xs)) / 2) if np.isfinite(y).all() else math.nan


def _ratio(a: float, b: float) -> float:
    """``a / b``, or NaN where the random order's area is too near zero (or below) to divide by."""
    return a / b if b >= MIN_RANDOM_AUC and math.isfinite(a) else math.nan


# -- cascading randomisation ---------------------------------------------------------------------
def randomised_copy(net: nn.Module, layer: str, seed: int = 0) -> nn.Module:
    """A copy of ``net`` whose top-level modules from ``layer``'s down to the output are re-initialised.

    "Down to" follows the order the modules are defined in, which for a Pytorch-UNet is the order
    they run in (``inc``, ``down1``..``down4``, ``up1``..``up4``, ``outc``): randomising ``up2``
    re-initialises ``up2``, ``up3``, ``up4`` and ``outc``. ``net`` itself is not touched.
    """
    names = [n for n, _ in net.named_children()]
    top = layer.split(".")[0]
    if top not in names:
        raise InputError(f"Layer {layer!r} is not a module of the network; its modules are {', '.join(names)}.")
    device = next(net.parameters()).device
    with model_lock(net):  # not mid-way through another thread's explain(), whose hooks would be copied
        out = copy.deepcopy(net)
    out.to("cpu")  # re-initialised on the CPU so one seed gives one network anywhere
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for name in names[names.index(top) :]:
            for m in getattr(out, name).modules():
                if hasattr(m, "reset_parameters"):
                    m.reset_parameters()
    return out.to(device).eval()


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel(), b.ravel()
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return math.nan
    return float(stats.spearmanr(a, b).statistic)


# -- the check -----------------------------------------------------------------------------------
def check_maps(
    image,
    net: nn.Module,
    result: ExplainResult,
    *,
    steps: Sequence[float] = DEFAULT_STEPS,
    baseline: str = "blur",
    blur_sigma: float = DEFAULT_BLUR_SIGMA,
    randomisation: bool = True,
    maps: Iterable[tuple[str, int]] | None = None,
    target: np.ndarray | tuple[int, int] | None = None,
    channel_axis: int | None = None,
    rgb: bool | None = None,
    repeat_channels: bool = False,
    batch_size: int | None = None,
    progress: ProgressCallback | None = None,
    cancel=None,
    seed: int = 0,
) -> MapChecks:
    """Deletion, insertion and randomisation checks of ``result``'s maps (all, or those in ``maps``).

    ``image`` and ``net`` are those ``result`` came from (one 2-D image; pass a slice of a stack
    with that slice's result). The image's preprocessing and scale are taken from the result's
    metadata; ``channel_axis``, ``rgb`` and ``repeat_channels`` must repeat explain()'s. For a
    result explained with a mask or pixel target, pass the same ``target`` again. ``net`` is
    never modified: randomisation works on copies. ``progress(done, total)`` is called after each
    batch and randomised network; ``cancel`` (an object with ``is_set()`` or a callable) stops the
    check with :class:`~napari_unet_gradcam.errors.Cancelled`. Cost: :func:`estimate_cost`.
    """
    t0 = time.perf_counter()
    keys = _maps_to_check(result, maps)
    fr = _check_steps(steps)
    if baseline not in BASELINES:
        raise InputError(f"Unknown baseline {baseline!r}: choose one of {', '.join(BASELINES)}.")
    if not blur_sigma > 0:
        raise InputError(f"blur_sigma must be positive; got {blur_sigma}.")
    md = result.metadata
    kind = md.get("target", "predicted")
    if kind in ("mask", "pixel") and target is None:
        raise InputError(f"The result was explained for a {kind} target: pass the same target= to check_maps.")
    prep = prepare(
        image,
        int(net.n_channels),
        preprocess=md.get("preprocess", "auto"),
        model_preprocess=getattr(net, "preprocess", None),
        channel_axis=channel_axis,
        rgb=rgb,
        repeat_channels=repeat_channels,
        scale=float(md.get("scale", 1.0)),
    )
    if prep.batch.shape[0] != 1 or result.labels.ndim != 2:
        raise InputError(
            "check_maps checks one 2-D image at a time: pass one slice of the stack and the result of explain() "
            "for that slice."
        )
    if md.get("tile_size"):
        raise InputError(
            f"The result was computed in {md['tile_size']}-pixel tiles, but the check runs whole-image passes, "
            "one per perturbed image, which would not fit either: check a crop of the image (explain() it first)."
        )
    if result.labels.shape != prep.spatial_shape:
        raise InputError(
            f"The result is for a {result.labels.shape} image, not this {prep.spatial_shape} one: pass the image "
            "that explain() was given."
        )
    x = prep.batch[0]
    size = x.shape[-2:]
    classes = list(dict.fromkeys(c for _, c in keys))
    regions_np = _regions(result, kind, target, classes, size)
    device = next(net.parameters()).device
    regions = {c: torch.from_numpy(r.astype(np.float32)).to(device) for c, r in regions_np.items()}
    names = result.class_names or [str(c) for c in range(max(classes) + 1)]

    cost = estimate_cost(result, steps=fr, randomisation=randomisation, maps=keys)
    inner = len(fr) - 2
    bs = max(1, min(inner, batch_size or _default_batch(device, int(getattr(net, "width", 64)), size)))
    n_orders = len({_order_key(result.cams[k]) for k in keys})
    total = 1 + 2 * (n_orders + 1) * -(-inner // bs) + cost.explain_runs
    step = progress_steps(total, progress, cancel, "map check")
    scorer = _Scorer(net, regions, device)
    run = _Curves(x, _baseline_image(x, baseline, blur_sigma), scorer, fr, bs, step)
    rand_del, rand_ins = run.curves(np.random.default_rng(seed).permutation(x.shape[-1] * x.shape[-2]))
    notes = [
        f"Class {names[c]}: the baseline leaves its score unchanged, so its curves are undefined (NaN)."
        for c in classes
        if math.isnan(rand_del[c][0])
    ]
    by_order: dict[str, tuple[dict, dict]] = {}
    checks = []
    for ly, c in keys:
        k = _order_key(result.cams[ly, c])
        if k not in by_order:  # maps that rank pixels alike (Eigen-CAM's classes) share their passes
            m = _nearest(np.asarray(result.cams[ly, c], np.float32), size)
            rng = np.random.default_rng([seed, len(by_order)])
            # Without intermediate steps no order is used: sorting 512x512 pixels costs 0.1 s a map.
            by_order[k] = run.curves(_pixel_order(m, rng) if run.counts else np.empty(0, np.int64))
        d, i = by_order[k][0][c], by_order[k][1][c]
        da, ia, dr, ir = _auc(fr, d), _auc(fr, i), _auc(fr, rand_del[c]), _auc(fr, rand_ins[c])
        checks.append(MapCheck(ly, c, names[c], d, i, da, ia, dr, ir, _ratio(da, dr), _ratio(ia, ir)))
    explain_runs = _randomisation(x, net, result, keys, checks, regions, seed, step, notes) if randomisation else 0
    return MapChecks(
        steps=fr,
        baseline=baseline,
        target=kind,
        method=str(md.get("method", "")),
        seed=seed,
        checks=checks,
        random_deletion=rand_del,
        random_insertion=rand_ins,
        score_image=run.s_img,
        score_baseline=run.s_base,
        forward_passes=scorer.passes,
        explain_runs=explain_runs,
        seconds=round(time.perf_counter() - t0, 3),
        notes=notes,
    )


def _regions(result, kind, target, classes, size) -> dict[int, np.ndarray]:
    """Each class's score region on the network's grid, fixed from the unperturbed prediction."""
    if kind == "image":
        return {c: np.ones(size, bool) for c in classes}
    if kind == "predicted":
        labels = _nearest(np.asarray(result.labels), size)
        return {c: labels == c for c in classes}
    H, W = result.labels.shape
    if isinstance(target, tuple):
        mask = np.zeros((H, W), bool)
        mask[int(target[0]), int(target[1])] = True
    else:
        mask = np.asarray(target) != 0
        if mask.shape != (H, W):
            raise InputError(f"The target mask has shape {mask.shape}; it must be {(H, W)} to match the image.")
    # A region smaller than the network's grid must survive: every set pixel marks its cell.
    small = _nearest(mask, size).copy()
    ys, xs = np.nonzero(mask)
    small[ys * size[0] // H, xs * size[1] // W] = True
    return {c: small for c in classes}


def _randomisation(
    x: np.ndarray,
    net: nn.Module,
    result: ExplainResult,
    keys: list[tuple[str, int]],
    checks: list[MapCheck],
    regions: dict[int, torch.Tensor],
    seed: int,
    step,
    notes: list[str],
) -> int:
    """Fill each check's ``randomisation_rho``; returns the number of randomised networks.

    One pass per layer on its randomised copy: the forward pass, then one backward pass per class,
    each scoring that class over its fixed region ``regions[c]`` (the curves' ``M_c``), as explain()
    would with that region as its target. Maps are compared on the network's grid.
    """
    method = get_method(str(result.metadata.get("method", "gradcam")))
    size = x.shape[-2:]
    fed = network_size(*size)
    xt = torch.from_numpy(pad_to(x[None], fed)).to(next(net.parameters()).device)
    padded = {
        c: torch.nn.functional.pad(r, (0, fed[1] - size[1], 0, fed[0] - size[0]))[None] for c, r in regions.items()
    }
    by_key = {ck.key: ck for ck in checks}
    layers = list(dict.fromkeys(ly for ly, _ in keys))
    for ly in layers:
        rnet = randomised_copy(net, ly, seed)
        classes = [c for l2, c in keys if l2 == ly]
        _, maps = explain_tensor(rnet, xt, [ly], classes, method, lambda logits, c: padded[c], valid=size)
        for c in classes:
            ck = by_key[ly, c]
            new = map_to_input(maps[ly, c], fed, size)[0].cpu().numpy()
            ck.randomisation_rho = _spearman(_nearest(np.asarray(result.cams[ly, c], np.float32), size), new)
            if math.isnan(ck.randomisation_rho):
                which = "the randomised network's" if np.ptp(new) == 0 else "the original"
                notes.append(f"{ly}/{ck.class_name}: {which} map is constant; its rank correlation is undefined.")
        step()
        del rnet
    return len(layers)
