"""MONAI's transformer U-Nets: SwinUNETR and UNETR.

Papers: Hatamizadeh et al., "Swin UNETR: Swin Transformers for Semantic Segmentation of
Brain Tumors in MRI Images", BrainLes 2021 (arXiv 2201.01266); Hatamizadeh et al., "UNETR:
Transformers for 3D Medical Image Segmentation", WACV 2022 (arXiv 2103.10504). Library:
``monai.networks.nets.SwinUNETR`` / ``UNETR`` of MONAI 1.6.1.

Thin wrappers, both already 3D. What was changed for nodule patches (the papers use 96^3 crops):
  * SwinUNETR (1.6.1 no longer takes ``img_size``): feature_size 12 instead of 24/48 (the
    smallest the library allows: it must divide by 12), default depths (2,2,2,2), heads
    (3,6,12,24), window 7 (the library shrinks windows that exceed the feature map). Its five
    stride-2 stages need inputs divisible by 32, and its instance norm at the 1/32 map needs more
    than one voxel there, so inputs are zero-padded to a multiple of 32 and to at least 32x32x64
    (z, y, x), and the output cropped back. The paper patch 64x64x32 runs unpadded; the cpu and
    smoke patches pay for the padding in compute, not in accuracy of the kept voxels.
  * UNETR: the ViT is narrowed to DeiT-Tiny sizes (hidden 192, 3 heads, MLP 768; 12 layers
    and patch 16 are fixed by the library) with feature_size 16. Patch 16 gives only a
    2x4x4 token grid at 64x64x32 and a single token for the smoke patch: that is UNETR as
    published, kept as the library baseline. Its position embedding fixes the input size, so
    the network is built for ``spatial_size`` rounded up to 16 and inputs are padded to exactly
    that size; a larger input is refused with a message naming the size to build for.
Single logit out, no deep supervision. No pretrained weights (none may be downloaded here).
"""
from __future__ import annotations

import math

from monai.networks.nets import UNETR, SwinUNETR

from . import register_architecture
from ._layers import PadToMultiple

__all__ = ["swinunetr_model", "unetr_model"]

_PAPER_PATCH = (32, 64, 64)
#: SwinUNETR downsamples by 2 five times (patch embedding + four patch mergings)
SWIN_MULTIPLE = 32
#: smallest padded input whose 1/32 map has two voxels, so instance norm there is defined
SWIN_MIN_SIZE = (32, 32, 64)
#: UNETR's (fixed) ViT patch size
UNETR_PATCH = 16


def swinunetr_model(in_channels: int = 1, out_channels: int = 1, feature_size: int = 12,
                    dropout_path_rate: float = 0.0, **kwargs) -> SwinUNETR:
    return SwinUNETR(in_channels=in_channels, out_channels=out_channels, feature_size=feature_size,
                     dropout_path_rate=dropout_path_rate, spatial_dims=3, **kwargs)


def unetr_model(in_channels: int = 1, out_channels: int = 1, img_size=_PAPER_PATCH, feature_size: int = 16,
                hidden_size: int = 192, mlp_dim: int | None = None, num_heads: int = 3,
                dropout_rate: float = 0.0, **kwargs) -> UNETR:
    return UNETR(in_channels=in_channels, out_channels=out_channels, img_size=tuple(img_size),
                 feature_size=feature_size, hidden_size=hidden_size, mlp_dim=mlp_dim or 4 * hidden_size,
                 num_heads=num_heads, dropout_rate=dropout_rate, spatial_dims=3, **kwargs)


def _swin_space(trial):
    return {"feature_size": trial.suggest_categorical("arch.feature_size", [12, 24]),
            "dropout_path_rate": trial.suggest_float("arch.dropout_path_rate", 0.0, 0.2)}


#: the ViT widths UNETR is tuned over, DeiT-Tiny and DeiT-Small: hidden size -> attention heads
_DEIT_HEADS = {192: 3, 384: 6}


def _unetr_space(trial):
    # named after the kwarg, so a protocol that holds sizes at the preset's (tuning.size: preset)
    # can fix it; a DeiT width brings its heads and MLP, a preset's own width keeps the preset's
    hidden = trial.suggest_categorical("arch.hidden_size", list(_DEIT_HEADS))
    out = {"hidden_size": hidden, "dropout_rate": trial.suggest_float("arch.dropout_rate", 0.0, 0.2)}
    if hidden in _DEIT_HEADS:
        out.update(num_heads=_DEIT_HEADS[hidden], mlp_dim=4 * hidden)
    return out


@register_architecture("swinunetr", search_space=_swin_space)
def swinunetr(in_channels: int = 1, out_channels: int = 1, spatial_size=None, **kwargs):
    """MONAI SwinUNETR at feature_size 12, inputs padded to a multiple of 32 (at least 32x32x64 zyx)."""
    return PadToMultiple(swinunetr_model(in_channels, out_channels, **kwargs), SWIN_MULTIPLE,
                         min_size_zyx=SWIN_MIN_SIZE)


@register_architecture("unetr", search_space=_unetr_space)
def unetr(in_channels: int = 1, out_channels: int = 1, spatial_size=None, **kwargs):
    """MONAI UNETR with a DeiT-Tiny-sized ViT, built for the patch rounded up to 16 voxels."""
    size = tuple(math.ceil(s / UNETR_PATCH) * UNETR_PATCH for s in (spatial_size or _PAPER_PATCH))
    return PadToMultiple(unetr_model(in_channels, out_channels, img_size=size, **kwargs), UNETR_PATCH,
                         fixed_size_zyx=size)
