"""Tversky and focal-Tversky losses for binary (single-logit) segmentation.

Papers:
  * Salehi, Erdogmus, Gholipour, "Tversky loss function for image segmentation using 3D fully
    convolutional deep networks", MLMI 2017 (arXiv 1706.05721).
    TI = TP / (TP + alpha FP + beta FN) on soft counts; loss = 1 - TI. alpha = beta = 0.5 is
    Dice; beta > alpha trades precision for recall, which the paper found best for small,
    highly imbalanced lesions (their best F2 used alpha = 0.3, beta = 0.7: our defaults).
  * Abraham, Khan, "A Novel Focal Tversky Loss Function with Improved Attention U-Net for
    Lesion Segmentation", ISBI 2019 (arXiv 1810.07842).
    FTL = (1 - TI)^(1/gamma), gamma in [1, 3], 4/3 in the paper: with 1/gamma < 1 the loss
    stays large for patches that are already mostly right, so hard, small structures keep
    contributing gradient late in training.

Naming: ``alpha`` always weights false positives and ``beta`` false negatives (Salehi's and
MONAI's convention). Abraham & Khan write the same index with the roles of the letters
swapped (their alpha = 0.7 multiplies false negatives), so their recommended setting is
``alpha=0.3, beta=0.7`` here.

What changed for 3D: nothing in the formula; soft TP/FP/FN are summed over the whole
(D, H, W) patch of each sample (MONAI ``TverskyLoss`` with ``sigmoid=True``, ``batch=False``),
and the per-sample losses are averaged over the batch. The focal exponent is applied per
sample, before averaging, as in the paper's per-image formulation.
"""
from __future__ import annotations

from monai.losses import TverskyLoss
from torch import nn

from benchmark.losses import register_loss

__all__ = ["BinaryTverskyLoss", "FocalTverskyLoss", "tversky", "focal_tversky"]

#: floor applied before the fractional power: d/dx x^(1/gamma) is infinite at 0
_FTL_FLOOR = 1e-6


def _check_weights(alpha: float, beta: float) -> None:
    if alpha < 0 or beta < 0 or alpha + beta == 0:
        raise ValueError(f"Tversky alpha and beta must be >= 0 and not both 0, got alpha={alpha}, beta={beta}")


class BinaryTverskyLoss(nn.Module):
    """1 - Tversky index per sample, mean over the batch."""

    def __init__(self, alpha: float = 0.3, beta: float = 0.7, smooth: float = 1e-5):
        super().__init__()
        _check_weights(alpha, beta)
        self.alpha, self.beta = float(alpha), float(beta)
        self.loss = TverskyLoss(sigmoid=True, alpha=self.alpha, beta=self.beta,
                                smooth_nr=smooth, smooth_dr=smooth, batch=False, reduction="mean")

    def forward(self, logits, target):
        return self.loss(logits, target.to(logits.dtype))

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, beta={self.beta}"


class FocalTverskyLoss(nn.Module):
    """(1 - Tversky index)^(1/gamma) per sample, mean over the batch."""

    def __init__(self, alpha: float = 0.3, beta: float = 0.7, gamma: float = 4.0 / 3.0, smooth: float = 1e-5):
        super().__init__()
        _check_weights(alpha, beta)
        if gamma <= 0:
            raise ValueError(f"focal-Tversky gamma must be > 0, got {gamma}")
        self.alpha, self.beta, self.gamma = float(alpha), float(beta), float(gamma)
        self.tversky = TverskyLoss(sigmoid=True, alpha=self.alpha, beta=self.beta,
                                   smooth_nr=smooth, smooth_dr=smooth, batch=False, reduction="none")

    def forward(self, logits, target):
        per_sample = self.tversky(logits, target.to(logits.dtype))
        return per_sample.clamp_min(_FTL_FLOOR).pow(1.0 / self.gamma).mean()

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, beta={self.beta}, gamma={self.gamma:.4g}"


def _tversky_search_space(trial) -> dict:
    # alpha + beta = 1 as in both papers' experiments: one knob, the recall/precision trade-off
    beta = trial.suggest_float("loss.beta", 0.5, 0.9)
    return {"alpha": 1.0 - beta, "beta": beta}


def _focal_tversky_search_space(trial) -> dict:
    beta = trial.suggest_float("loss.beta", 0.5, 0.9)
    return {"alpha": 1.0 - beta, "beta": beta, "gamma": trial.suggest_float("loss.gamma", 1.0, 3.0)}


@register_loss("tversky", search_space=_tversky_search_space)
def tversky(alpha: float = 0.3, beta: float = 0.7, smooth: float = 1e-5):
    """Tversky loss (MONAI TverskyLoss); alpha weights false positives, beta false negatives."""
    return BinaryTverskyLoss(alpha=alpha, beta=beta, smooth=smooth)


@register_loss("focal_tversky", search_space=_focal_tversky_search_space)
def focal_tversky(alpha: float = 0.3, beta: float = 0.7, gamma: float = 4.0 / 3.0, smooth: float = 1e-5):
    """Focal-Tversky loss (1 - TI)^(1/gamma) on top of MONAI TverskyLoss."""
    return FocalTverskyLoss(alpha=alpha, beta=beta, gamma=gamma, smooth=smooth)
