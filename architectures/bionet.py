"""BiO-Net-3D: the recurrent U-Net with forward and backward skips.

Paper: Xiang, Zhang, Song, Cai, "BiO-Net: Learning Recurrent Bi-directional Connections for
Encoder-Decoder Architecture", MICCAI 2020 (arXiv 2007.00243). Code lineage:
tiangexiang/BiO-Net (PyTorch version), the backbone BiX-NAS searches over (``bixnas.py``).

The network runs its encoder-decoder pass T times with the same convolution weights. Forward
skips carry each encoder level's features to the decoder of the same pass (as in a U-Net);
backward skips carry each decoder level's features into the encoder of the *next* pass, which
concatenates them with its sequential input (on the first pass the sequential input is
concatenated with itself, so every pass has the same input width and can share weights).
Topology, as in the original:
  stem (3 convs at full resolution, max-pool) -> T x [encoder levels 0..depth-1 (2 convs, skip
  out, 1 conv widening to the next level, max-pool) -> middle (2 convs, transposed-conv up) ->
  decoder levels depth-1..0 (2 convs on concat(up, forward skip), skip out, transposed-conv up)]
  -> post (2 convs at full resolution, on the last pass or the concat of all passes with
  ``integrate=True``) -> 1x1x1 head.

What changed for 3D nodule patches:
  * Conv3d / BatchNorm3d / MaxPool3d / ConvTranspose3d; widths base 16 (16..256) instead of 32;
  * pooling per axis planned from the patch with nnU-Net's rule (``_layers.plan_strides``, an axis
    is halved only while it stays >= 4 voxels): the original's five 2x poolings would take the
    z axis of a 64x64x32 patch to 1 voxel; here the strides are (2,2,2) x3, (1,2,2), (1,1,1) and
    every transposed convolution undoes its own level's stride (kernel = stride);
  * downsampling is max-pooling (as in the original), not strided convolution;
  * the norm is separate per pass for *every* recurrent conv (including the middle block, whose
    norm the original shares); instance norm by default, BatchNorm with ``norm="batch"`` (see
    "Normalisation"), the latter with PyTorch momentum semantics, default 0.1: the original
    PyTorch port uses 0.01, and BiX-NAS's 0.99 (a Keras carry-over) would make the running
    statistics follow the last batch only;
  * conv -> norm -> ReLU (the original applies ReLU before BN); convs before a norm have no bias;
  * one sigmoid logit out, no output activation (the losses take logits); inputs zero-padded to
    the total stride and cropped back (``PadToMultiple``).
Defaults: T = 3, depth 4, base 16, instance norm. Single output, no deep supervision.

Normalisation (issue 17's diagnosis: the defect behind "bionet does not learn at lr 1e-3"). With
BatchNorm, an output passes through ~30 norms (3 passes x encoder, middle and decoder convs),
each normalised by the batch in training and by its running statistics in evaluation. Early in
training those running statistics lag the batch statistics, and the lag compounds through the
stack: on a fixed batch of 8 nodule-like 16x32x32 patches (base 8, Adam 1e-3, Dice+BCE) the
train-mode output already marked 3-9 % of the voxels foreground while the eval-mode output
(what validation and test score) marked none for 36 steps; at smoke size, after 30 steps at
3e-3, eval mode predicted all background (3 seeds) or all foreground (1 seed) for all four seeds
tried, while the training loss fell. Validation Dice then stays near zero and the best epoch
(which selects the test checkpoint) is picked on noise. Instance norm (nnU-Net's choice for
batches of a few 3D patches) has no running statistics, so evaluation sees the network that
trained: the 16x32x32 run's eval output followed its train output from the first step (eval
Dice 0.57 at step 40, against 0.04 with BatchNorm), and at smoke size seeds 0 and 1 reached eval
Dice 0.68 and 0.73; seeds 2 and 3 followed the same loss curve as with BatchNorm, held by their
initial offset (see "Initialisation"). Per-pass norms stay (the design: each pass has its own
affine parameters). Measured, not a cause: gradient norms grow towards the input (stem and
encoder 15-50, post block 0.07-0.2, head 0.5 at the first step), since the shared encoder
weights collect the gradient of all three passes; nothing vanishes through the recurrence.

Initialisation (measured, not changed). The head is a 1x1x1 conv on few channels (8 at the
cpu preset) after a ReLU, so with PyTorch's default init its output starts at a seed-dependent
offset common to every voxel (+0.8 for BiX-Net seed 1, against a per-voxel spread of 0.3): such a
seed predicts all foreground until the optimiser has moved the offset, and may then swing to all
background. On the smoke-size regression batch (30 Adam steps at 3e-3, instance norm) BiO-Net
seeds 2 and 3 and BiX-Net seeds 0 and 3 were still held there. A zero head (no gradient below it
on the first step) and a head scaled down tenfold (starting at logit ~0, where Dice+BCE first
pushes every voxel to background) both left a seed predicting nothing after 30 steps, so the
default init stays; a prior-probability bias or a longer warm-up are the next candidates.
"""
from __future__ import annotations

