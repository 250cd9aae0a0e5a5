"""The per-block passes of a tiled run, public so that any scheduler can run them.

Grad-CAM's channel weights are global (means over the whole target region), and every method's
statistics are spatial sums, so one large image is explained in up to three passes over blocks,
with a small reduction between them:

1. :func:`forward_block` -> the block core's logits (hence labels) and activation :class:`Sums`;
   add every block's sums (``a + b``, any order or tree);
2. :func:`gradient_block` (methods with gradients) -> gradient :class:`Sums` given pass 1's
   global sums and the *whole image's* labels over the block's extent; or, for local methods
   (HiResCAM, LayerCAM), the core's maps directly; add every block's sums;
3. :func:`channel_weights` from the global sums, then :func:`maps_block` -> the core's maps.

:func:`passes` says which passes a method needs. ``tiling.explain_tiled`` (one process) calls
exactly these functions; a distributed graph can call them on workers and reduce the sums.

A block is a ``core`` box, the part of the image it is responsible for, inside an ``extent``
box, the part it reads (``halo`` pixels more each side; :func:`tiling.tile_boxes`). Boxes are
``(y0, y1, x0, x1)`` in the image's pixels, ``(z0, z1, y0, y1, x0, x1)`` for a volume; ``x`` is
the preprocessed input over the extent, ``(B, C, ey, ex)`` (or ``(B, C, ez, ey, ex)``) float32 on
the model's device. Every result covers the core only.
Sums and weights live on the CPU (small: a few hundred floats per layer and class), so they
pickle and add anywhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import torch

from .engine import Job, forward_and_gradients, full_resolution, hooked, layer_stride, map_to_input
from .fast_paths import run_net
from .methods import Method, Stats, weighted_map

Box = tuple[int, ...]  # y0, y1, x0, x1 (2-D) or z0, z1, y0, y1, x0, x1 (3-D)
MapKey = tuple[str, int]  # (layer, class)
Weights = dict[MapKey, tuple[torch.Tensor, torch.Tensor | None]]


@dataclass
class Sums:
    """Spatial sums over block cores; ``a + b`` adds two sets (blocks of one image, one slice batch)."""

    act: dict[str, Stats] = field(default_factory=dict)  # per layer
    grad: dict[MapKey, Stats] = field(default_factory=dict)  # per (layer, class)
    counts: dict[str, int] = field(default_factory=dict)  # positions of each layer summed over

    def __add__(self, other: Sums) -> Sums:
        return Sums(_add(self.act, other.act), _add(self.grad, other.grad), _add_counts(self.counts, other.counts))


def _add(a: dict, b: dict) -> dict:
    out = {k: dict(v) for k, v in a.items()}
    for key, stats in b.items():
        slot = out.setdefault(key, {})
        for name, v in stats.items():
            slot[name] = slot[name] + v if name in slot else v
    return out


def _add_counts(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
    return {k: a.get(k, 0) + b.get(k, 0) for k in dict.fromkeys([*a, *b])}


def _cpu(stats: Stats) -> Stats:
    return {k: v.detach().cpu() for k, v in stats.items()}


def extent_size(ext: Box) -> tuple[int, ...]:
    return tuple(ext[i + 1] - ext[i] for i in range(0, len(ext), 2))


def box_slices(box: Box, origin: Box | None = None) -> tuple[slice, ...]:
    """Slices of the last ``len(box) // 2`` axes: ``box`` in the image, or inside ``origin``'s extent."""
    lo = [0] * (len(box) // 2) if origin is None else origin[::2]
    return tuple(slice(box[2 * d] - o, box[2 * d + 1] - o) for d, o in enumerate(lo))


def core_of(t: torch.Tensor, core: Box, ext: Box) -> torch.Tensor:
    """The core of a block's tensor, on that tensor's own grid (a layer may be coarser than the input)."""
    n = len(core) // 2
    cut = []
    for d, size in enumerate(extent_size(ext)):
        s = layer_stride(size, t.shape[d - n])
        cut.append(slice((core[2 * d] - ext[2 * d]) // s, -(-(core[2 * d + 1] - ext[2 * d]) // s)))
    return t[(..., *cut)]


def _core_map(m: torch.Tensor, core: Box, ext: Box) -> np.ndarray:
    """A layer map over the extent brought to the input grid, cut to the core: (B, cy, cx) float32."""
    size = extent_size(ext)
    return map_to_input(m, size, size)[(..., *box_slices(core, ext))].cpu().numpy()


def passes(method: Method, explaining: bool) -> tuple[str, ...]:
    """The passes a tiled run of ``method`` makes: "forward", then "gradients" and/or "maps"."""
    if not explaining:
        return ("forward",)
    return (
        ("forward",) + (("gradients",) if method.needs_gradients else ()) + (("maps",) if method.local is None else ())
    )


def forward_block(job: Job, x: torch.Tensor, core: Box, ext: Box) -> tuple[torch.Tensor, Sums]:
    """Pass 1: the core's logits (B, K, cy, cx) and the activation sums over the core.

    Labels and probabilities come from the logits (``engine.labels_from_logits``,
    ``engine.probabilities_from_logits``); a "predicted" target needs the labels of every block.
    """
    sums = Sums()
    with torch.no_grad(), hooked(job.net, job.modules, track=False) as acts:
        logits = core_of(full_resolution(run_net(job.net, x)), core, ext)
    for name, a in acts.items():
        a_core = core_of(a, core, ext)
        sums.counts[name] = int(np.prod(a_core.shape[2:]))
        if job.method.act_stats:
            sums.act[name] = _cpu(job.method.act_stats(a_core))
    return logits, sums


def _block_target(job: Job, labels: torch.Tensor | None):
    """The target as a block sees it: "predicted" from the whole image's labels, not the block's own."""
    if isinstance(job.target, str) and job.target == "predicted":
        if labels is None:
            raise ValueError("a 'predicted' target needs the whole image's labels over the block's extent")
        return lambda logits, cls: labels.to(logits.device) == cls
    return job.target


def gradient_block(
    job: Job, x: torch.Tensor, core: Box, ext: Box, act_sums: Sums, labels: torch.Tensor | None = None
) -> tuple[Sums, dict[MapKey, np.ndarray]]:
    """Pass 2: gradient sums over the core for channel-weight methods, or the core's maps for local ones.

    ``act_sums``: pass 1's sums over the whole image (Grad-CAM++ needs them). ``labels``
    (B, ey, ex): the whole image's labels over the extent, for a "predicted" target (-1 where
    the extent is padding, which no class includes). A mask target is ``job.target`` cut to the
    extent, a (B, ey, ex) bool tensor.
    """
    method, sums, maps = job.method, Sums(), {}
    device = x.device

    def take(cls: int, acts: dict, grads: dict) -> None:
        for name, g in grads.items():
            a = acts[name]
            if method.local is not None:
                maps[name, cls] = _core_map(method.local(a, g), core, ext)
            else:
                astats = {k: v.to(device) for k, v in act_sums.act.get(name, {}).items()}
                stats = method.grad_stats(core_of(a, core, ext), core_of(g, core, ext), astats)
                sums.grad[name, cls] = _cpu(stats)

    forward_and_gradients(job.net, x, job.modules, job.classes, _block_target(job, labels), on_class=take)
    return sums, maps


def channel_weights(job: Job, sums: Sums) -> Weights:
    """One weight per channel (and a bias for EigenCAM) for every (layer, class), from global sums."""
    method = job.method
    return {
        (n, c): method.weights(sums.act.get(n, {}), sums.grad.get((n, c), {}), sums.counts[n])
        for n in job.modules
        for c in job.classes
    }


def maps_block(job: Job, x: torch.Tensor, core: Box, ext: Box, weights: Weights) -> dict[MapKey, np.ndarray]:
    """Pass 3: the core's maps (B, cy, cx) on the input grid from the global channel weights."""
    with torch.no_grad(), hooked(job.net, job.modules, track=False) as acts:
        run_net(job.net, x)
        out = {}
        for (name, cls), (w, b) in weights.items():
            w = w.to(x.device)
            b = None if b is None else b.to(x.device)
            out[name, cls] = _core_map(weighted_map(acts[name], w, b), core, ext)
    return out


def job_for_extent(job: Job, ext: Box) -> Job:
    """``job`` as a block over ``ext`` sees it: a mask target cut to the extent."""
    if isinstance(job.target, torch.Tensor):
        return replace(job, target=job.target[(slice(None), *box_slices(ext))])
    return job
