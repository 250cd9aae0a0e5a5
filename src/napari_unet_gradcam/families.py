"""U-Net families beyond Pytorch-UNet: their decoder layers, and what any network must provide.

The engine needs of a network only its module names and ``forward``. The pipeline also needs
``n_channels``, ``n_classes`` and, for a volume, the size its poolings divide; :func:`conform`
reads those off any ``torch.nn.Module`` that does not carry them (docs/models.md). Families are
recognised by class name and module path, so none of MONAI, nnU-Net or smp is imported here.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import torch
from torch import nn

from .errors import InputError
from .model import DECODER_LAYERS, DOWNSAMPLING

_CONVS = {nn.Conv1d: 1, nn.Conv2d: 2, nn.Conv3d: 3}


def family(net: nn.Module) -> str:
    """The family of a network: "pytorch-unet", "monai", "nnunet", "smp" or "custom"."""
    module = type(net).__module__
    if module.startswith("monai."):
        return "monai"
    if module.startswith("dynamic_network_architectures."):
        return "nnunet"
    if module.startswith("segmentation_models_pytorch."):
        return "smp"
    if module.startswith("napari_unet_gradcam."):
        return "pytorch-unet"
    return "custom"


def _first_conv(net: nn.Module) -> nn.Module | None:
    return next((m for m in net.modules() if type(m) in _CONVS), None)


def spatial_dims(net: nn.Module) -> int:
    """2 or 3: the ``spatial_dims`` attribute, else the kind of the network's first convolution."""
    dims = getattr(net, "spatial_dims", None)
    if dims is None:
        conv = _first_conv(net)
        dims = _CONVS[type(conv)] if conv is not None else 2
    return int(dims)


def _depth_first(names: Sequence[str]) -> list[str]:
    return sorted(names, key=lambda n: (-n.count("."), n))


# smp decoders whose stages are not ``decoder.blocks.<i>`` (Unet, MAnet, Linknet), coarse to fine:
# UNet++'s top row of nested blocks (the path to the logits), FPN's pyramid, PAN's attention
# stages, DeepLabV3+'s ASPP then the block after the skip connection.
_SMP_LAYERS = {
    "UnetPlusPlus": [f"decoder.blocks.x_0_{i}" for i in range(6)],
    "FPN": ["decoder.p5", "decoder.p4", "decoder.p3", "decoder.p2"],
    "PAN": ["decoder.fpa", "decoder.gau3", "decoder.gau2", "decoder.gau1"],
    "DeepLabV3Plus": ["decoder.aspp", "decoder.block2"],
}


def propose_layers(net: nn.Module) -> list[str]:
    """The decoder stages of a known family, coarse to fine; [] for a network not recognised.

    The final 1x1 convolution (the logits) is left out, as Pytorch-UNet's ``outc`` is.
    """
    named = dict(net.named_modules())
    own = getattr(net, "decoder_layers", None)
    if own:
        return [n for n in own if n in named]
    kind, cls = family(net), type(net).__name__
    if kind == "pytorch-unet" and all(n in named for n in DECODER_LAYERS):
        return list(DECODER_LAYERS)
    if kind == "monai" and cls == "BasicUNet":
        return [f"upcat_{i}" for i in (4, 3, 2, 1)]
    if kind == "monai" and cls == "DynUNet":
        return sorted((n for n in named if re.fullmatch(r"upsamples\.\d+", n)), key=lambda n: int(n.split(".")[1]))
    if kind == "monai" and cls == "UNet":
        # Each level is Sequential(down, SkipConnection(deeper), up); the top level's up makes the logits.
        ups = [n for n in named if re.fullmatch(r"model(\.1\.submodule)*\.2", n) and n != "model.2"]
        return _depth_first(ups)
    if kind == "smp" and cls in _SMP_LAYERS:
        return [n for n in _SMP_LAYERS[cls] if n in named]
    if kind == "nnunet" or (kind == "smp" and hasattr(net, "decoder")):
        pattern = r"decoder\.stages\.\d+" if kind == "nnunet" else r"decoder\.blocks\.\d+"
        return sorted((n for n in named if re.fullmatch(pattern, n)), key=lambda n: int(n.rsplit(".", 1)[1]))
    return []


def layer_titles(net: nn.Module, layers: Sequence[str] | None = None) -> dict[str, str]:
    """Readable names for decoder layers: "decoder 1/4 (coarsest): upcat_4" ... "decoder 4/4 (finest): upcat_1"."""
    layers = list(propose_layers(net) if layers is None else layers)
    out = {}
    for i, name in enumerate(layers, 1):
        where = " (coarsest)" if i == 1 and len(layers) > 1 else " (finest)" if i == len(layers) else ""
        out[name] = f"decoder {i}/{len(layers)}{where}: {name}"
    return out


