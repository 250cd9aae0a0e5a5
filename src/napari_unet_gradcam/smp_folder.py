"""segmentation_models_pytorch (smp) models from the folder ``model.save_pretrained(folder)`` writes.

The folder holds ``config.json`` (the constructor's arguments and ``_model_class``) and
``model.safetensors`` (or a ``.bin``/``.pth`` state_dict). Nothing in it runs: the class comes from
an allow-list, the arguments must be the class's own and plain values, the encoder is built with
``encoder_weights=None`` (smp would otherwise download ImageNet weights), and the weights are read
with safetensors (no pickle) or ``torch.load(..., weights_only=True)``. smp is the optional
``[smp]`` extra: it imports timm and torchvision, whose wheel must match the installed torch.
"""

from __future__ import annotations

import inspect
import os
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .bundles import _build, _finish, _json, _load_weights, default_class_names
from .checkpoint import _read, _split
from .errors import CheckpointError

#: The smp architectures a folder may name, all 2-D encoder-decoders whose decoder stages are known.
SMP_NETWORKS = ("Unet", "UnetPlusPlus", "FPN", "DeepLabV3Plus", "Linknet", "MAnet", "PAN")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.bin", "model.pth", "model.pt")
#: Names and short tokens only ("resnet18", "scse", "nearest"): no value of a config is evaluated,
#: and one that looks like code is refused rather than handed on.
_TOKEN = re.compile(r"[A-Za-z0-9_.\-]{0,100}")
_INSTALL = (
    "pip install 'napari-unet-gradcam[smp]' (smp imports torchvision: install the torchvision release "
    "built for your torch, e.g. torch==2.14.1 with torchvision==0.29.1, or pip may replace torch)"
)


def is_smp_folder(folder: Path) -> bool:
    """A folder with smp's config.json: its ``_model_class``, or an ``encoder_name`` beside ``classes``."""
    path = folder / "config.json"
    if not path.is_file():
        return False
    try:
        config = _json(path)
    except CheckpointError:
        return True  # let load_smp say what is wrong with it
    return "_model_class" in config or {"encoder_name", "classes"} <= set(config)


def _import_smp():
    try:
        import segmentation_models_pytorch as smp
    except Exception as exc:  # ImportError, or torchvision's "operator torchvision::nms does not exist"
        raise CheckpointError(
            f"An smp model folder needs segmentation_models_pytorch, which did not import "
            f"({type(exc).__name__}: {str(exc)[:120]}): {_INSTALL}."
        ) from None
    return smp


def _plain(value: Any, key: str, folder: Path, depth: int = 0) -> Any:
    if depth > 5:
        raise CheckpointError(f"{folder}/config.json: {key} nests too deeply.")
    if isinstance(value, str) and not _TOKEN.fullmatch(value):
        raise CheckpointError(
            f"{folder}/config.json: {key} is {value[:60]!r}, not a name; config values are never evaluated."
        )
    if isinstance(value, list):
        return [_plain(v, key, folder, depth + 1) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v, key, folder, depth + 1) for k, v in value.items()}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise CheckpointError(f"{folder}/config.json: {key} holds a {type(value).__name__}, not a plain value.")


def _check_encoder(smp, name: Any, folder: Path) -> None:
    known = isinstance(name, str) and name in smp.encoders.encoders
    if not known and isinstance(name, str) and name.startswith("tu-"):
        import timm

        known = timm.is_model(name[3:].split(".")[0])
    if not known:
        raise CheckpointError(
            f"{folder}/config.json: encoder_name {name!r} is not an encoder this smp "
            f"({smp.__version__}) knows: save the model with a released smp encoder."
        )


def _weights(folder: Path) -> tuple[dict[str, torch.Tensor], Path]:
    for name in WEIGHT_FILES:
        path = folder / name
        if path.is_file():
            break
    else:
        raise CheckpointError(f"{folder} has config.json but no weights ({', '.join(WEIGHT_FILES)}).")
    if path.suffix != ".safetensors":
        return _split(_read(path), path)[0], path
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(path, device="cpu"), path
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path} could not be read as safetensors ({str(exc)[:200]}).") from None


def load_smp(folder: str | os.PathLike, device: str | torch.device = "auto") -> nn.Module:
    """An smp Unet, UnetPlusPlus, FPN, DeepLabV3Plus, Linknet, MAnet or PAN from its saved folder.

    The config's ``activation`` (e.g. "sigmoid") is left out: the engine explains logits, and
    the activation has no weights. ``net.size_divisor`` is the encoder's output stride.
    """
    folder = Path(folder).expanduser()
    config = _json(folder / "config.json")
    name = config.get("_model_class", "Unet")
    if name not in SMP_NETWORKS:
        raise CheckpointError(
            f"{folder}: the smp architecture is {str(name)[:60]!r}; the loadable ones are "
            f"{', '.join(SMP_NETWORKS)}. Build other networks in Python and pass them to explain()."
        )
    smp = _import_smp()
    cls = getattr(smp, name)
    allowed = {p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "kwargs")}
    allowed.add("decoder_use_batchnorm")  # smp < 0.5's name, which smp still maps to decoder_use_norm
    unknown = sorted(k for k in config if k not in allowed and k != "_model_class")
    if unknown:
        raise CheckpointError(
            f"{folder}/config.json: {', '.join(unknown)[:200]} is not an argument of smp's {name}; "
            "only the architecture's own arguments are read."
        )
    kwargs = {k: _plain(v, k, folder) for k, v in config.items() if k in allowed}
    _check_encoder(smp, kwargs.get("encoder_name", "resnet34"), folder)
    activation = kwargs.pop("activation", None)
    kwargs["encoder_weights"] = None  # never download: the folder's weights replace them
    net = _build(cls, kwargs, folder)
    sd, path = _weights(folder)
    _load_weights(net, sd, path)
    n_out = int(kwargs.get("classes", 1))
    attrs = {"n_channels": int(kwargs.get("in_channels", 3)), "n_classes": n_out, "spatial_dims": 2}
    if activation is not None:
        attrs["smp_activation"] = activation
    return _finish(net, path, device, family="smp", class_names=default_class_names(max(n_out, 2)), **attrs)
