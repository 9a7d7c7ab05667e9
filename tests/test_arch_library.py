"""Library baselines (nnU-Net plain/ResEnc, smp U-Net, SwinUNETR, UNETR), DiNTS, BiO-Net and
BiX-Net: shapes at the three preset patches, gradients, a few optimisation steps, and the
choices each wrapper makes (nnU-Net's plan, padding, the fixed DiNTS topology)."""
from __future__ import annotations

import math

import pytest
import torch

from architectures import architecture_entry, create_architecture
from architectures._layers import PadToMultiple, plan_strides
from benchmark.core.errors import UsageError
from conftest import sphere_batch

from benchmark.losses import create_loss
from benchmark.losses.deep_supervision import DeepSupervisionLoss

NAMES = ["nnunet_plain", "nnunet_resenc", "smp_unet", "swinunetr", "unetr", "dints", "dints_fixed", "bionet",
         "bixnas"]
SMOKE, CPU, PAPER = (8, 16, 16), (16, 32, 32), (32, 64, 64)  # (D, H, W) of the three presets


pytestmark = pytest.mark.usefixtures("one_thread")


def _build(name, size):
    return create_architecture(name, in_channels=1, out_channels=1, spatial_size=size)




# Parameters the libraries create but never use in these configurations: nnU-Net's coarsest
# deep-supervision head (its loss weight is 0), the cross-attention norm MONAI's TransformerBlock
# builds even when cross-attention is off (UNETR), and DiNTS's input/output stems at resolutions
# the decoded topology leaves inactive (MONAI builds a stem for every depth).
_UNUSED_BY_DESIGN = {"nnunet_plain": ("seg_layers",), "nnunet_resenc": ("seg_layers",),
                     "unetr": ("norm_cross_attn",), "dints": ("stem_down.1.", "stem_up.2."),
                     "dints_fixed": ("stem_down.1.", "stem_up.2.")}


def _unused_by_design(name: str) -> tuple:
    """Parameters a network builds but never uses; for ``dints`` also the stems of the depths its
    committed topology leaves inactive (MONAI's DiNTS builds a stem for every depth: the searched
    topology of 2026-12-06 runs at the lowest resolution only)."""
    names = _UNUSED_BY_DESIGN.get(name, ())
    if name == "dints":
        from architectures.dints import default_topology
        node_a = default_topology()["node_a"]
        names += tuple(f"stem_down.{d}." for d, on in enumerate(node_a[0]) if not on)
        names += tuple(f"stem_up.{d}." for d, on in enumerate(node_a[-1]) if not on)
    return names


def _criterion(model):
    return DeepSupervisionLoss(create_loss("dice_bce"), getattr(model, "deep_supervision_weights", None))


def test_registered_with_metadata():
    for name in NAMES:
        entry = architecture_entry(name)
        assert entry.family == ("library" if name not in ("dints", "dints_fixed", "bionet", "bixnas") else "NAS"), name
        assert "arXiv" in entry.paper, name
        assert entry.search_space is not None, name


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_smoke_patch_trains(name):
    """Train-mode shapes, finite gradients on every parameter, and Adam lowering Dice+BCE."""
    model = _build(name, SMOKE).train()
    image, mask = sphere_batch(SMOKE, batch=1)  # batch 1: SwinUNETR pads this patch 16-fold
    criterion = _criterion(model)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for step in range(4):
        opt.zero_grad()
        out = model(image)
        if step == 0:
            outs = out if isinstance(out, list) else [out]
            weights = getattr(model, "deep_supervision_weights", None)
            if weights is not None:
                assert len(outs) == len(weights) and math.isclose(sum(weights), 1.0)
            assert outs[0].shape == (1, 1, *SMOKE)
        loss = criterion(out, mask)
        loss.backward()
        if step == 0:
            for pname, p in model.named_parameters():
                if p.grad is None:
                    assert any(u in pname for u in _unused_by_design(name)), f"{pname} receives no gradient"
                    continue
                assert torch.isfinite(p.grad).all(), pname
        opt.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses), losses
    assert losses[-1] < losses[0], losses


