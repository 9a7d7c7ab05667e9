"""Overlap and cross-entropy losses for binary (single-logit) segmentation.

Dice: Milletari et al., "V-Net", 3DV 2016 (arXiv 1606.04797). MONAI's implementations
(``monai.losses.DiceLoss`` / ``DiceCELoss``) are used rather than our own: one pinned,
well-tested implementation for every architecture.
"""
from __future__ import annotations

import torch
from monai.losses import DiceCELoss, DiceLoss
from torch import nn

from benchmark.losses import register_loss


class _BCE(nn.Module):
    def __init__(self, pos_weight: float | None = None):
        super().__init__()
        self.pos_weight = pos_weight

    def forward(self, logits, target):
        pw = None if self.pos_weight is None else torch.tensor(self.pos_weight, device=logits.device)
        return nn.functional.binary_cross_entropy_with_logits(logits, target.float(), pos_weight=pw)


@register_loss("dice")
def dice(smooth: float = 1e-5, batch: bool = False):
    """Soft Dice on sigmoid probabilities (MONAI DiceLoss)."""
    return DiceLoss(sigmoid=True, smooth_nr=smooth, smooth_dr=smooth, batch=batch)


@register_loss("bce")
def bce(pos_weight: float | None = None):
    return _BCE(pos_weight)


def _dice_bce_space(trial):
    return {"lambda_dice": trial.suggest_float("loss.lambda_dice", 0.25, 1.0),
            "lambda_ce": trial.suggest_float("loss.lambda_ce", 0.25, 1.0)}


@register_loss("dice_bce", search_space=_dice_bce_space)
def dice_bce(lambda_dice: float = 1.0, lambda_ce: float = 1.0, smooth: float = 1e-5, batch: bool = False):
    """Dice + binary cross-entropy (MONAI DiceCELoss with sigmoid)."""
    return DiceCELoss(sigmoid=True, lambda_dice=lambda_dice, lambda_ce=lambda_ce,
                      smooth_nr=smooth, smooth_dr=smooth, batch=batch)
