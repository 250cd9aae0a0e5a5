"""milesial/Pytorch-UNet's predict.py, rebuilt from its documented behaviour (not its code).

``BasicDataset.preprocess``: PIL resize to ``int(scale * size)`` with bicubic resampling, channels
first, divide by 255 when any value exceeds 1. ``predict_img``: one forward pass of the unpadded
image, logits upsampled bilinearly (no corner alignment) to the full size, then argmax, or
sigmoid > threshold for a one-channel model. Used to check that our labels are upstream's.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


def upstream_input(image: np.ndarray, scale: float) -> torch.Tensor:
    pil = Image.fromarray(image)
    w, h = pil.size
    pil = pil.resize((int(scale * w), int(scale * h)), resample=Image.Resampling.BICUBIC)
    arr = np.asarray(pil)
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    if (arr > 1).any():
        arr = arr / 255.0
    return torch.from_numpy(np.ascontiguousarray(arr))[None].to(torch.float32)


def upstream_predict(net: torch.nn.Module, image: np.ndarray, scale: float = 1.0, threshold: float = 0.5) -> np.ndarray:
    """Class indices (H, W) as upstream's predict_img returns them."""
    net.eval()
    with torch.no_grad():
        out = net(upstream_input(image, scale))
        out = F.interpolate(out, image.shape[:2], mode="bilinear")
        mask = out.argmax(1) if out.shape[1] > 1 else torch.sigmoid(out)[:, 0] > threshold
    return mask[0].long().numpy()