def default_layers(net: nn.Module, layers: Sequence[str]) -> tuple[str, ...]:
    """The API's default (Pytorch-UNet's up1-up4) becomes the family's decoder stages on other networks."""
    named = dict(net.named_modules())
    if tuple(layers) != DECODER_LAYERS or all(n in named for n in DECODER_LAYERS):
        return tuple(layers)
    proposed = propose_layers(net)
    if not proposed:
        raise InputError(
            f"No decoder layers are known for a {type(net).__name__}: pass layers=[...] with module names "
            "of the network (dict(net.named_modules()) lists them), or set net.decoder_layers."
        )
    return tuple(proposed)


def size_divisor(net: nn.Module) -> tuple[int, ...]:
    """Per spatial axis, the factor every input side must be a multiple of (the product of the strides)."""
    dims = spatial_dims(net)
    own = getattr(net, "size_divisor", None)
    if own is not None:
        own = (own,) * dims if isinstance(own, int) else tuple(own)
        return tuple(int(v) for v in own)
    strides = None
    cls = type(net).__name__
    if family(net) == "monai" and cls in ("UNet", "DynUNet"):
        strides = list(getattr(net, "strides", []))
    elif family(net) == "nnunet" and hasattr(net, "encoder"):
        strides = list(getattr(net.encoder, "strides", []))
    elif family(net) == "smp" and isinstance(getattr(getattr(net, "encoder", None), "output_stride", None), int):
        # smp's own check_input_shape: sides divisible by the encoder's output stride
        return (net.encoder.output_stride if getattr(net, "requires_divisible_input_shape", True) else 1,) * dims
    if strides:
        per_axis = [s if isinstance(s, (list, tuple)) else (s,) * dims for s in strides]
        return tuple(math.prod(int(s[d]) for s in per_axis) for d in range(dims))
    return (DOWNSAMPLING,) * dims


def conform(net: nn.Module) -> nn.Module:
    """Give ``net`` the attributes the pipeline reads, when it lacks them; returns ``net``.

    ``n_channels`` is the first convolution's ``in_channels``; ``n_classes`` the channels of the
    full-resolution output on a small probe input of zeros (one forward pass, no gradients).
    """
    if hasattr(net, "n_channels") and hasattr(net, "n_classes"):
        return net
    conv = _first_conv(net)
    if conv is None:
        raise InputError(
            f"A {type(net).__name__} has no Conv2d or Conv3d, so its input channels are unknown: set "
            "net.n_channels and net.n_classes (see docs/models.md)."
        )
    if not hasattr(net, "n_channels"):
        net.n_channels = int(conv.in_channels)
    if not hasattr(net, "n_classes"):
        net.n_classes = _probe_classes(net)
    return net


def _probe_classes(net: nn.Module) -> int:
    from .engine import eval_mode, full_resolution, model_lock

    param = next(net.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    # Twice the divisor: the deepest level keeps 2 positions a side, which instance norms need.
    size = [2 * d for d in size_divisor(net)]
    x = torch.zeros(1, int(net.n_channels), *size, device=device)
    try:
        with model_lock(net), eval_mode(net), torch.no_grad():
            out = full_resolution(net(x))
    except InputError:
        raise
    except Exception as exc:
        raise InputError(
            f"A probe input of shape {tuple(x.shape)} failed in the network ({type(exc).__name__}: "
            f"{str(exc)[:200]}): set net.n_classes, and net.size_divisor if its inputs must be multiples "
            "of another size (see docs/models.md)."
        ) from None
    return int(out.shape[1])


def check_image_size(net: nn.Module, size: Sequence[int]) -> None:
    """Refuse, with the fix, a 2-D image whose sides another family's poolings cannot take.

    Pytorch-UNet pads odd sizes itself; other U-Nets concatenate skip connections that only
    line up when each side is a multiple of the product of the strides.
    """
    if family(net) == "pytorch-unet":
        return
    divisor = size_divisor(net)
    if any(s % d for s, d in zip(size, divisor, strict=True)):
        fit = "x".join(str(-(-s // d) * d) for s, d in zip(size, divisor, strict=True))
        raise InputError(
            f"The image's {'x'.join(map(str, size))} pixels are not multiples of {'x'.join(map(str, divisor))}, "
            f"which this {type(net).__name__}'s poolings need: crop it, or pad it to {fit}."
        )
