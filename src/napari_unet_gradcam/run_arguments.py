"""The public API's arguments checked and normalised before any work, each with one clear message.

Without these, odd values failed deep inside with raw exceptions, or worse, silently: a negative
``batch_size`` left the results uninitialised, and ``tile_size=0`` meant 16-pixel tiles in the API
but "automatic" in the widget.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from .errors import InputError
from .families import conform


def _whole(name: str, value, minimum: int) -> int:
    ok = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        ok, value = True, int(value)
    if not ok or int(value) < minimum:
        raise InputError(f"{name} must be a whole number >= {minimum}; got {value!r}.")
    return int(value)


def tile_size(value) -> int | None:
    """None or 0: automatic (the widget's and the CLI's 0 too); else a side of at least 16 pixels."""
    if value is None:
        return None
    size = _whole("tile_size", value, 0)
    if size == 0:
        return None
    if size < 16:
        raise InputError(f"tile_size {size} is below 16, the U-Net's smallest input: use 0 for automatic, or >= 16.")
    return size


def halo(value) -> int:
    return _whole("halo", value, 0)


def batch_size(value) -> int | None:
    return None if value is None else _whole("batch_size", value, 1)


def memory_budget(value) -> int | None:
    """Bytes the run may use in RAM (results and working memory), instead of the machine's free RAM."""
    return None if value is None else _whole("memory_budget", value, 1)


def channel_axis(value) -> int | None:
    if value is None or (isinstance(value, (int, np.integer)) and not isinstance(value, bool)):
        return None if value is None else int(value)
    raise InputError(f"channel_axis must be an axis index such as 0 or -1 (or None); got {value!r}.")


def layers(value) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if value is None or not all(isinstance(v, str) for v in value):
        raise InputError(
            f"layers must be module names such as 'up4' (or () for labels only); got {value!r}. "
            "napari_unet_gradcam.DECODER_LAYERS lists the decoder's."
        )
    return tuple(value)


def image(value):
    """A torch tensor is taken as its values (detached, on the CPU); anything else as it is."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return value


def model(net) -> nn.Module:
    """The U-Net inside a DataParallel wrapper, refused with a fix if its weights are not float32."""
    if isinstance(net, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        net = net.module
    if not isinstance(net, nn.Module):
        raise InputError("net must be a torch.nn.Module: a Pytorch-UNet from load_model(), or see docs/models.md.")
    dtypes = {p.dtype for p in net.parameters()}
    if dtypes and dtypes != {torch.float32}:
        names = ", ".join(sorted(str(d).replace("torch.", "") for d in dtypes))
        raise InputError(f"The model's weights are {names}; explain and predict run float32: call net.float() first.")
    return conform(net)


def explained_modules(net: nn.Module, names: Sequence[str]) -> None:
    """Refuse layers whose output a later in-place operation overwrites (its gradient would be wrong)."""
    for name in names:
        module = net.get_submodule(name) if name else net
        if isinstance(module, (nn.modules.batchnorm._BatchNorm, nn.ReLU)):
            raise InputError(
                f"Layer {name!r} is a {type(module).__name__} whose output the next in-place ReLU overwrites: "
                "explain a block's output instead (inc, down1-down4, up1-up4, outc, or a convolution)."
            )
