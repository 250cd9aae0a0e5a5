"""Grad-CAM for Pytorch-UNet segmentation models, as a library and as a napari plugin."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("napari-unet-gradcam")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

from .checkpoint import load_model, save_checkpoint  # noqa: E402
from .errors import Cancelled, CheckpointError, InputError, UnetGradcamError  # noqa: E402
from .instances import instance_labels  # noqa: E402
from .model import DECODER_LAYERS, UNet  # noqa: E402
from .pipeline import ExplainResult, explain, predict  # noqa: E402

__all__ = [
    "Cancelled",
    "CheckpointError",
    "DECODER_LAYERS",
    "ExplainResult",
    "InputError",
    "UNet",
    "UnetGradcamError",
    "__version__",
    "explain",
    "instance_labels",
    "load_model",
    "predict",
    "save_checkpoint",
]