from functools import partial

import torch
from torch import nn

from benchmark.core.errors import UsageError

from . import register_architecture
from ._layers import PadToMultiple, plan_strides, total_stride

__all__ = ["BiONet3D", "RecurrentConv", "make_norm", "NORMS"]

_PAPER_PATCH = (32, 64, 64)


NORMS = ("instance", "batch")


def make_norm(channels: int, kind: str = "instance", momentum: float = 0.1) -> nn.Module:
    """The normalisation after every conv: ``instance`` (default) or ``batch`` (the papers').

    Why instance norm by default: see the module docstring ("Normalisation"). ``momentum`` is
    BatchNorm's (PyTorch semantics); instance norm keeps no running statistics.
    """
    if kind == "instance":
        return nn.InstanceNorm3d(channels, affine=True)
    if kind == "batch":
        return nn.BatchNorm3d(channels, momentum=momentum)
    raise UsageError(f"unknown norm {kind!r} (choose from {', '.join(NORMS)})")


class RecurrentConv(nn.Module):
    """One convolution shared by all passes, with its own norm per pass: conv -> norm[t] -> ReLU.

    ``transposed=True`` makes it an up-sampling ConvTranspose3d with kernel = stride.
    ``passes`` lists the passes that use it (BiX-Net builds norms only for passes it runs);
    ``norm(channels)`` makes each pass's norm (see :func:`make_norm`).
    """

    def __init__(self, cin: int, cout: int, passes, norm=make_norm, stride=(1, 1, 1),
                 transposed: bool = False):
        super().__init__()
        if transposed:
            self.conv = nn.ConvTranspose3d(cin, cout, tuple(stride), stride=tuple(stride), bias=False)
        else:
            self.conv = nn.Conv3d(cin, cout, 3, stride=tuple(stride), padding=1, bias=False)
        self.norms = nn.ModuleDict({str(t): norm(cout) for t in passes})
        self.act = nn.ReLU(inplace=True)

    def forward(self, x, t: int):
        return self.act(self.norms[str(t)](self.conv(x)))


def _plain_conv(cin: int, cout: int, norm) -> nn.Sequential:
    return nn.Sequential(nn.Conv3d(cin, cout, 3, padding=1, bias=False), norm(cout), nn.ReLU(inplace=True))


class _EncoderLevel(nn.Module):
    def __init__(self, cin: int, cout: int, passes, norm, pool_stride):
        super().__init__()
        self.conv1 = RecurrentConv(2 * cin, cin, passes, norm)
        self.conv2 = RecurrentConv(cin, cin, passes, norm)
        self.widen = RecurrentConv(cin, cout, passes, norm)
        self.pool = nn.MaxPool3d(tuple(pool_stride), stride=tuple(pool_stride))

    def forward(self, x, backward_skip, t: int):
        skip = self.conv2(self.conv1(torch.cat([x, backward_skip], dim=1), t), t)
        return skip, self.pool(self.widen(skip, t))


