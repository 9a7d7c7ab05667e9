"""Per-nodule metrics on shapes with known answers, and their aggregation.

Two spheres of radius r whose centres are d apart: for the continuous shapes the Dice is the
lens volume over the sphere volume, and a point of one surface at polar angle theta (cos theta
= t, uniformly distributed over the sphere's area) lies |sqrt(r^2 - 2 r d t + d^2) - r| from
the other surface, which gives the HD95 (its 95th percentile, about 0.95 d) and the ASSD (its
mean, about d / 2). The voxelised spheres must agree within a voxel.
"""
from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd
import pytest
import torch

from benchmark.core.errors import DataError
from benchmark.run.metrics import METRICS, SIZE_BINS, TEXTURES, aggregate, empty_penalty_mm, nodule_metrics, size_bin

torch.set_num_threads(1)

SHAPE = (32, 40, 40)
RADIUS = 8.0
CENTRE = (16.0, 20.0, 20.0)


def ball(centre_mm, radius_mm=RADIUS, shape=SHAPE, spacing=(1.0, 1.0, 1.0)) -> np.ndarray:
    grids = np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, spacing)], indexing="ij")
    return sum((g - c) ** 2 for g, c in zip(grids, centre_mm)) <= radius_mm ** 2


def moved(centre, axis: int, by: float):
    c = list(centre)
    c[axis] += by
    return tuple(c)


def surface_distances(r: float, d: float) -> np.ndarray:
    t = np.linspace(-1.0, 1.0, 200_001)
    return np.abs(np.sqrt(r * r - 2 * r * d * t + d * d) - r)


def lens_dice(r: float, d: float) -> float:
    return (math.pi * (4 * r + d) * (2 * r - d) ** 2 / 12) / (4 / 3 * math.pi * r ** 3)


@pytest.mark.parametrize("offset", [1, 2, 3])
@pytest.mark.parametrize("axis", [0, 2])
def test_two_spheres_overlap_matches_counting(offset, axis):
    gt = ball(CENTRE)
    pred = ball(moved(CENTRE, axis, offset))
    m = nodule_metrics(pred, gt, 1.0)
    inter, union = int((pred & gt).sum()), int((pred | gt).sum())
    assert m["dice"] == pytest.approx(2 * inter / (pred.sum() + gt.sum()), rel=1e-6)
    assert m["iou"] == pytest.approx(inter / union, rel=1e-6)
    assert m["sensitivity"] == pytest.approx(inter / gt.sum(), rel=1e-6)
    assert m["precision"] == pytest.approx(inter / pred.sum(), rel=1e-6)
    assert m["pred_voxels"] == pred.sum() and m["gt_voxels"] == gt.sum()
    # and the voxelised overlap is close to the continuous spheres' lens
    assert m["dice"] == pytest.approx(lens_dice(RADIUS, offset), abs=0.02)


@pytest.mark.parametrize("offset", [1, 2, 3])
def test_two_spheres_surface_distances(offset):
    m = nodule_metrics(ball(moved(CENTRE, 1, offset)), ball(CENTRE), 1.0)
    dist = surface_distances(RADIUS, offset)
    assert m["hd95_mm"] == pytest.approx(offset, abs=1.0)
    assert m["hd95_mm"] == pytest.approx(np.percentile(dist, 95), abs=1.0)
    # ASSD is the mean surface distance: about half the offset, not the offset
    assert m["assd_mm"] == pytest.approx(dist.mean(), abs=1.0)
    assert m["assd_mm"] < m["hd95_mm"]


def test_identical_masks():
    gt = ball(CENTRE)
    m = nodule_metrics(gt.copy(), gt, 0.7)
    assert m["dice"] == 1.0 and m["iou"] == 1.0 and m["nsd"] == 1.0
    assert m["hd95_mm"] == 0.0 and m["assd_mm"] == 0.0
    assert m["sensitivity"] == 1.0 and m["precision"] == 1.0 and m["rve"] == 0.0
    assert m["empty_pred"] is False


