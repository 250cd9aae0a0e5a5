"""Hook-based Grad-CAM on one batch: one forward pass, one gradient call per class.

Hooks live only inside :func:`hooked` and are removed in ``finally``. The forward pass runs
without autograd until the first hooked module; its output becomes the root of the graph, so
no graph is built through the encoder and no parameter gradient is ever computed.

Everything here works on 2-D (B, C, H, W) and 3-D (B, C, D, H, W) tensors alike. A network whose
output is a list, tuple or dict of tensors (deep supervision, as nnU-Net trains by default) is
explained through its full-resolution head: :func:`full_resolution`.
"""

from __future__ import annotations

import math
import threading
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .errors import InputError
from .fast_paths import run_net
from .model import DECODER_LAYERS

_locks: weakref.WeakKeyDictionary[nn.Module, threading.RLock] = weakref.WeakKeyDictionary()
_locks_guard = threading.Lock()


def model_lock(net: nn.Module) -> threading.RLock:
    """One lock per model: runs that hook the same module are serialised, not interleaved."""
    with _locks_guard:
        lock = _locks.get(net)
        if lock is None:
            lock = _locks[net] = threading.RLock()
        return lock


def resolve_modules(net: nn.Module, layers: Sequence[str]) -> dict[str, nn.Module]:
    named = dict(net.named_modules())
    out: dict[str, nn.Module] = {}
    for name in layers:
        if not name or name not in named:
            milesial = DECODER_LAYERS if set(DECODER_LAYERS) <= set(named) else ()
            decoder = getattr(net, "decoder_layers", None) or milesial
            hint = f"use decoder layers {', '.join(decoder)} or another" if decoder else "use a"
            raise InputError(
                f"Unknown layer {name!r}: {hint} module name of the network (e.g. 'down4', 'up2.conv'; "
                "dict(net.named_modules()) lists them)."
            )
        out[name] = named[name]
    return out


@contextmanager
def eval_mode(net: nn.Module) -> Iterator[None]:
    was_training = net.training
    net.eval()
    try:
        yield
    finally:
        net.train(was_training)


@contextmanager
def hooked(net: nn.Module, modules: Mapping[str, nn.Module], track: bool) -> Iterator[dict[str, torch.Tensor]]:
    """Record the outputs of ``modules`` during forward passes inside the block.

    With ``track``, grad mode is switched on at the first hooked output, which becomes a leaf
    that requires grad; the caller's grad mode must be restored by an enclosing ``no_grad``.
    """
    acts: dict[str, torch.Tensor] = {}
    handles = []

    def make_hook(name: str):
        def hook(module: nn.Module, args, out):
            if not isinstance(out, torch.Tensor):
                raise InputError(f"Layer {name!r} returns {type(out).__name__}, not a tensor; pick another layer.")
            if name in acts:
                raise InputError(
                    f"Layer {name!r} ran more than once in one forward pass, so its activations are ambiguous; "
                    "hook a module that runs once."
                )
            if track and not out.requires_grad:
                torch.set_grad_enabled(True)
                out = out.detach().requires_grad_(True)
            acts[name] = out
            return out

        return hook

    try:
        for name, module in modules.items():
            handles.append(module.register_forward_hook(make_hook(name)))
        yield acts
    finally:
        for h in handles:
            h.remove()


def full_resolution(out: Any) -> torch.Tensor:
    """The logits of a network's output: the tensor itself, or the full-resolution head of several.

    Deep-supervised networks (nnU-Net's default, MONAI's DynUNet in training) return one head per
    decoder stage; the head with the most positions is the segmentation, and the first such head
    wins a tie (nnU-Net lists the full-resolution head first). The other heads get no score.
    """
    if isinstance(out, torch.Tensor):
        return out
    heads = list(out.values()) if isinstance(out, Mapping) else list(out) if isinstance(out, (list, tuple)) else []
    heads = [h for h in heads if isinstance(h, torch.Tensor) and h.dim() >= 3]
    if not heads:
        raise InputError(
            f"The network returned {type(out).__name__}, not a tensor of logits (or a list, tuple or dict of "
            "them): wrap it in a module whose forward returns the (B, classes, ...) logits."
        )
    return max(heads, key=lambda h: h[0, 0].numel())


def n_outputs(net: nn.Module) -> int:
    """Number of label values: a one-channel sigmoid model still has background and foreground."""
    return max(int(net.n_classes), 2)


