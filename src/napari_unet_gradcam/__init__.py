"""Grad-CAM for Pytorch-UNet segmentation models, as a library and as a napari plugin.

The public names are imported on first use (PEP 562), so ``import napari_unet_gradcam``, napari's
sample data and reading the manifest do not import torch (about 4 s cold).
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from ._version import __version__

# public name -> submodule that defines it
_LAZY = {
    "load_model": "checkpoint",
    "save_checkpoint": "checkpoint",
    "Cancelled": "errors",
    "CheckpointError": "errors",
    "InputError": "errors",
    "MapChecks": "faithfulness",
    "check_maps": "faithfulness",
    "UnetGradcamError": "errors",
    "instance_labels": "instances",
    "DECODER_LAYERS": "model",
    "UNet": "model",
    "ExplainResult": "pipeline",
    "explain": "pipeline",
    "predict": "pipeline",
}

__all__ = [
    "Cancelled",
    "CheckpointError",
    "DECODER_LAYERS",
    "ExplainResult",
    "InputError",
    "MapChecks",
    "UNet",
    "UnetGradcamError",
    "__version__",
    "check_maps",
    "explain",
    "instance_labels",
    "load_model",
    "predict",
    "save_checkpoint",
]

if TYPE_CHECKING:  # what static tools and IDEs see
    from .checkpoint import load_model, save_checkpoint
    from .errors import Cancelled, CheckpointError, InputError, UnetGradcamError
    from .faithfulness import MapChecks, check_maps
    from .instances import instance_labels
    from .model import DECODER_LAYERS, UNet
    from .pipeline import ExplainResult, explain, predict


def __getattr__(name: str) -> Any:
    try:
        module = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
