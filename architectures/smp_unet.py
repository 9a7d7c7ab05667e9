"""U-Net with a 3D ResNet encoder from segmentation-models-pytorch-3d.

Papers: Ronneberger et al., "U-Net", MICCAI 2015 (arXiv 1505.04597) for the decoder; He et
al., "Deep Residual Learning for Image Recognition", CVPR 2016 (arXiv 1512.03385) for the
encoder. Library: ``segmentation_models_pytorch_3d`` 0.3.3 (ZFTurbo's 3D port of qubvel's
segmentation-models-pytorch: Conv3d everywhere, ImageNet weights inflated to 3D on request).

This is a thin wrapper. What it sets for nodule patches:
  * encoder ``resnet18`` (the library's own 3D ResNet), ``encoder_weights=None``: nothing is
    downloaded, and inflated 2D ImageNet weights do not suit single-channel CT anyway;
  * per-stage strides planned from the patch with nnU-Net's rule (``_layers.plan_strides``):
    the library takes one (z, y, x) stride per encoder stage, so a 64x64x32 patch gets
    (2,2,2) x3, (1,2,2), (1,1,1) and a 4x4x4 deepest map instead of the default stride 32 that
    would leave z at 1 voxel. The encoder depth stays 5 because the 0.3.3 ResNet encoder always
    indexes five strides while the decoder demands exactly ``encoder_depth`` of them, so depths
    below 5 do not build; small patches get stride-1 stages instead;
  * a narrower decoder (128, 64, 32, 16, 16 instead of 256 ... 16): the patch holds a few
    thousand voxels at the deeper stages, and the 3D decoder's 3x3x3 convs dominate otherwise;
  * zero-padding to the total stride and cropping back (``PadToMultiple``) for odd inputs.
Single logit out, no deep supervision (the library has none).
"""
from __future__ import annotations

import segmentation_models_pytorch_3d as smp
from segmentation_models_pytorch_3d.encoders.resnet import resnet_encoders

from benchmark.core.errors import UsageError

from . import register_architecture
from ._layers import PadToMultiple, plan_strides, total_stride

__all__ = ["smp_unet_model"]

_PAPER_PATCH = (32, 64, 64)
#: encoders of the library that accept per-stage strides (the others are stride-32 only)
STRIDED_ENCODERS = tuple(sorted(resnet_encoders))


def smp_unet_model(in_channels: int = 1, out_channels: int = 1, spatial_size=_PAPER_PATCH,
                   encoder_name: str = "resnet18", decoder_channels=(128, 64, 32, 16, 16)):
    """The bare library U-Net (no padding wrapper) and the multiple its input must be divisible by."""
    if encoder_name not in STRIDED_ENCODERS:
        raise UsageError(f"smp_unet: encoder {encoder_name!r} does not take per-axis strides in "
                         f"segmentation-models-pytorch-3d; use one of {', '.join(STRIDED_ENCODERS)}")
    strides = tuple(plan_strides(spatial_size, n_pools=5))
    net = smp.Unet(encoder_name=encoder_name, encoder_depth=5, encoder_weights=None,
                   decoder_channels=tuple(decoder_channels), in_channels=in_channels, classes=out_channels,
                   activation=None, strides=strides)
    return net, total_stride(strides)


def _search_space(trial):
    return {"encoder_name": trial.suggest_categorical("arch.encoder_name", ["resnet18", "resnet34"])}


@register_architecture("smp_unet", search_space=_search_space)
def smp_unet(in_channels: int = 1, out_channels: int = 1, spatial_size=None, **kwargs):
    """U-Net with a randomly initialised 3D ResNet-18 encoder, strides planned for the patch."""
    net, multiple = smp_unet_model(in_channels, out_channels, spatial_size or _PAPER_PATCH, **kwargs)
    return PadToMultiple(net, multiple)
