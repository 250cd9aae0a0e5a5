"""Class-activation methods as small pure functions of activations A and gradients G.

A and G have shape (B, C, *spatial): (B, C, h, w) for a 2-D network, (B, C, d, h, w) for a
3-D one; every reduction runs over the spatial axes, whatever their number. Every map is
``relu(sum_k w_k A_k + b)`` for channel-weight methods, or an element-wise function of A and G
for the local ones. Channel weights are built from spatial *sums*, so a tiled run can add the
sums of its tiles and use one global weight per channel, exactly as an untiled run would (see
``tiling.py``). Formulas and papers: docs/methods.md.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

EPS = 1e-7
Stats = dict[str, torch.Tensor]


# sum_k w_k A_k for 2-D and 3-D activations, spelt out: the explicit subscripts keep the 2-D path as it was.
_WEIGHTED = {4: "bc,bchw->bhw", 5: "bc,bcdhw->bdhw"}


def _sum(t: torch.Tensor) -> torch.Tensor:
    return t.sum(dim=tuple(range(2, t.dim())))


def _per_channel(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A (B, C) statistic shaped to broadcast against (B, C, *spatial)."""
    return v.reshape(*v.shape, *(1,) * (like.dim() - 2))


def weighted_map(A: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    cam = torch.einsum(_WEIGHTED.get(A.dim(), "bc,bc...->b..."), w, A)
    if b is not None:
        cam = cam + b.reshape(-1, *(1,) * (cam.dim() - 1))
    return torch.relu(cam)


# -- activation statistics (need no gradients) ---------------------------------------------------
def _act_sum(A: torch.Tensor) -> Stats:
    return {"sum_a": _sum(A)}


def _act_moments(A: torch.Tensor) -> Stats:
    # float64: second moments of large activations overflow float32 long before the map would.
    flat = A.flatten(2).double()
    return {"sum_a": flat.sum(-1), "sum_aa": torch.einsum("bcn,bdn->bcd", flat, flat)}


# -- gradient statistics ---------------------------------------------------------------------------
def _grad_sum(A: torch.Tensor, G: torch.Tensor, astats: Stats) -> Stats:
    return {"sum_g": _sum(G)}


def _grad_times_act(A: torch.Tensor, G: torch.Tensor, astats: Stats) -> Stats:
    return {"sum_ga": _sum(G * A)}


def _gradcampp_stats(A: torch.Tensor, G: torch.Tensor, astats: Stats) -> Stats:
    g2 = G * G
    alpha = g2 / (2 * g2 + _per_channel(astats["sum_a"], G) * g2 * G + EPS)
    alpha = torch.where(G != 0, alpha, torch.zeros_like(alpha))
    return {"sum_alpha_relu_g": _sum(alpha * torch.relu(G))}


# -- channel weights from the (global) sums --------------------------------------------------------
def _w_gradcam(a: Stats, g: Stats, n: int):
    return g["sum_g"] / n, None


def _w_gradcampp(a: Stats, g: Stats, n: int):
    return g["sum_alpha_relu_g"], None


def _w_xgradcam(a: Stats, g: Stats, n: int):
    return g["sum_ga"] / (a["sum_a"] + EPS), None


def _w_eigencam(a: Stats, g: Stats, n: int):
    mean = a["sum_a"].double() / n
    cov = a["sum_aa"].double() / n - mean[:, :, None] * mean[:, None, :]
    if not torch.isfinite(cov).all():
        return torch.zeros_like(mean).float(), torch.zeros(mean.shape[0], dtype=torch.float32, device=mean.device)
    _, vecs = torch.linalg.eigh(cov)
    v = vecs[..., -1]  # first principal component
    # An eigenvector's sign is arbitrary: choose the one whose map rises with the total activation.
    sign = torch.sign(torch.einsum("bc,bcd->b", v, cov))
    v = v * torch.where(sign == 0, torch.ones_like(sign), sign)[:, None]
    return v.float(), -(v * mean).sum(1).float()


# -- local (element-wise) maps ---------------------------------------------------------------------
def _hirescam(A: torch.Tensor, G: torch.Tensor) -> torch.Tensor:
    return torch.relu((G * A).sum(1))


def _layercam(A: torch.Tensor, G: torch.Tensor) -> torch.Tensor:
    return torch.relu((torch.relu(G) * A).sum(1))


@dataclass(frozen=True)
class Method:
    name: str
    title: str
    needs_gradients: bool
    local: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    act_stats: Callable[[torch.Tensor], Stats] | None = None
    grad_stats: Callable[[torch.Tensor, torch.Tensor, Stats], Stats] | None = None
    weights: Callable | None = None

    def __call__(
        self, A: torch.Tensor, G: torch.Tensor | None = None, valid: tuple[int, ...] | None = None
    ) -> torch.Tensor:
        """The map of one image, its statistics taken over the leading ``valid`` positions of each axis.

        Positions outside ``valid`` (padding) still get a map value but weigh in no statistic.
        """
        if self.local is not None:
            return self.local(A, G)
        valid = tuple(valid) if valid is not None else tuple(A.shape[2:])
        crop = (..., *(slice(0, v) for v in valid))
        Av = A[crop]
        Gv = G[crop] if G is not None else None
        astats = self.act_stats(Av) if self.act_stats else {}
        gstats = self.grad_stats(Av, Gv, astats) if self.grad_stats else {}
        w, b = self.weights(astats, gstats, math.prod(valid))
        return weighted_map(A, w, b)


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("gradcam", "Grad-CAM", True, grad_stats=_grad_sum, weights=_w_gradcam),
        Method("hirescam", "HiResCAM", True, local=_hirescam),
        Method("gradcam++", "Grad-CAM++", True, act_stats=_act_sum, grad_stats=_gradcampp_stats, weights=_w_gradcampp),
        Method("xgradcam", "XGrad-CAM", True, act_stats=_act_sum, grad_stats=_grad_times_act, weights=_w_xgradcam),
        Method("layercam", "LayerCAM", True, local=_layercam),
        Method("eigencam", "EigenCAM", False, act_stats=_act_moments, weights=_w_eigencam),
    )
}


def get_method(name: str) -> Method:
    from .errors import InputError

    key = str(name).lower().replace("-", "").replace("_", "")
    key = {"gradcampp": "gradcam++", "gradcamplusplus": "gradcam++"}.get(key, key)
    if key not in METHODS:
        raise InputError(f"Unknown method {name!r}: choose one of {', '.join(METHODS)}.")
    return METHODS[key]
