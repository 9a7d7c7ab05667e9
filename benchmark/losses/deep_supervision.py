"""Apply any loss to a model's deep-supervision outputs.

Auxiliary logit maps coarser than the target are upsampled trilinearly to the target's
size (as TransFuse does with its heads) rather than pooling the target, so small nodules
keep their true extent in every term. Weights are normalised to sum to one.
"""
from __future__ import annotations

from typing import Sequence

import torch.nn.functional as F
from torch import nn


class DeepSupervisionLoss(nn.Module):
    def __init__(self, loss: nn.Module, weights: Sequence[float] | None = None):
        super().__init__()
        self.loss = loss
        self.weights = None if weights is None else [float(w) for w in weights]

    def forward(self, outputs, target):
        if not isinstance(outputs, (list, tuple)):
            return self.loss(outputs, target)
        weights = self.weights or [1.0] + [0.0] * (len(outputs) - 1)
        if len(weights) != len(outputs):
            raise ValueError(f"{len(outputs)} outputs but {len(weights)} deep-supervision weights")
        total = sum(weights)
        value = 0.0
        for w, out in zip(weights, outputs):
            if w == 0:
                continue
            if out.shape[2:] != target.shape[2:]:
                out = F.interpolate(out, size=target.shape[2:], mode="trilinear", align_corners=False)
            value = value + (w / total) * self.loss(out, target)
        return value
