"""3D U-Net for lung-nodule patches, as in the classic LIDC reproduction.

Paper: Çiçek et al., "3D U-Net: Learning Dense Volumetric Segmentation from Sparse
Annotation", MICCAI 2016 (arXiv 1606.06650). Code lineage: lee-zq/3DUNet-Pytorch, the
implementation the seed reproduction followed.

What the reproduction changed, and so do we:
  * max-pooling is replaced by 2x2x2 convolutions with stride 2 (learned downsampling);
  * 64x64x32 (x, y, z) single-channel patches at 1 mm, one sigmoid logit per voxel.

Hyper-parameters (defaults):
  base_channels = 32    widths double per level: 32, 64, 128, 256
  depth         = 4     resolution levels (3 downsamplings: 64x64x32 -> 8x8x4 at the bottom)
  norm          = batch BatchNorm3d after every 3x3x3 conv (instance norm as an option)
  dropout       = 0.0   Dropout3d at the bottleneck
  upsampling    = 2x2x2 transposed convolution, then concatenation with the skip
Recipe of the paper preset: Adam, lr 1e-3 with cosine decay, batch 16, Dice+BCE, 100
epochs with early stopping on validation Dice.
"""
from __future__ import annotations

import torch
from torch import nn

from . import register_architecture

__all__ = ["UNet3D"]


def _norm(kind: str, ch: int) -> nn.Module:
    return nn.InstanceNorm3d(ch, affine=True) if kind == "instance" else nn.BatchNorm3d(ch)


class DoubleConv(nn.Module):
    def __init__(self, cin: int, cout: int, norm: str):
        super().__init__()
        self.block = nn.Sequential(
            nn.Conv3d(cin, cout, 3, padding=1, bias=False), _norm(norm, cout), nn.ReLU(inplace=True),
            nn.Conv3d(cout, cout, 3, padding=1, bias=False), _norm(norm, cout), nn.ReLU(inplace=True),
        )

    def forward(self, x):
        return self.block(x)


class Down(nn.Module):
    """2x2x2 stride-2 convolution in place of max-pooling, then a double conv."""

    def __init__(self, cin: int, cout: int, norm: str):
        super().__init__()
        self.down = nn.Sequential(nn.Conv3d(cin, cin, 2, stride=2, bias=False), _norm(norm, cin), nn.ReLU(inplace=True))
        self.conv = DoubleConv(cin, cout, norm)

    def forward(self, x):
        return self.conv(self.down(x))


class Up(nn.Module):
    def __init__(self, cin: int, cskip: int, cout: int, norm: str):
        super().__init__()
        self.up = nn.ConvTranspose3d(cin, cskip, 2, stride=2)
        self.conv = DoubleConv(2 * cskip, cout, norm)

    def forward(self, x, skip):
        return self.conv(torch.cat([self.up(x), skip], dim=1))


class UNet3D(nn.Module):
    def __init__(self, in_channels: int = 1, out_channels: int = 1, base_channels: int = 32,
                 depth: int = 4, norm: str = "batch", dropout: float = 0.0):
        super().__init__()
        widths = [base_channels * 2 ** i for i in range(depth)]
        self.stem = DoubleConv(in_channels, widths[0], norm)
        self.downs = nn.ModuleList(Down(widths[i], widths[i + 1], norm) for i in range(depth - 1))
        self.dropout = nn.Dropout3d(dropout) if dropout > 0 else nn.Identity()
        self.ups = nn.ModuleList(Up(widths[i + 1], widths[i], widths[i], norm) for i in reversed(range(depth - 1)))
        self.head = nn.Conv3d(widths[0], out_channels, 1)
        self.min_divisor = 2 ** (depth - 1)

    def forward(self, x):
        skips = [self.stem(x)]
        for down in self.downs:
            skips.append(down(skips[-1]))
        x = self.dropout(skips.pop())
        for up in self.ups:
            x = up(x, skips.pop())
        return self.head(x)


def _search_space(trial):
    return {"base_channels": trial.suggest_categorical("arch.base_channels", [16, 24, 32]),
            "dropout": trial.suggest_float("arch.dropout", 0.0, 0.3)}


@register_architecture("unet3d", search_space=_search_space)
def unet3d(in_channels: int = 1, out_channels: int = 1, spatial_size=None, **kwargs):
    """The paper's 3D U-Net (base 32, four levels, strided-conv downsampling)."""
    return UNet3D(in_channels, out_channels, **kwargs)