def test_nsd_follows_the_tolerance():
    gt = ball(CENTRE)
    pred = ball(moved(CENTRE, 2, 2))
    # every surface point is within ~2 mm of the other surface ...
    assert nodule_metrics(pred, gt, 1.0, nsd_tolerance_mm=2.5)["nsd"] == pytest.approx(1.0)
    # ... and a tighter tolerance accepts fewer of them
    values = [nodule_metrics(pred, gt, 1.0, nsd_tolerance_mm=t)["nsd"] for t in (2.0, 1.0, 0.5)]
    assert 1.0 >= values[0] > values[1] > values[2] >= 0.0
    # one voxel off is within a 1 mm tolerance everywhere
    assert nodule_metrics(ball(moved(CENTRE, 0, 1)), gt, 1.0)["nsd"] == pytest.approx(1.0)


def test_relative_volume_error():
    gt = ball(CENTRE)
    pred = ball(CENTRE, RADIUS + 1)
    m = nodule_metrics(pred, gt, 1.0)
    assert m["rve"] == pytest.approx((pred.sum() - gt.sum()) / gt.sum())
    assert m["rve"] > 0 and nodule_metrics(ball(CENTRE, RADIUS - 1), gt, 1.0)["rve"] < 0


def test_empty_prediction_is_explicit_and_counted():
    gt = ball(CENTRE)
    spacing = (2.0, 0.8, 0.8)
    m = nodule_metrics(np.zeros_like(gt), gt, spacing)
    assert m["empty_pred"] is True and m["pred_voxels"] == 0
    for k in ("dice", "iou", "nsd", "sensitivity", "precision"):
        assert m[k] == 0.0
    assert m["rve"] == -1.0
    diagonal = math.sqrt((32 * 2.0) ** 2 + (40 * 0.8) ** 2 + (40 * 0.8) ** 2)
    assert m["hd95_mm"] == m["assd_mm"] == pytest.approx(diagonal) == empty_penalty_mm(gt.shape, spacing)
    assert all(math.isfinite(m[k]) for k in METRICS)
    # a wrong but non-empty guess is never scored worse than the miss
    far = np.zeros_like(gt)
    far[0, 0, 0] = True
    assert nodule_metrics(far, gt, spacing)["hd95_mm"] < m["hd95_mm"]
    # the miss stays in the aggregate: counted, and pulling the mean down
    hit = nodule_metrics(gt.copy(), gt, spacing)
    agg = aggregate(pd.DataFrame([hit, m]))
    assert agg["n"] == 2 and agg["n_empty"] == 1 and agg["dice_mean"] == pytest.approx(0.5)


def test_empty_ground_truth_raises_naming_the_nodule():
    gt = np.zeros(SHAPE, bool)
    with pytest.raises(DataError, match="LIDC-0001-n2"):
        nodule_metrics(ball(CENTRE), gt, 1.0, nodule_id="LIDC-0001-n2")


def test_anisotropic_spacing_is_respected():
    spacing = (2.0, 0.8, 0.8)                     # (z, y, x), thick slices
    shape = (16, 50, 50)
    centre = (16.0, 20.0, 20.0)                   # mm
    gt = ball(centre, shape=shape, spacing=spacing)
    assert np.ptp(np.nonzero(gt)[0]) < np.ptp(np.nonzero(gt)[2])   # round in mm, flat in voxels
    z_shift = ball(moved(centre, 0, 2 * 2.0), shape=shape, spacing=spacing)      # 2 slices = 4 mm
    x_shift = ball(moved(centre, 2, 2 * 0.8), shape=shape, spacing=spacing)      # 2 columns = 1.6 mm
    mz, mx = nodule_metrics(z_shift, gt, spacing), nodule_metrics(x_shift, gt, spacing)
    assert mz["hd95_mm"] == pytest.approx(4.0, abs=0.8)
    assert mx["hd95_mm"] == pytest.approx(1.6, abs=0.8)
    assert mz["assd_mm"] == pytest.approx(surface_distances(RADIUS, 4.0).mean(), abs=2.0)
    assert mx["assd_mm"] == pytest.approx(surface_distances(RADIUS, 1.6).mean(), abs=0.8)
    # the same voxels read as 1 mm isotropic: 2 voxels = 2 mm, whatever the axis
    assert nodule_metrics(z_shift, gt, 1.0)["hd95_mm"] == pytest.approx(2.0, abs=0.5)
    # a 1.5 mm tolerance covers the 1.6 mm in-plane shift much better than the 4 mm z shift
    assert nodule_metrics(x_shift, gt, spacing, 1.5)["nsd"] > nodule_metrics(z_shift, gt, spacing, 1.5)["nsd"]
    # scalar spacing means isotropic
    assert nodule_metrics(x_shift, gt, 0.8) == nodule_metrics(x_shift, gt, (0.8, 0.8, 0.8))


