"""The architecture registry (timm-style).

    from architectures import create_architecture, list_architectures
    net = create_architecture("transfuse", in_channels=1, out_channels=1, spatial_size=(32, 64, 64))

Every factory takes ``in_channels``, ``out_channels`` and ``spatial_size`` (the patch in
tensor order ``(z, y, x)``, i.e. ``(D, H, W)``) plus its own keyword arguments, and returns an
``nn.Module`` mapping ``(B, in_channels, D, H, W)`` to logits ``(B, out_channels, D, H, W)``.

Deep supervision contract: in ``train()`` mode a model may return a list of logit maps,
the first being the main full-resolution output (auxiliary maps may be coarser), and
exposes ``deep_supervision_weights`` (same length). In ``eval()`` mode it returns the main
tensor only. ``benchmark.losses.DeepSupervisionLoss`` applies any loss to such outputs.

Each module in ``_MODULES`` is one architecture family in one self-contained file with its
paper cited at the top. They are all imported here, so registration never depends on
which modules a caller happened to import.
"""
from __future__ import annotations

import fnmatch
import importlib

from benchmark.registry import Registry

ARCHITECTURES = Registry("architecture")
register_architecture = ARCHITECTURES.register

_MODULES = [
    "unet3d",
    "transfuse",
    "mctrans",
    "nnunet", "smp_unet", "monai_transformers", "dints", "bionet", "bixnas",
]


def create_architecture(name: str, **kwargs):
    """Build a registered architecture by name (or alias)."""
    return ARCHITECTURES.create(name, **kwargs)


def list_architectures(pattern: str = "*", include_aliases: bool = False) -> list[str]:
    return [n for n in ARCHITECTURES.names(include_aliases) if fnmatch.fnmatch(n, pattern)]


def architecture_entry(name: str):
    return ARCHITECTURES.entry(name)


for _m in _MODULES:
    importlib.import_module(f"{__name__}.{_m}")