def labels_from_logits(logits: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Upstream's decision: argmax, or sigmoid > ``threshold`` for a one-channel model."""
    if logits.shape[1] == 1:
        return (torch.sigmoid(logits[:, 0]) > threshold).long()
    if logits.device.type == "cpu":  # NumPy's channel argmax is several times faster; same first-max rule
        return torch.from_numpy(logits.detach().numpy().argmax(1))
    return logits.argmax(1)


def predicted(threshold: float = 0.5) -> Callable[[torch.Tensor, int], torch.Tensor]:
    """The "predicted" target: pixels whose label (decided as the labels are) is the class.

    The labels are decided once per pass, not once per class.
    """
    last: list = [None, None]

    def region(logits: torch.Tensor, cls: int) -> torch.Tensor:
        if last[0] is not logits:
            last[:] = [logits, labels_from_logits(logits, threshold)]
        return last[1] == cls

    return region


Valid = tuple[int, ...]  # the image's extent on each spatial axis


def layer_stride(size: int, n: int) -> int:
    """The stride of a layer of ``n`` positions over ``size`` input pixels.

    The U-Net's 2x poolings floor odd sizes, so n = size // s for a power of two s: position
    ``i`` covers pixels ``[i * s, (i + 1) * s)`` and the last ``size - n * s`` pixels none.
    """
    return 1 << max(0, math.floor(math.log2(size / n))) if n < size else 1


def layer_valid(valid: Valid, fed: tuple[int, ...], layer: tuple[int, ...]) -> Valid:
    """Positions of a layer's grid that cover at least one pixel of the valid (unpadded) image."""
    return tuple(min(n, -(-v // layer_stride(size, n))) for v, size, n in zip(valid, fed, layer, strict=True))


_INTERPOLATION = {1: "linear", 2: "bilinear", 3: "trilinear"}


def crop(t: torch.Tensor, valid: Valid) -> torch.Tensor:
    """The leading ``valid`` positions of ``t``'s last ``len(valid)`` axes."""
    return t[(..., *(slice(0, v) for v in valid))]


def map_to_input(m: torch.Tensor, fed: tuple[int, ...], valid: Valid) -> torch.Tensor:
    """A (B, *layer grid) map on the input grid (B, *valid): (bi/tri)linear over the pixels it covers.

    Positions beyond the last one a layer has (floored odd sizes) repeat the edge.
    """
    n = tuple(m.shape[1:])
    covered = tuple(k * layer_stride(size, k) for size, k in zip(fed, n, strict=True))
    up = m[:, None]
    if covered != n:
        up = F.interpolate(up, size=covered, mode=_INTERPOLATION[len(n)], align_corners=False)
    short = [max(0, v - c) for v, c in zip(valid, covered, strict=True)]
    if any(short):
        up = F.pad(up, [p for d in reversed(short) for p in (0, d)], mode="replicate")
    return crop(up[:, 0], valid)


def probabilities_from_logits(logits: torch.Tensor) -> torch.Tensor:
    if logits.shape[1] == 1:
        p = torch.sigmoid(logits[:, 0])
        return torch.stack([1 - p, p], 1)
    return torch.softmax(logits, 1)


def class_seed(logits: torch.Tensor, cls: int, region: torch.Tensor) -> torch.Tensor:
    """d(score)/d(logits) for the Seg-Grad-CAM score: class-``cls`` logits summed over ``region``.

    For a one-channel sigmoid model the background score is the negated logit.
    """
    seed = torch.zeros_like(logits)
    region = region.to(logits.dtype)
    if logits.shape[1] == 1:
        seed[:, 0] = region if cls == 1 else -region
    else:
        seed[:, cls] = region
    return seed


def target_region(target, logits: torch.Tensor, cls: int) -> torch.Tensor:
    """The pixel set of class ``cls``'s score: (B, *spatial) bool on the logits' grid."""
    if callable(target):
        return target(logits, cls)
    if isinstance(target, torch.Tensor):
        return target.to(device=logits.device, dtype=torch.bool)
    if target == "image":
        return torch.ones(logits.shape[0], *logits.shape[2:], dtype=torch.bool, device=logits.device)
    if target == "predicted":
        return labels_from_logits(logits) == cls
    raise InputError(f"Unknown target {target!r}: use 'predicted', 'image', a boolean mask or a (y, x) pixel.")


GradientSink = Callable[[int, dict[str, torch.Tensor], dict[str, torch.Tensor]], None]


def forward_and_gradients(
    net: nn.Module,
    x: torch.Tensor,
    modules: Mapping[str, nn.Module],
    classes: Sequence[int],
    target,
    with_gradients: bool = True,
    on_class: GradientSink | None = None,
    valid: Valid | None = None,
    on_step: Callable[[], None] | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[tuple[str, int], torch.Tensor]]:
    """Logits, hooked activations and, per (layer, class), the gradient of the class score.

    ``valid`` (h, w) or (d, h, w): only that leading corner of ``x`` is image, the rest padding
    that no class score includes.

    With ``on_class``, each class's gradients go to ``on_class(cls, activations, gradients)``
    as soon as they exist and are not kept: only one class's gradients are alive at a time,
    so the next class's backward reuses their memory instead of faulting in fresh pages.
    ``on_step()`` is called after the forward pass and after each class (progress, cancellation).
    """
    track = with_gradients and bool(modules) and bool(classes)
    with torch.no_grad(), hooked(net, modules, track) as acts:
        logits = full_resolution(run_net(net, x))
    if on_step is not None:
        on_step()
    names = list(acts)
    missing = [n for n in modules if n not in acts]
    if missing:
        raise InputError(f"Layer(s) {', '.join(missing)} did not run in the forward pass; pick decoder layers.")
    detached = {n: a.detach() for n, a in acts.items()}
    grads: dict[tuple[str, int], torch.Tensor] = {}
    if track:
        inputs = [acts[n] for n in names]
        for i, cls in enumerate(classes):
            region = target_region(target, logits, cls)
            if valid is not None and tuple(valid) != tuple(logits.shape[2:]):
                inside = torch.zeros_like(region)
                crop(inside, valid)[...] = True
                region = region & inside
            seed = class_seed(logits, cls, region)
            gs = torch.autograd.grad(
                logits, inputs, grad_outputs=seed, retain_graph=i < len(classes) - 1, allow_unused=True
            )
            per_layer = {n: torch.zeros_like(a) if g is None else g for n, a, g in zip(names, inputs, gs, strict=True)}
            del gs, seed
            if on_class is not None:
                on_class(cls, detached, per_layer)
            else:
                grads.update({(n, cls): g for n, g in per_layer.items()})
            del per_layer
            if on_step is not None:
                on_step()
    return logits.detach(), detached, grads


def explain_tensor(
    net: nn.Module,
    x: torch.Tensor,
    layers: Sequence[str],
    classes: Sequence[int],
    method,
    target="predicted",
    valid: Valid | None = None,
    on_step: Callable[[], None] | None = None,
) -> tuple[torch.Tensor, dict[tuple[str, int], torch.Tensor]]:
    """Logits and every (layer, class) map at its layer's resolution, from one forward pass.

    With ``valid`` (h, w) or (d, h, w), the rest of ``x`` is padding: no score and no statistic
    includes it.
    """
    modules = resolve_modules(net, layers)
    maps: dict[tuple[str, int], torch.Tensor] = {}
    fed = tuple(x.shape[2:])
    valid = fed if valid is None else tuple(valid)

    def on_layer(a: torch.Tensor) -> Valid:
        return layer_valid(valid, fed, tuple(a.shape[2:]))

    def take(cls: int, acts: dict[str, torch.Tensor], grads: dict[str, torch.Tensor]) -> None:
        for name in modules:
            maps[name, cls] = method(acts[name], grads[name], on_layer(acts[name]))

    with model_lock(net), eval_mode(net):
        logits, acts, _ = forward_and_gradients(
            net, x, modules, classes, target, method.needs_gradients, take, valid=valid, on_step=on_step
        )
    if not method.needs_gradients:
        for name in modules:
            shared = method(acts[name], None, on_layer(acts[name]))
            maps.update({(name, cls): shared for cls in classes})
    return logits, {(n, c): maps[n, c] for n in modules for c in classes}


@dataclass(frozen=True)
class Job:
    """What a pass computes: the same for a whole-image pass and a tiled one."""

    net: nn.Module
    modules: Mapping[str, nn.Module]
    classes: Sequence[int]
    method: Any  # methods.Method
    target: Any  # "predicted", "image", or a (B, *spatial) bool tensor on the fed grid
    threshold: float = 0.5


def steps_per_pass(job: Job) -> int:
    """Progress steps of one whole-image pass: the forward pass, then one per class's gradients."""
    return 1 + (len(job.classes) if job.modules and job.method.needs_gradients else 0)


def explain_whole(
    job: Job, x: torch.Tensor, logits_out: np.ndarray, maps_out: Mapping, on_step: Callable[[], None] | None = None
) -> None:
    """Fill ``logits_out`` (B, K, *spatial) and ``maps_out`` (B, *spatial) from one pass over ``x``.

    The contract of :func:`tiling.explain_tiled` too. ``spatial`` is the image inside ``x``, which
    carries padding at the end of an axis only where the network needs a larger input.
    """
    valid = tuple(logits_out.shape[2:])
    tgt = predicted(job.threshold) if isinstance(job.target, str) and job.target == "predicted" else job.target
    logits, raw = explain_tensor(
        job.net, x, list(job.modules), job.classes, job.method, tgt, valid=valid, on_step=on_step
    )
    logits_out[...] = crop(logits, valid).cpu().numpy()
    for k, m in raw.items():
        maps_out[k][...] = map_to_input(m, tuple(x.shape[2:]), valid).cpu().numpy()
