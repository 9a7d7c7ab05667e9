"""Every registered loss: minimal at a perfect prediction, monotone in how wrong a prediction is;
the Residual Moment term's known values; deep supervision at mixed resolutions.

Masks are voxelised spheres in a small (16, 24, 24) patch. The sphere sits off the patch
centre on purpose: the first-moment RM term cannot see a symmetric erosion of a sphere that
is exactly centred (see benchmark/losses/residual_moment.py), and training patches are
randomly offset anyway.
"""
from __future__ import annotations

import math

import numpy as np
import optuna
import pytest
import torch
import torch.nn.functional as F

from benchmark.core.errors import UsageError
from benchmark.losses import create_loss, list_losses, loss_entry
from benchmark.losses.deep_supervision import DeepSupervisionLoss
from benchmark.losses.residual_moment import ResidualMomentLoss

torch.set_num_threads(1)
optuna.logging.set_verbosity(optuna.logging.WARNING)

SHAPE = (16, 24, 24)          # (D, H, W)
CENTRE = (7, 10, 13)          # integer voxel => the voxelised sphere is symmetric about it
RADIUS = 5
BIG = 20.0                    # "large-magnitude" logit: sigmoid(20) = 1 - 2e-9

ALL_LOSSES = list_losses()
EXPECTED = {"dice", "bce", "dice_bce", "focal", "tversky", "focal_tversky", "residual_moment", "dice_bce_rm"}


def sphere(centre=CENTRE, radius=RADIUS, shape=SHAPE) -> torch.Tensor:
    """(1, 1, D, H, W) float mask of the voxel centres within `radius` of `centre`."""
    grids = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    d2 = sum((g - c) ** 2 for g, c in zip(grids, centre))
    return torch.from_numpy((d2 <= radius ** 2).astype(np.float32))[None, None]


def logits_of(mask: torch.Tensor, magnitude: float = BIG) -> torch.Tensor:
    return magnitude * (2 * mask - 1)


def shifted(dx: int = 0, dz: int = 0) -> torch.Tensor:
    return sphere((CENTRE[0] + dz, CENTRE[1], CENTRE[2] + dx))


def test_expected_losses_registered():
    assert EXPECTED <= set(ALL_LOSSES)


@pytest.mark.slow  # a fresh interpreter per check (~8 s)
def test_listing_the_losses_imports_no_loss_module_and_no_monai():
    """`bench losses` reads the declared table only: no loss module, MONAI or torch is imported
    (importing them cost `bench losses` 18-20 s); building a loss imports its module."""
    import subprocess
    import sys
    probe = ("import sys\n"
             "from benchmark.cli.main import main\n"
             "sys.argv = ['bench', 'losses']\n"
             "main()\n"
             "loaded = sorted(m for m in sys.modules if m.startswith(('benchmark.losses.', 'monai', 'torch')))\n"
             "print('LOADED', loaded)\n"
             "from benchmark.losses import create_loss\n"
             "create_loss('focal')\n"
             "print('AFTER', 'benchmark.losses.focal' in sys.modules, 'monai' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert "LOADED []" in out and "AFTER True True" in out
    assert all(name in out for name in EXPECTED)           # the table itself was printed


def test_every_declared_loss_is_registered_by_its_module():
    for name in ALL_LOSSES:
        entry = loss_entry(name)
        assert callable(entry.factory) and entry.loaded and entry.family and entry.paper, name


def test_unknown_loss_is_a_usage_error():
    with pytest.raises(UsageError, match="tverksy"):
        create_loss("tverksy")


@pytest.mark.parametrize("name", ALL_LOSSES)
def test_perfect_prediction_is_minimal(name):
    loss = create_loss(name)
    gt = sphere()
    perfect = loss(logits_of(gt), gt).item()
    assert perfect < 1e-3
    worse = {
        "unsure": logits_of(gt, 2.0),
        "eroded": logits_of(sphere(radius=RADIUS - 1)),
        "dilated": logits_of(sphere(radius=RADIUS + 1)),
        "shifted": logits_of(shifted(dx=1)),
        "inverted": logits_of(1 - gt),
    }
    for what, logits in worse.items():
        assert loss(logits, gt).item() > perfect, f"{name}: {what} prediction not worse than perfect"


@pytest.mark.parametrize("name", ALL_LOSSES)
@pytest.mark.parametrize("sequence", ["eroded", "shifted"])
def test_loss_increases_monotonically_with_error(name, sequence):
    loss = create_loss(name)
    gt = sphere()
    if sequence == "eroded":
        preds = [sphere(radius=r) for r in range(RADIUS, 0, -1)]      # 5 (perfect), 4, ..., 1
    else:
        preds = [shifted(dx=s) for s in range(0, 5)]                    # 0 (perfect), 1, ..., 4
    values = [loss(logits_of(p), gt).item() for p in preds]
    assert all(b > a for a, b in zip(values, values[1:])), f"{name} not increasing over {sequence}: {values}"


@pytest.mark.parametrize("name", ALL_LOSSES)
def test_gradients_finite_batched(name):
    loss = create_loss(name)
    gen = torch.Generator().manual_seed(0)
    gt = torch.cat([sphere(), shifted(dx=2)])                            # batch of 2
    for logits in (torch.randn(gt.shape, generator=gen), logits_of(gt)):
        logits = logits.clone().requires_grad_(True)
        value = loss(logits, gt)
        assert value.ndim == 0 and torch.isfinite(value)
        value.backward()
        assert torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("name", [n for n in ALL_LOSSES if loss_entry(n).search_space is not None])
def test_search_space_builds_the_loss(name):
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1)).ask()
    kwargs = loss_entry(name).search_space(trial)
    assert kwargs and all(p.startswith("loss.") for p in trial.params)
    loss = create_loss(name, **kwargs)
    gt = sphere()
    assert loss(logits_of(gt), gt).item() < loss(logits_of(shifted(dx=2)), gt).item()


