"""TransFuse-3D: a CNN branch and a ViT branch in parallel, fused by BiFusion modules.

Paper: Zhang, Liu, Hu, "TransFuse: Fusing Transformers and CNNs for Medical Image
Segmentation", MICCAI 2021 (arXiv 2102.08005). Code lineage: Rayicer/TransFuse (2D,
ISIC-2017 only; the paper's 3D prostate variant was never released).

The design kept from the paper / released TransFuse_S:
  * two branches on the same input: a ResNet-style CNN (features g0, g1, g2, coarse to
    fine) and a ViT without CLS token whose token map t0 is upsampled progressively
    (t1, t2) by "Up" steps (upsample x2, residual double conv);
  * BiFusion(g, t) at three scales: SE channel attention on the transformer features,
    CBAM-style spatial attention (channel max + mean -> conv -> sigmoid) on the CNN
    features, a Hadamard-product term conv(W_g g * W_t t), all three concatenated and
    merged by a pre-activation bottleneck residual block;
  * the fused maps f0, f1, f2 merged coarse to fine, each skip multiplied by an
    Attention-U-Net gate before concatenation;
  * three deep-supervision heads: head(f2) (main, the only one used at inference),
    head(t2), head(f0), loss weights 0.5 / 0.3 / 0.2 as in the released training script;
  * Dropout3d on every branch output (0.2) and after every BiFusion (0.1).

What changed for 3D nodule patches (64x64x32 at 1 mm, tensors (B, C, z, y, x)):
  * the whole pyramid moves up one octave: the CNN has a stride-2 stem and no max-pool,
    so g2/g1/g0 sit at 1/2, 1/4, 1/8 and fusion happens there instead of 1/4..1/16; the
    main head works at 1/2 resolution and is upsampled x2 (the paper's x4 bilinear
    upsample blurs 3-5 mm nodules);
  * ViT patch 8^3 instead of 16^2, so the token grid at 64x64x32 is 8x8x4 = 256 tokens,
    not 4x4x2 = 32; the patch embedding is a strided Conv3d;
  * 3D learnable position embedding sized from ``spatial_size`` and trilinearly resized
    when the input differs (the released code hard-codes a 12x16 grid);
  * spatial attention uses a 7x7x7 conv, all gates and projections are 1x1x1;
  * inputs whose size is not a multiple of lcm(8, patch) are padded (edge-replicated) and
    the outputs cropped back, so any patch works;
  * trained from scratch (no DeiT / ImageNet weights can be downloaded here, and 2D
    weights would need inflating anyway); widths are much narrower than ResNet-34 + DeiT-S;
  * 1 sigmoid logit per voxel; the paper's structure loss (weighted BCE + IoU) is left
    to the loss registry; the deep-supervision weights are exposed on the model.

Hyper-parameters (transfuse_s / transfuse_l):
  cnn_widths   = (32, 64, 128) / (48, 96, 192)   channels at 1/2, 1/4, 1/8
  cnn_blocks   = (1, 2, 2)     / (2, 2, 3)       3D BasicBlocks per CNN stage
  embed_dim    = 192           / 384             ViT width
  vit_depth    = 6             / 8               timm ``Block``s (the paper's S uses 8)
  num_heads    = 4             / 6
  patch_size   = 8                               token grid = input / 8
  drop_rate    = 0.2  Dropout3d on branch outputs; fusion_drop = 0.1 after BiFusion
Released training recipe (2D): Adam lr 7e-5, betas (0.5, 0.999), batch 16, grad-norm clip 2.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import Block
from torch import nn

from benchmark.core.errors import UsageError

from . import register_architecture

__all__ = ["TransFuse3D", "BiFusion3D", "AttentionGate3D"]


def _triple(v) -> tuple[int, int, int]:
    return tuple(v) if isinstance(v, Sequence) else (int(v),) * 3


def _conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1, relu: bool = True) -> nn.Sequential:
    layers = [nn.Conv3d(cin, cout, k, stride=stride, padding=k // 2, bias=False), nn.BatchNorm3d(cout)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


# ----------------------------------------------------------------------------- blocks
class BasicBlock3D(nn.Module):
    """ResNet basic block (two 3x3x3 convs) with a 1x1x1 projection when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = _conv_bn(cin, cout, 3, stride)
        self.conv2 = _conv_bn(cout, cout, 3, relu=False)
        self.skip = (nn.Identity() if cin == cout and stride == 1
                     else nn.Sequential(nn.Conv3d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm3d(cout)))

    def forward(self, x):
        return F.relu(self.conv2(self.conv1(x)) + self.skip(x))


