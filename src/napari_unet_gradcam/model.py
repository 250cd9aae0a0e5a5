"""The U-Net of milesial/Pytorch-UNet, with the same module names and state_dict keys.

Upstream checkpoints load into it unchanged. Two additions, both off for the upstream
defaults: ``width`` (64 upstream) so the project can ship a small model, and ``conv_bias``
for the 2020-2021 releases whose 3x3 convolutions carried biases.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import fast_paths

DECODER_LAYERS = ("up1", "up2", "up3", "up4")
ALL_LAYERS = ("inc", "down1", "down2", "down3", "down4", *DECODER_LAYERS, "outc")
#: Four 2x poolings: height and width must be multiples of this for aligned skip connections.
DOWNSAMPLING = 16


class DoubleConv(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, mid_ch: int | None = None, bias: bool = False):
        super().__init__()
        mid_ch = mid_ch or out_ch
        self.double_conv = nn.Sequential(
            nn.Conv2d(in_ch, mid_ch, kernel_size=3, padding=1, bias=bias),
            nn.BatchNorm2d(mid_ch),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid_ch, out_ch, kernel_size=3, padding=1, bias=bias),
            nn.BatchNorm2d(out_ch),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if fast_paths.applies(self, x):
            return fast_paths.double_conv(self, None, x)
        return self.double_conv(x)


class Down(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, bias: bool = False):
        super().__init__()
        self.maxpool_conv = nn.Sequential(nn.MaxPool2d(2), DoubleConv(in_ch, out_ch, bias=bias))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.maxpool_conv(x)


class Up(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, bilinear: bool = True, bias: bool = False):
        super().__init__()
        if bilinear:
            self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)
            self.conv = DoubleConv(in_ch, out_ch, in_ch // 2, bias=bias)
        else:
            self.up = nn.ConvTranspose2d(in_ch, in_ch // 2, kernel_size=2, stride=2)
            self.conv = DoubleConv(in_ch, out_ch, bias=bias)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        x1 = self.up(x1)
        # Upstream pads the upsampled map so odd sizes still concatenate with the skip.
        dy = x2.size(2) - x1.size(2)
        dx = x2.size(3) - x1.size(3)
        if dx or dy:  # a zero pad would still copy, forward and backward
            x1 = F.pad(x1, [dx // 2, dx - dx // 2, dy // 2, dy - dy // 2])
        if fast_paths.applies(self.conv, x2, x1):
            return fast_paths.double_conv(self.conv, x2, x1)
        return self.conv(torch.cat([x2, x1], dim=1))


class OutConv(nn.Module):
    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class UNet(nn.Module):
    """milesial/Pytorch-UNet's ``UNet``; ``width=64`` is the upstream network."""

    def __init__(
        self,
        n_channels: int,
        n_classes: int,
        bilinear: bool = False,
        width: int = 64,
        conv_bias: bool = False,
    ):
        super().__init__()
        self.n_channels = n_channels
        self.n_classes = n_classes
        self.bilinear = bilinear
        self.width = width
        self.conv_bias = conv_bias
        w, b = width, conv_bias
        factor = 2 if bilinear else 1
        self.inc = DoubleConv(n_channels, w, bias=b)
        self.down1 = Down(w, 2 * w, bias=b)
        self.down2 = Down(2 * w, 4 * w, bias=b)
        self.down3 = Down(4 * w, 8 * w, bias=b)
        self.down4 = Down(8 * w, 16 * w // factor, bias=b)
        self.up1 = Up(16 * w, 8 * w // factor, bilinear, bias=b)
        self.up2 = Up(8 * w, 4 * w // factor, bilinear, bias=b)
        self.up3 = Up(4 * w, 2 * w // factor, bilinear, bias=b)
        self.up4 = Up(2 * w, w, bilinear, bias=b)
        self.outc = OutConv(w, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.inc(x)
        x2 = self.down1(x1)
        x3 = self.down2(x2)
        x4 = self.down3(x3)
        x5 = self.down4(x4)
        x = self.up1(x5, x4)
        x = self.up2(x, x3)
        x = self.up3(x, x2)
        x = self.up4(x, x1)
        return self.outc(x)
