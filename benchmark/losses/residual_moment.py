"""Residual Moment (RM) loss, a location-aware add-on to a segmentation loss.

Paper: Wang, Wang, Li, Ma, Zheng, Meng, "Residual Moment Loss for Medical Image
Segmentation", arXiv 2106.14178 (2021). The abstract says: motivated by image moments, the
prediction map and the ground-truth map are each weighted by coordinate information, and
the loss enforces consistency between the two weighted maps; it is added to a standard
segmentation loss. The paper's equations could not be retrieved and no public code was
found (see shared/notes/architectures.md section 4), so this file implements that
description, as follows, and nothing more should be read into it.

What is computed. Let P = sigmoid(logits), G in {0, 1} the target, R = P - G the residual,
and N the number of voxels of the patch. For each spatial axis k (z, y, x) let c_k(v) be the
coordinate of voxel v's centre, in physical units, relative to the patch centre, divided by
one scale s common to all axes:

    c_k(v) = (i_k(v) - (n_k - 1) / 2) * spacing_k / s,
    s      = scale_mm, or by default half the largest physical extent max_k(n_k * spacing_k) / 2,

so the longest axis spans about [-1, 1] and a 64x64x32 patch keeps z half as long as x and y
(normalising each axis to [-1, 1] separately would stretch z two-fold). Then, per sample and
channel,

    mode="moment":  RM = sum_k | (1/N) sum_v c_k(v) R(v) |      (first-order moments of R)
    mode="pixel":   RM = (1/N) sum_v sum_k | c_k(v) R(v) |      (coordinate-weighted L1 of R)

and the loss is the mean over batch and channels. Both are 0 when P = G.

How they behave (why both exist). For hard masks, the moment form equals (|G| / N) times the
L1 distance between the predicted and true centroids when |P| = |G|, so it grows linearly as
a prediction is shifted, and it sees erosion/dilation only through the displacement of the
removed/added shell relative to the patch centre (a nodule exactly at the centre, eroded
symmetrically, costs nothing). The pixel form is an L1 on R whose weight grows with the
distance from the patch centre; it sees every wrong voxel except those on the central
planes. With nodule-centred patches the first form is close to a centroid-shift regulariser;
random patch offsets (as in training) make the absolute location informative.

Scale. Because the sums are divided by N and the coordinates by a field-of-view scale, the
term does not depend on the voxel size for a fixed field of view: the ``cpu`` (2 mm) and
``paper`` (1 mm) presets see the same values, so one ``weight`` works for both. With
isotropic voxels ``spacing_mm`` cancels out and can stay 1.

``dice_bce_rm`` = MONAI DiceCELoss (sigmoid) + weight * RM; ``residual_moment`` registers the
raw term alone for tests and analysis (it is not a segmentation loss by itself: many P share
G's moments).

What changed for 3D: a z coordinate map, physical units with one common scale, origin at the
patch centre, normalisation by the voxel count (the paper is described in 2D and on 3D
left-atrium MRI; these choices are ours).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from benchmark.losses import register_loss
from benchmark.losses.dice import dice_bce

__all__ = ["ResidualMomentLoss", "DiceBCEResidualMomentLoss", "residual_moment", "dice_bce_rm"]

_MODES = ("moment", "pixel")


class ResidualMomentLoss(nn.Module):
    """The RM term alone; ``forward(logits, target)`` -> scalar (see the module docstring).

    Args:
        mode: "moment" (|first moment of R| per axis, summed) or "pixel" (mean sum_k |c_k R|).
        spacing_mm: voxel size, one float or one per spatial axis in tensor order (z, y, x).
        scale_mm: the common coordinate scale; None = half the largest physical extent of the
            patch, so the coordinates span about [-1, 1] on the longest axis.
    """

    def __init__(self, mode: str = "moment", spacing_mm: float | Sequence[float] = 1.0,
                 scale_mm: float | None = None):
        super().__init__()
        if mode not in _MODES:
            raise ValueError(f"residual-moment mode must be one of {_MODES}, got {mode!r}")
        spacing = (float(spacing_mm),) if isinstance(spacing_mm, (int, float)) else tuple(float(s) for s in spacing_mm)
        if any(s <= 0 for s in spacing):
            raise ValueError(f"spacing_mm must be > 0, got {spacing_mm}")
        if scale_mm is not None and scale_mm <= 0:
            raise ValueError(f"scale_mm must be > 0, got {scale_mm}")
        self.mode = mode
        self.spacing = spacing
        self.scale_mm = None if scale_mm is None else float(scale_mm)
        self._cache: dict = {}

    def _spacing_for(self, ndim: int) -> tuple[float, ...]:
        if len(self.spacing) == 1:
            return self.spacing * ndim
        if len(self.spacing) != ndim:
            raise ValueError(f"spacing_mm has {len(self.spacing)} values for a {ndim}-D patch")
        return self.spacing

    def coordinates(self, spatial_shape: Sequence[int], device=None) -> list[torch.Tensor]:
        """Per-axis coordinate vectors c_k (float32), each shaped to broadcast over the patch."""
        shape = tuple(int(n) for n in spatial_shape)
        key = (shape, str(device))
        if key not in self._cache:
            spacing = self._spacing_for(len(shape))
            scale = self.scale_mm or max(n * s for n, s in zip(shape, spacing)) / 2.0
            coords = []
            for axis, (n, s) in enumerate(zip(shape, spacing)):
                c = (torch.arange(n, dtype=torch.float32, device=device) - (n - 1) / 2.0) * (s / scale)
                view = [1] * len(shape)
                view[axis] = n
                coords.append(c.view(view))
            self._cache[key] = coords
        return self._cache[key]

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if logits.shape != target.shape:
            raise ValueError(f"logits {tuple(logits.shape)} and target {tuple(target.shape)} differ in shape")
        # float32 on purpose: under autocast, fp16 sums over ~1e5 voxels can overflow
        residual = torch.sigmoid(logits.float()) - target.float()
        spatial = residual.shape[2:]
        dims = tuple(range(2, residual.ndim))
        coords = self.coordinates(spatial, residual.device)
        if self.mode == "moment":
            moments = [(c * residual).mean(dim=dims) for c in coords]       # each (B, C)
            per_item = torch.stack(moments, dim=-1).abs().sum(dim=-1)
        else:
            # sum_k |c_k R| = |R| * sum_k |c_k|: one weight map instead of three products
            weight = sum(c.abs() for c in coords)
            per_item = (residual.abs() * weight).mean(dim=dims)
        return per_item.mean()

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, spacing_mm={self.spacing}, scale_mm={self.scale_mm}"


class DiceBCEResidualMomentLoss(nn.Module):
    """Dice + BCE (MONAI DiceCELoss, sigmoid) + weight * residual moment."""

    def __init__(self, weight: float = 1.0, mode: str = "moment", lambda_dice: float = 1.0,
                 lambda_ce: float = 1.0, spacing_mm: float | Sequence[float] = 1.0,
                 scale_mm: float | None = None, smooth: float = 1e-5):
        super().__init__()
        if weight < 0:
            raise ValueError(f"residual-moment weight must be >= 0, got {weight}")
        self.weight = float(weight)
        self.seg = dice_bce(lambda_dice=lambda_dice, lambda_ce=lambda_ce, smooth=smooth)
        self.rm = ResidualMomentLoss(mode=mode, spacing_mm=spacing_mm, scale_mm=scale_mm)

    def forward(self, logits, target):
        return self.seg(logits, target.to(logits.dtype)) + self.weight * self.rm(logits, target)

    def extra_repr(self) -> str:
        return f"weight={self.weight}"


def _rm_search_space(trial) -> dict:
    return {"mode": trial.suggest_categorical("loss.mode", list(_MODES))}


def _dice_bce_rm_search_space(trial) -> dict:
    return {"weight": trial.suggest_float("loss.weight", 0.03, 3.0, log=True),
            "mode": trial.suggest_categorical("loss.mode", list(_MODES))}


@register_loss("residual_moment", search_space=_rm_search_space)
def residual_moment(mode: str = "moment", spacing_mm: float | Sequence[float] = 1.0, scale_mm: float | None = None):
    """The raw residual-moment term (for tests and analysis, not for training alone)."""
    return ResidualMomentLoss(mode=mode, spacing_mm=spacing_mm, scale_mm=scale_mm)


@register_loss("dice_bce_rm", search_space=_dice_bce_rm_search_space)
def dice_bce_rm(weight: float = 1.0, mode: str = "moment", lambda_dice: float = 1.0, lambda_ce: float = 1.0,
                spacing_mm: float | Sequence[float] = 1.0, scale_mm: float | None = None, smooth: float = 1e-5):
    """Dice + BCE + weight * residual moment."""
    return DiceBCEResidualMomentLoss(weight=weight, mode=mode, lambda_dice=lambda_dice, lambda_ce=lambda_ce,
                                     spacing_mm=spacing_mm, scale_mm=scale_mm, smooth=smooth)
