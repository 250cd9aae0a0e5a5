"""Explaining one large image in overlapping tiles, with global Grad-CAM channel weights.

Grad-CAM's weights are means over the whole target region, so tiles must not each get their
own. A tiled run makes up to three passes over the tiles:

1. forward only: stitched logits (hence the labels that fix the target region) and the
   activation sums some methods need;
2. forward + gradients: gradient sums over each tile's core, and the maps of local methods;
3. forward only: each tile's map from the now global channel weights.

Tiles overlap by ``halo`` pixels on each side; only each tile's core is kept or counted.
Nothing is padded: every tile starts at a multiple of 16, so its poolings fall on the same
grid as a whole-image pass, and the tiles at the bottom and right end where the image ends,
floored by the poolings exactly as the whole image is.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

import numpy as np
import torch

from .engine import Job, forward_and_gradients, full_resolution, hooked, labels_from_logits, layer_stride, map_to_input
from .fast_paths import run_net
from .methods import Method, weighted_map
from .model import DOWNSAMPLING

Box = tuple[int, int, int, int]  # y0, y1, x0, x1


def _span(start: int, stop: int, size: int, halo: int) -> tuple[int, int]:
    """A core's extent along one axis: ``halo`` more each side, starting on the 16-pixel grid, >= 16 long."""
    lo = min(start - halo, (size - DOWNSAMPLING) // DOWNSAMPLING * DOWNSAMPLING)
    return max(0, lo), min(size, stop + halo)


def tile_boxes(h: int, w: int, tile: int, halo: int) -> Iterator[tuple[Box, Box]]:
    """(core, extent) boxes covering an (h, w) image (sides >= 16); ``tile`` and ``halo`` multiples of 16."""
    for y0 in range(0, h, tile):
        for x0 in range(0, w, tile):
            y1, x1 = min(y0 + tile, h), min(x0 + tile, w)
            yield (y0, y1, x0, x1), (*_span(y0, y1, h, halo), *_span(x0, x1, w, halo))


def round_halo(halo: int) -> int:
    """Up to a multiple of 16, so that tiles start on the poolings' grid."""
    return max(0, -(-int(halo) // DOWNSAMPLING) * DOWNSAMPLING)


def _core_in(t: torch.Tensor, core: Box, ext: Box) -> torch.Tensor:
    """The core of a tile's tensor, on that tensor's own grid (a layer may be coarser than the input)."""
    sy = layer_stride(ext[1] - ext[0], t.shape[-2])
    sx = layer_stride(ext[3] - ext[2], t.shape[-1])
    y0, y1 = (core[0] - ext[0]) // sy, -(-(core[1] - ext[0]) // sy)
    x0, x1 = (core[2] - ext[2]) // sx, -(-(core[3] - ext[2]) // sx)
    return t[..., y0:y1, x0:x1]


def _place(out: np.ndarray, m: torch.Tensor, core: Box, ext: Box, upsample: bool = True) -> None:
    """Write a tile's core into ``out``, bringing a layer map to the input grid first."""
    if upsample:
        size = (ext[1] - ext[0], ext[3] - ext[2])
        m = map_to_input(m, size, size)
    part = m[..., core[0] - ext[0] : core[1] - ext[0], core[2] - ext[2] : core[3] - ext[2]]
    out[..., core[0] : core[1], core[2] : core[3]] = part.cpu().numpy()


def _add(acc: dict, key, stats: Mapping[str, torch.Tensor]) -> None:
    slot = acc.setdefault(key, {})
    for k, v in stats.items():
        slot[k] = slot[k] + v if k in slot else v.clone()


def explain_tiled(
    job: Job,
    x: torch.Tensor,
    tile: int,
    halo: int,
    step: Callable[[], None],
    logits_out: np.ndarray,
    maps_out: Mapping[tuple[str, int], np.ndarray],
) -> None:
    """Fill ``logits_out`` (B, K, h, w) and ``maps_out`` (B, h, w) for an (unpadded) batch ``x``.

    The same contract as a whole-image pass. Results go straight into the caller's arrays,
    tile by tile, so the working memory is a few tiles' worth whatever the image size.
    """
    net, modules, classes = job.net, job.modules, job.classes
    method, target, threshold = job.method, job.target, job.threshold
    h, w = x.shape[-2:]
    boxes = list(tile_boxes(h, w, tile, halo))
    labels = torch.zeros(x.shape[0], h, w, dtype=torch.int16, device=x.device)
    astats: dict = {}
    counts: dict[str, int] = {}
    with torch.no_grad():
        for core, ext in boxes:
            xt = x[..., ext[0] : ext[1], ext[2] : ext[3]]
            with hooked(net, modules, track=False) as acts:
                logits = _core_in(full_resolution(run_net(net, xt)), core, ext)
            labels[:, core[0] : core[1], core[2] : core[3]] = labels_from_logits(logits, threshold).to(torch.int16)
            _place(logits_out, logits, core, core, upsample=False)
            for name, a in acts.items():
                a_core = _core_in(a, core, ext)
                counts[name] = counts.get(name, 0) + a_core.shape[-2] * a_core.shape[-1]
                if method.act_stats:
                    _add(astats, name, method.act_stats(a_core))
            step()

    def tile_target(ext: Box):
        """The target as one tile sees it: a mask cut to the tile, "predicted" from the stitched labels."""
        if isinstance(target, torch.Tensor):
            return target[:, ext[0] : ext[1], ext[2] : ext[3]]
        if target == "predicted":  # the whole image's labels, not the tile's own
            return lambda logits, cls: labels[:, ext[0] : ext[1], ext[2] : ext[3]] == cls
        return target

    gstats: dict = {}
    if method.needs_gradients and modules and classes:
        for core, ext in boxes:
            xt = x[..., ext[0] : ext[1], ext[2] : ext[3]]

            def take(cls: int, acts: dict, grads: dict, core=core, ext=ext) -> None:
                for name, g in grads.items():
                    a = acts[name]
                    if method.local is not None:
                        _place(maps_out[name, cls], method.local(a, g), core, ext)
                    else:
                        a_core, g_core = _core_in(a, core, ext), _core_in(g, core, ext)
                        _add(gstats, (name, cls), method.grad_stats(a_core, g_core, astats.get(name, {})))

            forward_and_gradients(net, xt, modules, classes, tile_target(ext), on_class=take)
            step()
    if method.local is None and modules and classes:
        # One global weight per channel, from the sums over every tile's part of the image.
        weights = {
            (n, c): method.weights(astats.get(n, {}), gstats.get((n, c), {}), counts[n])
            for n in modules
            for c in classes
        }
        with torch.no_grad():
            for core, ext in boxes:
                with hooked(net, modules, track=False) as acts:
                    run_net(net, x[..., ext[0] : ext[1], ext[2] : ext[3]])
                for (name, cls), (wk, b) in weights.items():
                    _place(maps_out[name, cls], weighted_map(acts[name], wk, b), core, ext)
                step()


def n_passes(method: Method, explaining: bool) -> int:
    if not explaining:
        return 1
    return 1 + int(method.needs_gradients) + int(method.local is None)
