"""What an MLflow-logged network is wrapped in: a check of the input's spatial size.

A logged model accepts any patch size its network can take (the signature leaves the spatial
dimensions free); a network that does not pad its input itself (``unet3d``: every level halves
the grid, so each axis must be divisible by 2^(depth-1), its ``min_divisor``) would otherwise
fail deep inside with a shape mismatch. ``SpatialSizeCheck`` refuses such an input first, in one
line that says which multiple is needed. Networks that pad their inputs (``PadToMultiple``,
TransFuse, MCTrans) need no multiple: 1 on every axis.
"""
from __future__ import annotations

from torch import nn

from benchmark.core.errors import UsageError


def required_multiple(model: nn.Module) -> tuple[int, int, int]:
    """The multiple each spatial axis (z, y, x) of an input must be: the network's ``min_divisor``
    (an int or three) where it declares one, else 1 (it pads, or takes any size)."""
    m = getattr(model, "min_divisor", 1)
    return tuple(int(v) for v in m) if isinstance(m, (tuple, list)) else (int(m),) * 3


class SpatialSizeCheck(nn.Module):
    """``model``, refusing an input whose (Z, Y, X) is not a multiple of ``multiple_zyx``."""

    def __init__(self, model: nn.Module, multiple_zyx: tuple[int, int, int]):
        super().__init__()
        self.model = model
        self.multiple_zyx = tuple(int(m) for m in multiple_zyx)

    def forward(self, x):
        size = tuple(int(s) for s in x.shape[2:])
        if len(size) != 3:
            raise UsageError(f"expected an input (B, 1, Z, Y, X), got shape {tuple(x.shape)}")
        if any(s % m for s, m in zip(size, self.multiple_zyx)):
            fit = tuple(-(-s // m) * m for s, m in zip(size, self.multiple_zyx))
            raise UsageError(f"input size {size} (z, y, x) is not a multiple of {self.multiple_zyx}, which this "
                             f"network needs; pad it, e.g. to {fit}")
        return self.model(x)

    def extra_repr(self) -> str:
        return f"multiple_zyx={self.multiple_zyx}"
