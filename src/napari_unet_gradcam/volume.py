"""``explain()`` and ``predict()`` for 3-D networks: whole volumes, true 3-D maps.

A volume is (Z, Y, X) for a one-channel network, or has a channel axis (``channel_axis``, or
axis -4 when it already matches the network's channels); leading axes are a stack of volumes.
Each volume runs in one pass, padded at the end of each axis to a multiple of the network's size
divisor, and to at least twice it (instance norms need two positions a side at the deepest level),
the padding in no score and no statistic (as 2-D padding). A volume that does not fit the memory
available, or any volume given ``tile_size``, runs in blocks (volume_tiles.py). Not yet: ``scale``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import torch
from torch import nn

from .engine import (
    Job,
    eval_mode,
    explain_whole,
    labels_from_logits,
    model_lock,
    n_outputs,
    probabilities_from_logits,
    resolve_modules,
    steps_per_pass,
)
from .errors import InputError, UnetGradcamError
from .families import size_divisor
from .image import apply_preprocess, resolve_preprocess, to_channels_first
from .methods import Method
from .normalize import normalize_maps
from .run_plan import available_bytes
from .tiling import n_passes
from .volume_tiles import block_boxes, choose_tile, explain_blocks, largest_block

#: Working bytes per voxel per feature channel of the first stage, explaining: bench/bench_3d.py
#: measured 150 (a BasicUNet with 8 features, 4 layers x 3 classes, CPU: the slope of its peak
#: memory from 32^3 to 48^3); 200 leaves a margin for U-Nets that double their features per stage.
BYTES_PER_VOXEL_PER_FEATURE = 200


def to_volumes(
    image, net: nn.Module, channel_axis: int | None, repeat_channels: bool
) -> tuple[np.ndarray, tuple[int, ...], list[str]]:
    """(N, C, Z, Y, X) float32 (a copy, NaN/inf replaced as for 2-D images), the stack shape, notes."""
    arr = np.asarray(image)
    c = int(net.n_channels)
    if channel_axis is None and c > 1 and arr.ndim >= 4 and arr.shape[-4] == c:
        channel_axis = arr.ndim - 4
    notes: list[str] = []
    # to_channels_first puts the channels just before (Y, X): (..., Z, C, Y, X).
    out = to_channels_first(arr, c, channel_axis, False, repeat_channels, notes)
    if out.ndim < 4:
        raise InputError(
            f"This network is 3-D ({type(net).__name__}): give a volume (Z, Y, X) or, with channels, "
            f"(C, Z, Y, X); got shape {arr.shape}."
        )
    out = np.moveaxis(out, -3, -4)
    return np.ascontiguousarray(out.reshape(-1, *out.shape[-4:])), out.shape[:-4], notes


def fed_size(spatial: Sequence[int], divisor: Sequence[int]) -> tuple[int, ...]:
    """The size a volume is fed at: each side a multiple of its divisor, and at least twice it."""
    return tuple(max(2 * d, -(-s // d) * d) for s, d in zip(spatial, divisor, strict=True))


def _padded(batch: np.ndarray, fed: Sequence[int]) -> np.ndarray:
    size = batch.shape[2:]
    pads = [(0, f - s) for s, f in zip(size, fed, strict=True)]
    if not any(p for _, p in pads):
        return batch
    mode = "reflect" if min(size) > 1 else "edge"
    return np.pad(batch, [(0, 0), (0, 0), *pads], mode=mode)


def _preprocess(batch: np.ndarray, net: nn.Module, preprocess) -> dict:
    """Normalise ``batch`` in place; the rule applied.

    "auto" on a network from an nnU-Net folder is its plans' normalisation ("as the model was
    trained"), per volume as nnU-Net does per case; otherwise the 2-D rules.
    """
    if preprocess == "auto" and getattr(net, "nnunet", None) and not getattr(net, "preprocess", None):
        from .bundles import nnunet_normalize

        for i in range(batch.shape[0]):
            batch[i] = nnunet_normalize(batch[i], net)
        return {"mode": "nnunet", "schemes": list(net.nnunet.get("normalization_schemes") or [])}
    rule = resolve_preprocess(preprocess, getattr(net, "preprocess", None), batch)
    apply_preprocess(np.moveaxis(batch, 1, 2), rule)  # a view with channels at -3, normalised in place
    return rule


def _target(target, spatial: tuple[int, ...], n: int):
    if isinstance(target, str):
        if target not in ("predicted", "image"):
            raise InputError(f"Unknown target {target!r}: use 'predicted', 'image', a boolean mask or a voxel.")
        return target
    if isinstance(target, tuple) and all(isinstance(v, (int, np.integer)) for v in target):
        if len(target) != len(spatial) or not all(0 <= v < s for v, s in zip(target, spatial, strict=True)):
            raise InputError(f"Target voxel {target} is not a (z, y, x) inside the volume's {spatial} voxels.")
        mask = np.zeros(spatial, bool)
        mask[target] = True
    else:
        mask = np.asarray(target) != 0
        if mask.shape[-3:] != spatial or mask.size not in (np.prod(spatial), n * np.prod(spatial)):
            raise InputError(f"The target mask has shape {mask.shape}; it must be the volume's {spatial}.")
    return np.broadcast_to(mask.reshape(-1, *spatial), (n, *spatial))


def _bytes_needed(net: nn.Module, voxels: int) -> int:
    conv = next((m for m in net.modules() if isinstance(m, nn.Conv3d)), None)
    features = int(getattr(net, "width", None) or (conv.out_channels if conv is not None else 32))
    return voxels * features * BYTES_PER_VOXEL_PER_FEATURE


def _plan_blocks(net, spatial, fed, divisor, tile_size, halo, device) -> tuple[list | None, int | None]:
    """The blocks to run and their tile (None: the whole volume in one pass), refusing what would not fit.

    Without ``tile_size`` a volume runs whole when it fits the memory available, else in the
    largest blocks that fit.
    """
    budget = available_bytes(device)

    def fits(voxels: int) -> bool:
        return _bytes_needed(net, voxels) <= budget

    tile = tile_size
    if tile is None:
        if fits(int(np.prod(fed))):
            return None, None
        tile = choose_tile(spatial, fed, divisor, halo, fits) or max(divisor)
    boxes = block_boxes(spatial, fed, divisor, tile, halo)
    voxels = largest_block(boxes)
    if not fits(voxels):
        need = _bytes_needed(net, voxels)
        raise InputError(
            f"Explaining this volume in blocks of {voxels / 1e6:.1f} M voxels (tile {tile}, halo "
            f"{halo}) would need about {need / 2**30:.1f} GiB, above the {budget / 2**30:.1f} GiB available: pass a "
            "smaller tile_size or halo, crop the volume to the region of interest, or downsample it."
        )
    return boxes, tile


def run_volumes(
    image,
    net: nn.Module,
    layers: Sequence[str],
    classes: Sequence[int],
    method: Method,
    target,
    preprocess,
    *,
    channel_axis: int | None,
    repeat_channels: bool,
    tile_size: int | None,
    halo: int,
    scale: float,
    threshold: float,
    step_factory,
) -> tuple[np.ndarray, dict, tuple, tuple[int, ...], dict, list[str], int | None]:
    """Logits (N, K, Z, Y, X) and maps (N, Z, Y, X); the stack shape, spatial shape, preprocessing, notes, tile."""
    if scale != 1.0:
        raise InputError("scale applies to 2-D images; resample a volume before explaining it (leave scale at 1).")
    batch, stack, notes = to_volumes(image, net, channel_axis, repeat_channels)
    spatial = tuple(batch.shape[2:])
    rule = _preprocess(batch, net, preprocess)
    n = batch.shape[0]
    tgt = _target(target, spatial, n)
    modules = resolve_modules(net, layers)
    device = next(net.parameters()).device
    divisor = size_divisor(net)
    fed = fed_size(spatial, divisor)
    job = Job(net, modules, classes, method, tgt, threshold)
    boxes, tile = _plan_blocks(net, spatial, fed, divisor, tile_size, halo, device)
    if boxes is not None and any(isinstance(m, nn.modules.instancenorm._InstanceNorm) for m in net.modules()):
        notes.append(
            f"Explained in {len(boxes)} blocks of {tile} voxels a side: this network's instance norms normalise each "
            "block by its own statistics, so labels and maps differ from one whole-volume pass (docs/models.md)."
        )
    per_volume = steps_per_pass(job) if boxes is None else len(boxes) * n_passes(method, bool(modules and classes))
    step = step_factory(n * per_volume)
    logits = np.empty((n, int(net.n_classes), *spatial), np.float32)
    maps = {(ly, c): np.empty((n, *spatial), np.float32) for ly in modules for c in classes}
    with model_lock(net), eval_mode(net):
        for i in range(n):
            x = torch.from_numpy(_padded(batch[i : i + 1], fed))
            t = tgt
            if isinstance(tgt, np.ndarray):
                pad = [(0, 0), *((0, f - s) for f, s in zip(fed, spatial, strict=True))]
                t = torch.from_numpy(np.pad(tgt[i : i + 1], pad))
            part = {k: v[i : i + 1] for k, v in maps.items()}
            try:
                if boxes is None:
                    t = t.to(device) if isinstance(t, torch.Tensor) else t
                    explain_whole(replace(job, target=t), x.to(device), logits[i : i + 1], part, on_step=step)
                else:
                    explain_blocks(replace(job, target=t), x, spatial, boxes, step, logits[i : i + 1], part)
            except UnetGradcamError:
                raise
            except (RuntimeError, ValueError) as exc:  # the network's own checks: sizes, channels
                raise InputError(
                    f"The network failed on the volume fed at {'x'.join(map(str, fed))} voxels ({type(exc).__name__}: "
                    f"{str(exc)[:200]}); if its poolings need other multiples, set net.size_divisor "
                    "(docs/models.md)."
                ) from None
    return logits, maps, stack, spatial, rule, notes, tile


def finish_volumes(
    net: nn.Module, logits: np.ndarray, maps: dict, stack: tuple, threshold: float
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Labels (*stack, Z, Y, X), probabilities (K, *stack, Z, Y, X) and maps (*stack, Z, Y, X)."""
    spatial = logits.shape[2:]
    t = torch.from_numpy(logits)
    labels = labels_from_logits(t, threshold).numpy().astype(np.int32).reshape(*stack, *spatial)
    probs = probabilities_from_logits(t).numpy().swapaxes(0, 1).reshape(-1, *stack, *spatial)
    return labels, np.ascontiguousarray(probs), {k: v.reshape(*stack, *spatial) for k, v in maps.items()}


