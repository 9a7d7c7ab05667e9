"""Shared plumbing for architectures whose networks need particular input sizes.

Two helpers, used by the library wrappers (nnU-Net, smp U-Net, SwinUNETR, UNETR, DiNTS) and
by BiO-Net / BiX-Net:

* :func:`plan_strides` — nnU-Net's rule for how often each axis of a patch may be halved, so
  every network built for a patch pools it the way nnU-Net's planner would;
* :class:`PadToMultiple` — pad the input up to a multiple, run the network, crop every output
  back, so one registered network accepts the smoke (8,16,16), cpu (16,32,32) and paper
  (32,64,64) patches and any odd size in between.

This module registers nothing; it is imported by the architecture files.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch.nn.functional as F
from torch import nn

from benchmark.core.errors import UsageError

__all__ = ["plan_strides", "total_stride", "PadToMultiple"]

#: nnU-Net's ``UNet_featuremap_min_edge_length``: no axis of the bottleneck is shorter than this.
MIN_FEATURE_MAP_SIZE = 4


def plan_strides(spatial_size: Sequence[int], n_pools: int | None = None,
                 min_size: int = MIN_FEATURE_MAP_SIZE) -> list[tuple[int, int, int]]:
    """Per-stage pooling strides in tensor order (z, y, x) for a patch, as nnU-Net plans them.

    The rule (nnU-Net v2 ``get_pool_and_conv_props`` for isotropic spacing, which is what every
    preset of this benchmark resamples to): at each stage, halve every axis that is still at least
    ``2 * min_size`` voxels long, so no axis of the deepest feature map falls below ``min_size``;
    when only one axis is left it is halved only while it is at least ``3 * min_size`` long. Sizes
    round up when halved (the input is padded to the resulting multiple, see :class:`PadToMultiple`).
    nnU-Net's spacing-ratio condition is omitted because all presets use isotropic voxels.

    ``n_pools=None`` returns as many stages as the rule allows (nnU-Net's own depth). A fixed
    ``n_pools`` (networks with a set number of levels) truncates the plan or pads it with
    ``(1, 1, 1)`` stages that keep the resolution.
    """
    size = [int(s) for s in spatial_size]
    if len(size) != 3 or min(size) < 1:
        raise ValueError(f"spatial_size must be three positive ints (z, y, x), got {tuple(spatial_size)}")
    strides: list[tuple[int, int, int]] = []
    while n_pools is None or len(strides) < n_pools:
        axes = [a for a in range(3) if size[a] >= 2 * min_size]
        if len(axes) == 1 and size[axes[0]] < 3 * min_size:
            axes = []
        if not axes:
            break
        strides.append(tuple(2 if a in axes else 1 for a in range(3)))
        size = [math.ceil(s / 2) if a in axes else s for a, s in enumerate(size)]
    if n_pools is not None:
        strides += [(1, 1, 1)] * (n_pools - len(strides))
    return strides


def total_stride(strides: Sequence[Sequence[int]]) -> tuple[int, int, int]:
    """Product of per-stage strides: the multiple each input axis must be divisible by."""
    out = [1, 1, 1]
    for s in strides:
        out = [o * int(v) for o, v in zip(out, s)]
    return tuple(out)


class PadToMultiple(nn.Module):
    """Zero-pad the input's (D, H, W) up to a multiple of ``multiple_zyx``; crop the outputs back.

    Padding goes on the high side of each axis only, so a coarse deep-supervision output at 1/f
    resolution is cropped exactly to ``ceil(size / f)`` voxels. Zeros (not replicate/reflect
    padding) because the benchmark runs with deterministic algorithms and CUDA has no
    deterministic backward for replication or reflection padding.

    ``min_size_zyx`` pads small inputs further, for networks whose deepest feature map must keep
    more than one voxel (instance norm over a single voxel is undefined). ``fixed_size_zyx`` is for
    networks built for one input size (UNETR's position embedding): inputs are padded to exactly
    that size, and a larger input is refused with a message.

    A list/tuple output (deep supervision) is cropped element by element; the wrapped module's
    ``deep_supervision_weights`` are re-exposed so losses find them on the wrapper.
    """

    def __init__(self, module: nn.Module, multiple_zyx: int | Sequence[int] = 1,
                 min_size_zyx: Sequence[int] | None = None, fixed_size_zyx: Sequence[int] | None = None):
        super().__init__()
        self.module = module
        if isinstance(multiple_zyx, int):
            multiple_zyx = (multiple_zyx,) * 3
        self.multiple_zyx = tuple(int(m) for m in multiple_zyx)
        self.min_size_zyx = (1, 1, 1) if min_size_zyx is None else tuple(int(s) for s in min_size_zyx)
        self.fixed_size_zyx = None if fixed_size_zyx is None else tuple(int(s) for s in fixed_size_zyx)
        if len(self.multiple_zyx) != 3 or min(self.multiple_zyx) < 1:
            raise ValueError(f"multiple_zyx must be three positive ints, got {multiple_zyx}")
        if hasattr(module, "deep_supervision_weights"):
            self.deep_supervision_weights = list(module.deep_supervision_weights)

    def padded_size(self, size: Sequence[int]) -> tuple[int, int, int]:
        if self.fixed_size_zyx is not None:
            if any(s > f for s, f in zip(size, self.fixed_size_zyx)):
                raise UsageError(f"{type(self.module).__name__} was built for inputs up to "
                                 f"{self.fixed_size_zyx} (z, y, x) and got {tuple(size)}; build it with "
                                 f"spatial_size={tuple(size)}")
            return self.fixed_size_zyx
        return tuple(math.ceil(max(s, lo) / m) * m for s, lo, m in zip(size, self.min_size_zyx, self.multiple_zyx))

    def forward(self, x):
        size = tuple(x.shape[2:])
        target = self.padded_size(size)
        if target == size:
            return self.module(x)
        # F.pad lists the last axis first: (x_lo, x_hi, y_lo, y_hi, z_lo, z_hi).
        pad = []
        for s, t in zip(reversed(size), reversed(target)):
            pad += [0, t - s]
        out = self.module(F.pad(x, pad))
        if isinstance(out, (list, tuple)):
            return type(out)(self._crop(o, size, target) for o in out)
        return self._crop(out, size, target)

    @staticmethod
    def _crop(out, size, padded):
        # An output at 1/f of the padded input keeps ceil(size / f) voxels per axis.
        keep = [math.ceil(s * o / p) for s, o, p in zip(size, out.shape[2:], padded)]
        return out[:, :, :keep[0], :keep[1], :keep[2]]

    def extra_repr(self) -> str:
        if self.fixed_size_zyx is not None:
            return f"fixed_size_zyx={self.fixed_size_zyx}"
        extra = "" if self.min_size_zyx == (1, 1, 1) else f", min_size_zyx={self.min_size_zyx}"
        return f"multiple_zyx={self.multiple_zyx}{extra}"