@pytest.mark.parametrize("name, kwargs", [
    ("focal", {"gamma": -1.0}), ("focal", {"alpha": 1.5}),
    ("tversky", {"alpha": -0.1}), ("focal_tversky", {"gamma": 0.0}),
    ("residual_moment", {"mode": "second"}), ("dice_bce_rm", {"weight": -1.0}),
])
def test_bad_kwargs_rejected(name, kwargs):
    with pytest.raises(ValueError):
        create_loss(name, **kwargs)


def test_tversky_half_half_is_dice():
    gt = sphere()
    logits = torch.randn(gt.shape, generator=torch.Generator().manual_seed(3))
    tv = create_loss("tversky", alpha=0.5, beta=0.5)(logits, gt)
    dice = create_loss("dice")(logits, gt)
    assert tv.item() == pytest.approx(dice.item(), rel=1e-5)


def test_tversky_beta_penalises_false_negatives():
    gt = sphere()
    under = logits_of(sphere(radius=RADIUS - 1))       # only false negatives
    recall_heavy = create_loss("tversky", alpha=0.3, beta=0.7)(under, gt)
    precision_heavy = create_loss("tversky", alpha=0.7, beta=0.3)(under, gt)
    assert recall_heavy.item() > precision_heavy.item()


def test_focal_tversky_is_tversky_to_the_one_over_gamma():
    gt = sphere()
    logits = logits_of(sphere(radius=RADIUS - 2))
    tv = create_loss("tversky")(logits, gt).item()
    ftl = create_loss("focal_tversky", gamma=2.0)(logits, gt).item()
    assert ftl == pytest.approx(math.sqrt(tv), rel=1e-5)


# ----------------------------------------------------------------------------- residual moment
HARD = 50.0   # sigmoid(+-50) is 1 / 2e-22 in float32: P is a hard mask, so moments are exact


@pytest.mark.parametrize("mode", ["moment", "pixel"])
@pytest.mark.parametrize("axis", ["x", "z"])
def test_rm_grows_with_shift(mode, axis):
    rm = ResidualMomentLoss(mode=mode)
    gt = sphere()
    values = [rm(logits_of(shifted(**{f"d{axis}": s}), HARD), gt).item() for s in range(5)]
    assert values[0] < 1e-12
    assert all(b > a for a, b in zip(values, values[1:])), values


def test_rm_moment_matches_centroid_shift():
    # hard masks of equal size: RM = |G| / N * shift / scale, scale = half the largest extent
    rm = ResidualMomentLoss(mode="moment")
    gt = sphere()
    n_vox, scale = math.prod(SHAPE), max(SHAPE) / 2
    for s in range(1, 5):
        expected = gt.sum().item() / n_vox * s / scale
        assert rm(logits_of(shifted(dx=s), HARD), gt).item() == pytest.approx(expected, rel=1e-4)


def test_rm_uses_one_common_scale_and_physical_spacing():
    gt = sphere()
    iso = ResidualMomentLoss(mode="moment")
    # D = 16 < W = 24, but a one-voxel shift costs the same along z as along x: z is not stretched
    along_x = iso(logits_of(shifted(dx=1), HARD), gt).item()
    along_z = iso(logits_of(shifted(dz=1), HARD), gt).item()
    assert along_z == pytest.approx(along_x, rel=1e-5)
    # 2 mm slices: a one-slice shift is 2 mm, twice a 1 mm in-plane shift (same scale for both)
    aniso = ResidualMomentLoss(mode="moment", spacing_mm=(2.0, 1.0, 1.0), scale_mm=max(SHAPE) / 2)
    assert aniso(logits_of(shifted(dx=1), HARD), gt).item() == pytest.approx(along_x, rel=1e-5)
    assert aniso(logits_of(shifted(dz=1), HARD), gt).item() == pytest.approx(2 * along_x, rel=1e-5)
    # default scale = half the largest physical extent, now z's 16 x 2 mm = 32 mm
    default = ResidualMomentLoss(mode="moment", spacing_mm=(2.0, 1.0, 1.0))
    assert default(logits_of(shifted(dx=1), HARD), gt).item() == pytest.approx(along_x * 12 / 16, rel=1e-5)


