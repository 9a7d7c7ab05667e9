"""Focal loss for binary (single-logit) segmentation.

Paper: Lin, Goyal, Girshick, He, Dollár, "Focal Loss for Dense Object Detection", ICCV 2017
(arXiv 1708.02002). FL(p_t) = -alpha_t (1 - p_t)^gamma log(p_t): binary cross-entropy whose
easy voxels (p_t close to 1) are down-weighted by (1 - p_t)^gamma, and whose positive /
negative voxels are weighted alpha / (1 - alpha).

What changed for 3D nodule patches: nothing in the formula, it is per voxel. It is applied to
the one sigmoid logit per voxel and averaged over every voxel of the (B, 1, D, H, W) patch.
The implementation is MONAI's ``FocalLoss`` (sigmoid branch), not our own.

Defaults are the paper's best pair for detection, gamma = 2 and alpha = 0.25. Note that
alpha = 0.25 weights the *foreground* by 0.25; Lin et al. found that with gamma = 2 the easy
background is already suppressed enough for this to win. Whether that holds for nodule
segmentation is what the search space is for; ``alpha=None`` turns class weighting off.
"""
from __future__ import annotations

from monai.losses import FocalLoss
from torch import nn

from benchmark.losses import register_loss

__all__ = ["BinaryFocalLoss", "focal"]


class BinaryFocalLoss(nn.Module):
    """Mean sigmoid focal loss over all voxels; ``forward(logits, target)`` -> scalar."""

    def __init__(self, gamma: float = 2.0, alpha: float | None = 0.25):
        super().__init__()
        if gamma < 0:
            raise ValueError(f"focal gamma must be >= 0, got {gamma}")
        if alpha is not None and not 0.0 <= alpha <= 1.0:
            raise ValueError(f"focal alpha must be in [0, 1] or None, got {alpha}")
        self.gamma = float(gamma)
        self.alpha = None if alpha is None else float(alpha)
        self.loss = FocalLoss(gamma=self.gamma, alpha=self.alpha, use_softmax=False, reduction="mean")

    def forward(self, logits, target):
        return self.loss(logits, target.to(logits.dtype))

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}, alpha={self.alpha}"


def _focal_search_space(trial) -> dict:
    return {"gamma": trial.suggest_float("loss.gamma", 0.5, 3.0),
            "alpha": trial.suggest_float("loss.alpha", 0.1, 0.9)}


@register_loss("focal", search_space=_focal_search_space)
def focal(gamma: float = 2.0, alpha: float | None = 0.25):
    """Sigmoid focal loss (MONAI FocalLoss); gamma focuses, alpha weights the foreground."""
    return BinaryFocalLoss(gamma=gamma, alpha=alpha)
