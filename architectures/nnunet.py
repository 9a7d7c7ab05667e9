"""nnU-Net's 3D full-resolution network, plain and residual-encoder, planned for the patch.

Papers: Isensee et al., "nnU-Net: a self-configuring method for deep learning-based biomedical
image segmentation", Nature Methods 2021 (arXiv 1809.10486); Isensee et al., "nnU-Net
Revisited: A Call for Rigorous Validation in 3D Medical Image Segmentation", MICCAI 2024
(arXiv 2404.09556) for the residual-encoder (ResEnc) variant. Networks: the
``dynamic-network-architectures`` package nnU-Net itself builds them from
(``PlainConvUNet``, ``ResidualEncoderUNet``).

This is a thin wrapper. The network is configured the way nnU-Net's experiment planner
configures ``3d_fullres`` for a given patch, instead of from a ``nnUNetPlans.json``:
  * pooling: halve every axis that is still >= 8 voxels, so no bottleneck axis falls below 4;
    a lone remaining axis only while >= 12 (``_layers.plan_strides``, nnU-Net's
    ``get_pool_and_conv_props`` with isotropic spacing). The first stage has stride 1, so
    ``n_stages = n_pools + 1``. 64x64x32 (x, y, z) gives 5 stages, strides (z, y, x)
    [1,1,1] [2,2,2] [2,2,2] [2,2,2] [1,2,2] and a 4x4x4 bottleneck; the smoke patch 16x16x8
    gives 3 stages;
  * features 32 * 2^i capped at 320; all kernels 3x3x3 (isotropic voxels);
  * plain: 2 convs per encoder and decoder stage; ResEnc: (1, 3, 4, 6, 6, ...) basic residual
    blocks per encoder stage and 1 conv per decoder stage (``nnUNetPlannerResEnc*``);
  * conv bias, InstanceNorm3d(eps 1e-5, affine), LeakyReLU (slope 1e-2), He initialisation
    (and zero-initialised last norm of each residual block), as ``get_network_from_plans`` does;
  * deep supervision on: in ``train()`` mode a list of one logit map per decoder stage, full
    resolution first (dynamic-network-architectures 0.4.4 already returns the finest first), with
    nnU-Net's weights 1/2^i, the coarsest set to 0, normalised (``deep_supervision_weights``). In
    ``eval()`` the extra heads are switched off and one tensor is returned.
What differs from nnU-Net: the patch is the benchmark preset's, not nnU-Net's planned one
(nnU-Net would choose a much larger patch from the median case shape), and there is no plans file.
The input is zero-padded to the total stride and the output cropped back (``PadToMultiple``), so
odd sizes work. Recipe in nnU-Net: SGD (Nesterov, momentum 0.99), lr 1e-2 poly, Dice+CE.
"""
from __future__ import annotations

from dynamic_network_architectures.architectures.unet import PlainConvUNet, ResidualEncoderUNet
from dynamic_network_architectures.building_blocks.residual import BasicBlockD
from dynamic_network_architectures.initialization.weight_init import InitWeights_He, init_last_bn_before_add_to_0
from torch import nn

from benchmark.core.errors import UsageError

from . import register_architecture
from ._layers import PadToMultiple, plan_strides, total_stride

__all__ = ["NNUNet3D", "plan_nnunet", "nnunet_deep_supervision_weights"]

_PAPER_PATCH = (32, 64, 64)  # used when no spatial_size is given
#: nnU-Net's ``UNet_blocks_per_stage_encoder`` for the ResEnc planners
RESENC_BLOCKS = (1, 3, 4, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6)


def plan_nnunet(spatial_size, base_features: int = 32, max_features: int = 320) -> dict:
    """The 3d_fullres topology nnU-Net's planner derives for ``spatial_size`` (z, y, x)."""
    strides = [(1, 1, 1)] + plan_strides(spatial_size)
    n_stages = len(strides)
    return {
        "n_stages": n_stages,
        "features_per_stage": [min(base_features * 2 ** i, max_features) for i in range(n_stages)],
        "strides": [list(s) for s in strides],
        "kernel_sizes": [[3, 3, 3]] * n_stages,
        "divisible_by": total_stride(strides),
    }