def test_rm_pixel_mode_weights_residual_by_distance_from_centre():
    # a single wrong voxel at index i along x costs |c_x(i)| (+ its |c_y|, |c_z|) / N
    rm = ResidualMomentLoss(mode="pixel")
    gt = torch.zeros(1, 1, *SHAPE)
    near, far = gt.clone(), gt.clone()
    near[0, 0, 7, 11, 12] = 1          # next to the centre (7.5, 11.5, 11.5)
    far[0, 0, 7, 11, 23] = 1           # at the x border
    v_near, v_far = rm(logits_of(near, HARD), gt).item(), rm(logits_of(far, HARD), gt).item()
    scale, n_vox = max(SHAPE) / 2, math.prod(SHAPE)
    assert v_near == pytest.approx((0.5 + 0.5 + 0.5) / scale / n_vox, rel=1e-4)
    assert v_far == pytest.approx((0.5 + 0.5 + 11.5) / scale / n_vox, rel=1e-4)


def test_rm_rejects_wrong_spacing_length():
    with pytest.raises(ValueError, match="spacing"):
        ResidualMomentLoss(spacing_mm=(1.0, 1.0))(torch.zeros(1, 1, *SHAPE), torch.zeros(1, 1, *SHAPE))


def test_dice_bce_rm_is_sum_of_parts():
    gt = sphere()
    logits = torch.randn(gt.shape, generator=torch.Generator().manual_seed(5))
    combined = create_loss("dice_bce_rm", weight=2.5, mode="pixel")(logits, gt)
    parts = create_loss("dice_bce")(logits, gt) + 2.5 * create_loss("residual_moment", mode="pixel")(logits, gt)
    assert combined.item() == pytest.approx(parts.item(), rel=1e-6)


# ----------------------------------------------------------------------------- deep supervision
def _pyramid(full_logits: torch.Tensor) -> list[torch.Tensor]:
    """Full, half and quarter resolution versions of a logit map, as a deep-supervised net returns."""
    return [full_logits, F.avg_pool3d(full_logits, 2), F.avg_pool3d(full_logits, 4)]


def test_deep_supervision_constant_coarse_map_equals_full_resolution():
    # trilinear upsampling keeps a constant map constant: a known answer for the mixed case
    base = create_loss("dice_bce")
    gt = sphere()
    full = logits_of(gt)
    coarse = torch.full((1, 1, 4, 6, 6), -1.5)
    ds = DeepSupervisionLoss(base, weights=[3.0, 1.0])
    expected = 0.75 * base(full, gt) + 0.25 * base(torch.full_like(full, -1.5), gt)
    assert ds([full, coarse], gt).item() == pytest.approx(expected.item(), rel=1e-6)


@pytest.mark.parametrize("name", ALL_LOSSES)
def test_deep_supervision_mixed_resolutions(name):
    ds = DeepSupervisionLoss(create_loss(name), weights=[1.0, 0.5, 0.25])
    gt = sphere()
    good = ds(_pyramid(logits_of(gt)), gt).item()
    bad = ds(_pyramid(logits_of(shifted(dx=4))), gt).item()
    assert good < bad
    outs = [o.detach().clone().requires_grad_(True) for o in _pyramid(torch.randn(gt.shape))]
    value = ds(outs, gt)
    value.backward()
    for o in outs:
        assert o.grad is not None and torch.isfinite(o.grad).all() and o.grad.abs().sum() > 0


def test_deep_supervision_default_weights_and_errors():
    base = create_loss("dice")
    gt = sphere()
    outs = _pyramid(torch.randn(gt.shape, generator=torch.Generator().manual_seed(2)))
    # no weights: only the full-resolution head counts; a bare tensor passes straight through
    assert DeepSupervisionLoss(base)(outs, gt).item() == pytest.approx(base(outs[0], gt).item())
    assert DeepSupervisionLoss(base)(outs[0], gt).item() == pytest.approx(base(outs[0], gt).item())
    with pytest.raises(ValueError, match="3 outputs but 2"):
        DeepSupervisionLoss(base, weights=[1.0, 0.5])(outs, gt)