class _DecoderLevel(nn.Module):
    """``up_passes``: the passes whose up-sampled output is used (see BiONet3D)."""

    def __init__(self, c_below: int, c: int, passes, norm, up_stride, up_passes):
        super().__init__()
        self.conv1 = RecurrentConv(c_below + c, c, passes, norm)
        self.conv2 = RecurrentConv(c, c, passes, norm)
        self.up = RecurrentConv(c, c, up_passes, norm, stride=up_stride, transposed=True)

    def forward(self, x, forward_skip, t: int):
        skip = self.conv2(self.conv1(torch.cat([x, forward_skip], dim=1), t), t)
        return skip, (self.up(skip, t) if str(t) in self.up.norms else None)


class BiONet3D(nn.Module):
    def __init__(self, in_channels: int = 1, out_channels: int = 1, spatial_size=_PAPER_PATCH,
                 base_channels: int = 16, depth: int = 4, iterations: int = 3, integrate: bool = False,
                 norm: str = "instance", bn_momentum: float = 0.1):
        super().__init__()
        if depth < 1 or iterations < 1:
            raise UsageError(f"bionet: depth and iterations must be >= 1, got depth={depth}, iterations={iterations}")
        self.depth, self.iterations, self.integrate = depth, iterations, integrate
        # one pooling after the stem, then one after each encoder level
        self.strides = plan_strides(spatial_size, n_pools=depth + 1)
        self.min_divisor = total_stride(self.strides)
        widths = [base_channels * 2 ** i for i in range(depth + 1)]
        passes = range(iterations)
        m = partial(make_norm, kind=norm, momentum=bn_momentum)
        m(1)  # an unknown norm fails here, with its one-line message
        self.stem = nn.Sequential(_plain_conv(in_channels, widths[0], m), _plain_conv(widths[0], widths[0], m),
                                  _plain_conv(widths[0], widths[0], m),
                                  nn.MaxPool3d(self.strides[0], stride=self.strides[0]))
        self.encoders = nn.ModuleList(_EncoderLevel(widths[l], widths[l + 1], passes, m, self.strides[l + 1])
                                      for l in range(depth))
        self.middle = nn.ModuleList([RecurrentConv(widths[depth], widths[depth], passes, m),
                                     RecurrentConv(widths[depth], widths[depth], passes, m),
                                     RecurrentConv(widths[depth], widths[depth], passes, m,
                                                   stride=self.strides[depth], transposed=True)])
        # decoders[l] works at encoder level l; its transposed conv undoes the pooling into level l.
        # The finest level's up-sampling feeds only the post block, so without ``integrate`` only
        # the last pass computes it (and only that pass gets a norm for it).
        final_up = passes if integrate else [iterations - 1]
        self.decoders = nn.ModuleList(_DecoderLevel(widths[l + 1], widths[l], passes, m, self.strides[l],
                                                    passes if l > 0 else final_up)
                                      for l in range(depth))
        post_in = widths[0] * iterations if integrate else widths[0]
        self.post = nn.Sequential(_plain_conv(post_in, widths[0], m), _plain_conv(widths[0], widths[0], m))
        self.head = nn.Conv3d(widths[0], out_channels, 1)

    def forward(self, x):
        x = self.stem(x)
        backward = [None] * self.depth
        passes_out = []
        for t in range(self.iterations):
            h, forward_skips = x, []
            for l, enc in enumerate(self.encoders):
                skip, h = enc(h, h if backward[l] is None else backward[l], t)
                forward_skips.append(skip)
            for conv in self.middle:
                h = conv(h, t)
            for l in reversed(range(self.depth)):
                backward[l], h = self.decoders[l](h, forward_skips[l], t)
            if h is not None:
                passes_out.append(h)
        h = torch.cat(passes_out, dim=1) if self.integrate else passes_out[-1]
        return self.head(self.post(h))


def _search_space(trial):
    return {"base_channels": trial.suggest_categorical("arch.base_channels", [8, 16, 24]),
            "iterations": trial.suggest_int("arch.iterations", 1, 3),
            "integrate": trial.suggest_categorical("arch.integrate", [False, True])}


@register_architecture("bionet", search_space=_search_space)
def bionet(in_channels: int = 1, out_channels: int = 1, spatial_size=None, **kwargs):
    """BiO-Net-3D, T=3 passes, depth 4, base width 16, pooling planned for the patch."""
    net = BiONet3D(in_channels, out_channels, spatial_size or _PAPER_PATCH, **kwargs)
    return PadToMultiple(net, net.min_divisor)