def nnunet_deep_supervision_weights(n_outputs: int) -> list[float]:
    """nnU-Net's loss weights: 1/2^i from full resolution down, the coarsest output 0, normalised."""
    w = [1 / 2 ** i for i in range(n_outputs)]
    if n_outputs > 1:
        w[-1] = 0.0
    total = sum(w)
    return [v / total for v in w]


class NNUNet3D(nn.Module):
    """A dynamic-network-architectures U-Net whose deep supervision follows train/eval mode."""

    def __init__(self, in_channels: int = 1, out_channels: int = 1, spatial_size=_PAPER_PATCH,
                 residual: bool = False, base_features: int = 32, max_features: int = 320):
        super().__init__()
        self.plan = plan_nnunet(spatial_size, base_features, max_features)
        n = self.plan["n_stages"]
        if n < 2:
            raise UsageError(f"nnU-Net needs at least one pooling stage; patch {tuple(spatial_size)} (z, y, x) "
                             "is too small (an axis must be >= 8 voxels)")
        common = dict(
            input_channels=in_channels, n_stages=n, features_per_stage=self.plan["features_per_stage"],
            conv_op=nn.Conv3d, kernel_sizes=self.plan["kernel_sizes"], strides=self.plan["strides"],
            num_classes=out_channels, conv_bias=True,
            norm_op=nn.InstanceNorm3d, norm_op_kwargs={"eps": 1e-5, "affine": True},
            dropout_op=None, dropout_op_kwargs=None,
            nonlin=nn.LeakyReLU, nonlin_kwargs={"inplace": True}, deep_supervision=True,
        )
        if residual:
            self.net = ResidualEncoderUNet(n_blocks_per_stage=list(RESENC_BLOCKS[:n]),
                                           n_conv_per_stage_decoder=[1] * (n - 1), block=BasicBlockD, **common)
        else:
            self.net = PlainConvUNet(n_conv_per_stage=[2] * n, n_conv_per_stage_decoder=[2] * (n - 1), **common)
        self.net.apply(InitWeights_He(1e-2))
        if residual:
            self.net.apply(init_last_bn_before_add_to_0)
        self.deep_supervision_weights = nnunet_deep_supervision_weights(n - 1)

    def forward(self, x):
        # nnU-Net's set_deep_supervision_enabled, tied to the module mode so eval() skips the
        # auxiliary heads and returns one tensor.
        self.net.decoder.deep_supervision = self.training
        return self.net(x)


def _build(in_channels, out_channels, spatial_size, residual, **kwargs):
    net = NNUNet3D(in_channels, out_channels, spatial_size or _PAPER_PATCH, residual=residual, **kwargs)
    return PadToMultiple(net, net.plan["divisible_by"])


def _search_space(trial):
    # nnU-Net fixes its topology from the patch; the width is the one knob worth trying on CPU budgets.
    return {"base_features": trial.suggest_categorical("arch.base_features", [16, 24, 32])}


@register_architecture("nnunet_plain", search_space=_search_space)
def nnunet_plain(in_channels: int = 1, out_channels: int = 1, spatial_size=None, **kwargs):
    """nnU-Net's default PlainConvUNet, planned for the patch, deep supervision in train mode."""
    return _build(in_channels, out_channels, spatial_size, residual=False, **kwargs)


@register_architecture("nnunet_resenc", search_space=_search_space)
def nnunet_resenc(in_channels: int = 1, out_channels: int = 1, spatial_size=None, **kwargs):
    """nnU-Net's residual-encoder U-Net (ResEnc block counts), planned for the patch."""
    return _build(in_channels, out_channels, spatial_size, residual=True, **kwargs)