@pytest.mark.parametrize("pred, gt, spacing, match", [
    (np.zeros((4, 4, 4), bool), np.ones((4, 4, 5), bool), 1.0, "shape"),
    (np.full((4, 4, 4), 0.7), np.ones((4, 4, 4), bool), 1.0, "boolean"),
    (np.ones((4, 4), bool), np.ones((4, 4), bool), 1.0, "3-D"),
    (np.ones((4, 4, 4), bool), np.ones((4, 4, 4), bool), (1.0, 1.0), "spacing"),
    (np.ones((4, 4, 4), bool), np.ones((4, 4, 4), bool), -1.0, "spacing"),
])
def test_bad_inputs_rejected(pred, gt, spacing, match):
    with pytest.raises(ValueError, match=match):
        nodule_metrics(pred, gt, spacing)


def test_size_bin_edges():
    assert [size_bin(d) for d in (3.0, 5.99, 6.0, 9.99, 10.0, 19.99, 20.0, 47.0)] == \
        ["<6", "<6", "6-10", "6-10", "10-20", "10-20", ">=20", ">=20"]


def _table() -> pd.DataFrame:
    """Five hand-made nodule rows (values chosen, not computed)."""
    rows = []
    for i, (dice, sb, tex, empty) in enumerate([
        (0.9, "6-10", "solid", False), (0.7, "6-10", "solid", False), (0.2, "10-20", "part_solid", False),
        (0.0, "10-20", "solid", True), (0.8, ">=20", "solid", False),
    ]):
        row = {m: float(i) for m in METRICS}
        row.update(dice=dice, empty_pred=empty, size_bin=sb, texture=tex, nodule_id=f"n{i}")
        rows.append(row)
    return pd.DataFrame(rows)


def test_aggregate_statistics_and_groups():
    df = _table()
    agg = aggregate(df)
    assert agg["n"] == 5 and agg["n_empty"] == 1
    assert agg["dice_mean"] == pytest.approx(0.52)
    assert agg["dice_median"] == pytest.approx(0.7)
    assert agg["dice_std"] == pytest.approx(np.std([0.9, 0.7, 0.2, 0.0, 0.8], ddof=1))
    assert agg["hd95_mm_mean"] == pytest.approx(2.0)         # 0..4
    assert agg["size_6-10/n"] == 2 and agg["size_6-10/dice_mean"] == pytest.approx(0.8)
    assert agg["size_10-20/n_empty"] == 1 and agg["size_10-20/dice_median"] == pytest.approx(0.1)
    assert agg["size_lt6/n"] == 0 and "size_lt6/dice_mean" not in agg
    assert agg["size_ge20/n"] == 1 and "size_ge20/dice_std" not in agg     # one nodule: no std
    assert agg["texture_solid/n"] == 4 and agg["texture_ground_glass/n"] == 0
    assert agg["texture_part_solid/dice_mean"] == pytest.approx(0.2)
    for label in SIZE_BINS.values():
        assert f"size_{label}/n" in agg
    for label in TEXTURES:
        assert f"texture_{label}/n" in agg
    # every key is a valid MLflow metric name and every value a finite number
    assert all(re.fullmatch(r"[\w\-./ :]+", k) for k in agg)
    assert all(math.isfinite(v) for v in agg.values())


def test_aggregate_bins_from_diameter_when_no_size_bin():
    df = _table().drop(columns=["size_bin"]).assign(diameter_mm=[7.0, 8.0, 12.0, 15.0, 25.0])
    assert aggregate(df)["size_10-20/n"] == 2


def test_aggregate_rejects_bad_tables():
    df = _table()
    with pytest.raises(ValueError, match="NaN in dice"):
        aggregate(df.assign(dice=[0.1, np.nan, 0.2, 0.0, 0.3]))
    with pytest.raises(ValueError, match="size_bin"):
        aggregate(df.assign(size_bin=["<6", "tiny", "<6", "<6", "<6"]))
    with pytest.raises(ValueError, match="texture"):
        aggregate(df.assign(texture=["solid", "solid", "glass", "solid", "solid"]))
    with pytest.raises(ValueError, match="hd95_mm"):
        aggregate(df.drop(columns=["hd95_mm"]))
    with pytest.raises(ValueError, match="empty"):
        aggregate(df.iloc[:0])
