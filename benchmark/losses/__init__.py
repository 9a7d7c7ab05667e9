"""The loss registry (timm-style), one loss family per file.

    from benchmark.losses import create_loss, list_losses
    loss_fn = create_loss("dice_bce")
    loss = loss_fn(logits, target)     # logits, target: (B, 1, D, H, W); target in {0, 1}

Every registered factory returns an ``nn.Module`` whose ``forward(logits, target)`` returns a
scalar. ``benchmark.losses.deep_supervision.DeepSupervisionLoss`` wraps any of them for models
returning several outputs.

The registry is lazy, like the architectures' (``benchmark.core.registry``): the table below
declares every loss with its metadata, the one place that defines them, and each loss module's
decorator only attaches the factory and its search space. Listing the losses (``bench losses``)
therefore imports no loss module, and with them no torch or MONAI; a loss's module is imported
the first time it is built or its search space is asked for. So registration never depends on
import order either.
"""
from __future__ import annotations

import fnmatch

from benchmark.core.registry import Registry

LOSSES = Registry("loss")
register_loss = LOSSES.register

#: name -> (module under benchmark.losses, family, paper)
_DECLARED = {
    "dice": ("dice", "overlap", "Milletari et al. 2016, arXiv 1606.04797"),
    "bce": ("dice", "pixel", "binary cross-entropy"),
    "dice_bce": ("dice", "compound", "Dice + BCE (MONAI DiceCELoss)"),
    "focal": ("focal", "pixel", "Lin et al. 2017, arXiv 1708.02002"),
    "tversky": ("tversky", "overlap", "Salehi et al. 2017, arXiv 1706.05721"),
    "focal_tversky": ("tversky", "overlap", "Abraham & Khan 2019, arXiv 1810.07842"),
    "residual_moment": ("residual_moment", "regulariser", "Wang et al. 2021, arXiv 2106.14178"),
    "dice_bce_rm": ("residual_moment", "compound", "Dice+BCE + Residual Moment, arXiv 2106.14178"),
}
for _name, (_module, _family, _paper) in _DECLARED.items():
    LOSSES.declare(_name, f"{__name__}.{_module}", family=_family, paper=_paper)


def create_loss(name: str, **kwargs):
    return LOSSES.create(name, **kwargs)


def list_losses(pattern: str = "*") -> list[str]:
    return [n for n in LOSSES.names() if fnmatch.fnmatch(n, pattern)]


def loss_entry(name: str):
    return LOSSES.entry(name)