#: the two whose cpu-size training step takes seconds run in the full suite only
HEAVY_AT_CPU_SIZE = ("nnunet_resenc", "swinunetr")


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in HEAVY_AT_CPU_SIZE else n
                                  for n in NAMES])
def test_cpu_patch_train_output(name):
    model = _build(name, CPU).train()
    out = model(torch.randn(1, 1, *CPU))
    outs = out if isinstance(out, list) else [out]
    assert outs[0].shape == (1, 1, *CPU)
    for o in outs:
        assert o.shape[:2] == (1, 1) and torch.isfinite(o).all()


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_paper_patch_eval_output(name):
    model = _build(name, PAPER).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 1, *PAPER))
    assert isinstance(out, torch.Tensor), "eval() must return the main map only"
    assert out.shape == (1, 1, *PAPER)
    assert torch.isfinite(out).all()


# UNETR has its own test below; SwinUNETR's smoke patch above is already padded (to 32x32x64).
@pytest.mark.parametrize("name", [n for n in NAMES if n not in ("unetr", "swinunetr")])
def test_odd_size_is_padded_and_cropped(name):
    model = _build(name, SMOKE).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 1, 9, 20, 18))
    assert out.shape == (1, 1, 9, 20, 18)


def test_unetr_pads_to_its_built_size_and_refuses_larger():
    model = _build("unetr", SMOKE).eval()  # built for 16x16x16: the smoke patch rounded up to 16
    with torch.no_grad():
        assert model(torch.randn(1, 1, 5, 11, 16)).shape == (1, 1, 5, 11, 16)
    with pytest.raises(UsageError, match="spatial_size"):
        model(torch.randn(1, 1, *CPU))


def test_plan_strides_follows_nnunet_rule():
    # 64x64x32 (x, y, z): z stops at 4 after three halvings, x/y after four.
    assert plan_strides(PAPER) == [(2, 2, 2), (2, 2, 2), (2, 2, 2), (1, 2, 2)]
    assert plan_strides(SMOKE) == [(2, 2, 2), (1, 2, 2)]
    assert plan_strides(SMOKE, n_pools=4) == [(2, 2, 2), (1, 2, 2), (1, 1, 1), (1, 1, 1)]
    # a lone remaining axis is halved only while >= 12 voxels
    assert plan_strides((4, 4, 11)) == []
    assert plan_strides((4, 4, 12)) == [(1, 1, 2)]


def test_nnunet_plan_and_deep_supervision():
    model = _build("nnunet_plain", PAPER)
    plan = model.module.plan
    assert plan["n_stages"] == 5
    assert plan["features_per_stage"] == [32, 64, 128, 256, 320]
    assert plan["strides"] == [[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2], [1, 2, 2]]
    # nnU-Net: 1/2^i, coarsest 0, normalised
    w = model.deep_supervision_weights
    assert w[-1] == 0 and math.isclose(sum(w), 1.0) and math.isclose(w[0] / w[1], 2.0)
    model.train()
    outs = model(torch.randn(1, 1, *CPU))  # a smaller input than planned still works
    assert [o.shape[2:] for o in outs] == [CPU, (8, 16, 16), (4, 8, 8), (2, 4, 4)]


def test_pad_to_multiple_crops_coarse_outputs():
    class TwoScales(torch.nn.Module):
        deep_supervision_weights = [0.7, 0.3]

        def forward(self, x):
            assert all(s % 4 == 0 for s in x.shape[2:])
            return [x, torch.nn.functional.avg_pool3d(x, 2)]

    wrapped = PadToMultiple(TwoScales(), 4)
    assert wrapped.deep_supervision_weights == [0.7, 0.3]
    x = torch.randn(1, 1, 5, 6, 7)
    full, half = wrapped(x)
    assert torch.equal(full, x)
    assert half.shape[2:] == (3, 3, 4)


def test_dints_topology_is_the_seeded_decode():
    from architectures.dints import FIXED_TOPOLOGY, decode_seeded_topology
    assert decode_seeded_topology(FIXED_TOPOLOGY["seed"]) == FIXED_TOPOLOGY


def test_smp_unet_rejects_encoders_without_strides():
    with pytest.raises(UsageError, match="strides"):
        create_architecture("smp_unet", spatial_size=SMOKE, encoder_name="mobilenet_v2")