class ResidualDoubleConv3D(nn.Module):
    """TransFuse's ``DoubleConv``: two 3x3x3 conv+BN with a 1x1x1 conv+BN shortcut, then ReLU."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.body = nn.Sequential(_conv_bn(cin, cout, 3), _conv_bn(cout, cout, 3, relu=False))
        self.skip = nn.Sequential(nn.Conv3d(cin, cout, 1, bias=False), nn.BatchNorm3d(cout))

    def forward(self, x):
        return F.relu(self.body(x) + self.skip(x))


class PreActBottleneck3D(nn.Module):
    """Pre-activation bottleneck (BN-ReLU-1x1 to C/2, BN-ReLU-3x3, BN-ReLU-1x1 to C) merging
    the three BiFusion terms; a 1x1x1 projection carries the concatenated input."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        mid = max(cout // 2, 1)
        self.body = nn.Sequential(
            nn.BatchNorm3d(cin), nn.ReLU(inplace=True), nn.Conv3d(cin, mid, 1, bias=False),
            nn.BatchNorm3d(mid), nn.ReLU(inplace=True), nn.Conv3d(mid, mid, 3, padding=1, bias=False),
            nn.BatchNorm3d(mid), nn.ReLU(inplace=True), nn.Conv3d(mid, cout, 1, bias=False),
        )
        self.skip = nn.Identity() if cin == cout else nn.Conv3d(cin, cout, 1, bias=False)

    def forward(self, x):
        return self.body(x) + self.skip(x)


