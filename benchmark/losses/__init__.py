"""The loss registry (timm-style), one loss family per file.

    from benchmark.losses import create_loss, list_losses
    loss_fn = create_loss("dice_bce")
    loss = loss_fn(logits, target)     # logits, target: (B, 1, D, H, W); target in {0, 1}

Every registered factory returns an ``nn.Module`` whose ``forward(logits, target)`` returns a
scalar. ``DeepSupervisionLoss`` wraps any of them for models returning several outputs.
All modules are imported here so registration never depends on import order.
"""
from __future__ import annotations

import fnmatch
import importlib

from benchmark.core.registry import Registry

LOSSES = Registry("loss")
register_loss = LOSSES.register

_MODULES = [
    "dice",
    "deep_supervision",
    "focal",
    "tversky",
    "residual_moment",
]


def create_loss(name: str, **kwargs):
    return LOSSES.create(name, **kwargs)


def list_losses(pattern: str = "*") -> list[str]:
    return [n for n in LOSSES.names() if fnmatch.fnmatch(n, pattern)]


def loss_entry(name: str):
    return LOSSES.entry(name)


for _m in _MODULES:
    importlib.import_module(f"{__name__}.{_m}")

from benchmark.losses.deep_supervision import DeepSupervisionLoss  # noqa: E402