def _steps(progress, cancel):
    from .pipeline import progress_steps

    return lambda total: progress_steps(total, progress, cancel)


def predict_volume(image, net: nn.Module, preprocess, *, progress, cancel, **kw) -> np.ndarray:
    """predict() on a 3-D network: labels (*stack, Z, Y, X)."""
    from .methods import get_method

    logits, _, stack, _, _, _, _ = run_volumes(
        image, net, (), (), get_method("gradcam"), "predicted", preprocess, step_factory=_steps(progress, cancel), **kw
    )
    return finish_volumes(net, logits, {}, stack, kw["threshold"])[0]


def explain_volume(image, net, layers, class_idx, method, target, preprocess, normalize, *, progress, cancel, **kw):
    """explain() on a 3-D network; the pipeline's checks of its arguments are already done."""
    from .pipeline import ExplainResult, run_metadata

    t0 = time.perf_counter()
    threshold = kw["threshold"]
    logits, raw, stack, spatial, rule, notes, tile = run_volumes(
        image, net, layers, class_idx, method, target, preprocess, step_factory=_steps(progress, cancel), **kw
    )
    labels, probabilities, cams = finish_volumes(net, logits, raw, stack, threshold)
    ranges = normalize_maps(cams, normalize)
    names = list(getattr(net, "class_names", None) or [str(i) for i in range(n_outputs(net))])
    metadata = run_metadata(
        method, target, layers, class_idx, names, rule, normalize, ranges, threshold, net, point="voxel"
    )
    # No look check: ood.py compares with the bundled 2-D model's training data.
    metadata.update(spatial_dims=3, tile_size=tile, halo=kw["halo"] if tile else None, notes=notes, ood_warnings=[])
    metadata.update(seconds=round(time.perf_counter() - t0, 3))
    return ExplainResult(labels, probabilities, cams, metadata)