class BiFusion3D(nn.Module):
    """Fuse CNN features ``g`` and transformer features ``t`` of the same spatial size.

    Channel attention goes on ``t`` (the ViT carries global context; re-weighting its
    channels selects what matters for this patch), spatial attention on ``g`` (the CNN is
    the better localiser, so a voxel map focuses it), and the Hadamard term lets each
    branch modulate the other voxel-wise.
    """

    def __init__(self, ch_g: int, ch_t: int, ch_out: int, se_ratio: int = 1, ch_int: int | None = None,
                 spatial_kernel: int = 7, drop: float = 0.0):
        super().__init__()
        ch_int = ch_int or ch_out
        hidden = max(ch_t // se_ratio, 1)
        self.se = nn.Sequential(nn.AdaptiveAvgPool3d(1), nn.Conv3d(ch_t, hidden, 1), nn.ReLU(inplace=True),
                                nn.Conv3d(hidden, ch_t, 1), nn.Sigmoid())
        self.spatial = nn.Sequential(nn.Conv3d(2, 1, spatial_kernel, padding=spatial_kernel // 2, bias=False),
                                     nn.BatchNorm3d(1), nn.Sigmoid())
        self.w_g = _conv_bn(ch_g, ch_int, 1, relu=False)
        self.w_t = _conv_bn(ch_t, ch_int, 1, relu=False)
        self.hadamard = _conv_bn(ch_int, ch_int, 3)
        self.merge = PreActBottleneck3D(ch_g + ch_t + ch_int, ch_out)
        self.drop = nn.Dropout3d(drop) if drop > 0 else nn.Identity()

    def forward(self, g, t):
        bp = self.hadamard(self.w_g(g) * self.w_t(t))
        t_hat = t * self.se(t)
        pooled = torch.cat([g.amax(dim=1, keepdim=True), g.mean(dim=1, keepdim=True)], dim=1)
        g_hat = g * self.spatial(pooled)
        return self.drop(self.merge(torch.cat([g_hat, t_hat, bp], dim=1)))


class AttentionGate3D(nn.Module):
    """Attention-U-Net additive gate: a 1-channel map from the coarse signal ``gate`` and the
    skip ``x`` rescales the skip voxel-wise."""

    def __init__(self, ch_gate: int, ch_skip: int, ch_int: int):
        super().__init__()
        self.w_gate = _conv_bn(ch_gate, ch_int, 1, relu=False)
        self.w_skip = _conv_bn(ch_skip, ch_int, 1, relu=False)
        self.psi = nn.Sequential(nn.ReLU(inplace=True), _conv_bn(ch_int, 1, 1, relu=False), nn.Sigmoid())

    def forward(self, gate, x):
        return x * self.psi(self.w_gate(gate) + self.w_skip(x))


class UpFuse3D(nn.Module):
    """Upsample the coarse map x2, optionally gate the skip with it, concatenate, double conv."""

    def __init__(self, ch_in: int, ch_out: int, ch_skip: int = 0, attn: bool = False):
        super().__init__()
        self.gate = AttentionGate3D(ch_in, ch_skip, ch_skip) if attn and ch_skip else None
        self.conv = ResidualDoubleConv3D(ch_in + ch_skip, ch_out)

    def forward(self, x, skip=None):
        size = skip.shape[2:] if skip is not None else [2 * s for s in x.shape[2:]]
        x = F.interpolate(x, size=size, mode="trilinear", align_corners=False)
        if skip is not None:
            if self.gate is not None:
                skip = self.gate(x, skip)
            x = torch.cat([skip, x], dim=1)
        return self.conv(x)


class PatchEmbed3D(nn.Module):
    """Non-overlapping 3D patches -> tokens with a learnable 3D position embedding.

    The embedding is stored as a (1, C, gz, gy, gx) grid for the planned patch so it can be
    resized trilinearly for any other input size.
    """

    def __init__(self, in_channels: int, embed_dim: int, patch: tuple[int, int, int], grid: tuple[int, int, int]):
        super().__init__()
        self.proj = nn.Conv3d(in_channels, embed_dim, patch, stride=patch)
        self.pos_embed = nn.Parameter(torch.zeros(1, embed_dim, *grid))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)

    def forward(self, x):
        x = self.proj(x)
        pos = self.pos_embed
        if pos.shape[2:] != x.shape[2:]:
            pos = F.interpolate(pos, size=x.shape[2:], mode="trilinear", align_corners=False)
        x = x + pos
        return x.flatten(2).transpose(1, 2), x.shape[2:]


def _head(cin: int, mid: int, cout: int, reduce_first: bool) -> nn.Sequential:
    """TransFuse's segmentation heads: (1x1 reduce) 3x3 conv-BN-ReLU, then 3x3 conv to logits."""
    layers = [_conv_bn(cin, mid, 1)] if reduce_first else []
    layers += [_conv_bn(mid if reduce_first else cin, mid, 3), nn.Conv3d(mid, cout, 3, padding=1)]
    return nn.Sequential(*layers)


# ----------------------------------------------------------------------------- model
class TransFuse3D(nn.Module):
    #: main head f2, transformer head t2, coarse fused head f0 (released training script)
    deep_supervision_weights = [0.5, 0.3, 0.2]

    def __init__(self, in_channels: int = 1, out_channels: int = 1, spatial_size=(32, 64, 64),
                 cnn_widths: Sequence[int] = (32, 64, 128), cnn_blocks: Sequence[int] = (1, 2, 2),
                 embed_dim: int = 192, vit_depth: int = 6, num_heads: int = 4, mlp_ratio: float = 4.0,
                 patch_size=8, drop_rate: float = 0.2, fusion_drop: float = 0.1,
                 attn_drop: float = 0.0, drop_path: float = 0.0):
        super().__init__()
        if len(cnn_widths) != 3 or len(cnn_blocks) != 3:
            raise UsageError("transfuse: cnn_widths and cnn_blocks need one entry per fusion scale (1/2, 1/4, 1/8)")
        if embed_dim % num_heads:
            raise UsageError(f"transfuse: embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        c2, c1, c0 = cnn_widths  # fine -> coarse, named after the paper's g2 (finest) .. g0
        patch = _triple(patch_size)
        # The CNN reaches 1/8; the ViT grid must tile the input exactly.
        self.multiple = tuple(math.lcm(8, p) for p in patch)
        padded = [math.ceil(s / m) * m for s, m in zip(_triple(spatial_size), self.multiple)]
        grid = tuple(s // p for s, p in zip(padded, patch))

        # CNN branch: stride-2 stem (no max-pool) so the finest fusion happens at 1/2.
        self.stem = _conv_bn(in_channels, c2, 3, stride=2)
        self.layer1 = self._stage(c2, c2, cnn_blocks[0], stride=1)
        self.layer2 = self._stage(c2, c1, cnn_blocks[1], stride=2)
        self.layer3 = self._stage(c1, c0, cnn_blocks[2], stride=2)

        # Transformer branch (timm blocks, pre-LN, no CLS token as in TransFuse).
        self.patch_embed = PatchEmbed3D(in_channels, embed_dim, patch, grid)
        dpr = torch.linspace(0, drop_path, vit_depth).tolist()
        self.blocks = nn.Sequential(*[
            Block(embed_dim, num_heads, mlp_ratio=mlp_ratio, qkv_bias=True, attn_drop=attn_drop,
                  drop_path=dpr[i], norm_layer=lambda d: nn.LayerNorm(d, eps=1e-6))
            for i in range(vit_depth)])
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.up_t1 = UpFuse3D(embed_dim, c1)
        self.up_t2 = UpFuse3D(c1, c2)

        self.drop = nn.Dropout3d(drop_rate) if drop_rate > 0 else nn.Identity()
        # SE reduction 4/2/1 coarse to fine as in TransFuse_S.
        self.fuse0 = BiFusion3D(c0, embed_dim, c0, se_ratio=4, drop=fusion_drop)
        self.fuse1 = BiFusion3D(c1, c1, c1, se_ratio=2, drop=fusion_drop)
        self.fuse2 = BiFusion3D(c2, c2, c2, se_ratio=1, drop=fusion_drop)
        self.up_f1 = UpFuse3D(c0, c1, ch_skip=c1, attn=True)
        self.up_f2 = UpFuse3D(c1, c2, ch_skip=c2, attn=True)

        self.head_f0 = _head(c0, c2, out_channels, reduce_first=True)
        self.head_t2 = _head(c2, c2, out_channels, reduce_first=False)
        self.head_f2 = _head(c2, c2, out_channels, reduce_first=False)
        self._init_transformer()

    @staticmethod
    def _stage(cin: int, cout: int, n: int, stride: int) -> nn.Sequential:
        return nn.Sequential(BasicBlock3D(cin, cout, stride), *[BasicBlock3D(cout, cout) for _ in range(n - 1)])

    def _init_transformer(self):
        # ViT-style init (trunc-normal linears, zero biases) since nothing is pretrained.
        for m in self.blocks.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x):
        size = x.shape[2:]
        pad = [(-s) % m for s, m in zip(size, self.multiple)]
        if any(pad):
            # F.pad lists the last dimension first: (x_lo, x_hi, y_lo, y_hi, z_lo, z_hi).
            x = F.pad(x, (0, pad[2], 0, pad[1], 0, pad[0]), mode="replicate")

        tokens, grid = self.patch_embed(x)
        tokens = self.norm(self.blocks(tokens))
        t0 = tokens.transpose(1, 2).reshape(tokens.shape[0], -1, *grid)

        g2 = self.layer1(self.stem(x))
        g1 = self.layer2(g2)
        g0 = self.layer3(g1)
        if t0.shape[2:] != g0.shape[2:]:  # only when patch_size != 8
            t0 = F.interpolate(t0, size=g0.shape[2:], mode="trilinear", align_corners=False)
        t0 = self.drop(t0)
        t1 = self.drop(self.up_t1(t0, None))
        t2 = self.drop(self.up_t2(t1, None))
        g0, g1, g2 = self.drop(g0), self.drop(g1), self.drop(g2)

        f0 = self.fuse0(g0, t0)
        f1 = self.up_f1(f0, self.fuse1(g1, t1))
        f2 = self.up_f2(f1, self.fuse2(g2, t2))

        def full(logits):
            logits = F.interpolate(logits, size=x.shape[2:], mode="trilinear", align_corners=False)
            return logits[:, :, :size[0], :size[1], :size[2]]

        main = full(self.head_f2(f2))
        if not self.training:
            return main
        return [main, full(self.head_t2(t2)), full(self.head_f0(f0))]


# ----------------------------------------------------------------------------- registry
def _search_space(trial):
    return {"vit_depth": trial.suggest_int("arch.vit_depth", 4, 8, step=2),
            "drop_rate": trial.suggest_float("arch.drop_rate", 0.0, 0.3),
            "drop_path": trial.suggest_float("arch.drop_path", 0.0, 0.2)}


_PAPER = "Zhang et al. 2021, arXiv 2102.08005"


def _build(in_channels, out_channels, spatial_size, defaults, kwargs):
    cfg = {**defaults, **kwargs}
    return TransFuse3D(in_channels, out_channels, spatial_size=spatial_size or (32, 64, 64), **cfg)


@register_architecture("transfuse_s", search_space=_search_space)
def transfuse_s(in_channels: int = 1, out_channels: int = 1, spatial_size=None, **kwargs):
    """TransFuse-S-3D: ResNet-ish CNN (32/64/128) + 6-block ViT (192-d, patch 8)."""
    return _build(in_channels, out_channels, spatial_size,
                  dict(cnn_widths=(32, 64, 128), cnn_blocks=(1, 2, 2), embed_dim=192, vit_depth=6, num_heads=4),
                  kwargs)


@register_architecture("transfuse_l", search_space=_search_space)
def transfuse_l(in_channels: int = 1, out_channels: int = 1, spatial_size=None, **kwargs):
    """TransFuse-L-3D: wider, deeper CNN (48/96/192) + 8-block ViT (384-d, patch 8)."""
    return _build(in_channels, out_channels, spatial_size,
                  dict(cnn_widths=(48, 96, 192), cnn_blocks=(2, 2, 3), embed_dim=384, vit_depth=8, num_heads=6),
                  kwargs)
