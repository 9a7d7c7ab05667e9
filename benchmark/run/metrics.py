"""Per-nodule segmentation metrics and their aggregates: the one place metrics are computed.

Every overlap and surface metric comes from MONAI (``monai.metrics``), so all architectures
are scored by one pinned, widely used implementation; this module only fixes the
conventions around it:

* Masks are boolean (Z, Y, X) arrays in tensor order; ``spacing_mm`` is one float or a
  (z, y, x) tuple, and every distance is in millimetres.
* HD95 is MONAI's percentile Hausdorff distance: the 95th percentile of the surface-to-surface
  distances in each direction, then the larger of the two. ASSD is MONAI's symmetric average
  surface distance (the mean over the surface voxels of both masks). NSD is MONAI's surface
  Dice at ``nsd_tolerance_mm``: the fraction of both surfaces lying within the tolerance of
  the other surface. Surfaces are the masks' boundary voxels, so on a voxel grid distances are
  exact only up to about a voxel.
* Sensitivity = TP / |G|, precision = TP / |P|, RVE = (|P| - |G|) / |G| (signed: negative
  for under-segmentation).

Empty prediction (the model found nothing): the metrics above are undefined or infinite and
MONAI returns NaN/inf for them, which ``mean()`` would silently drop. They are set explicitly
instead, and ``empty_pred`` is True so the case is counted:
    dice = iou = nsd = sensitivity = 0;  precision = 0 (0/0 taken as a miss, not as perfect);
    rve = -1 (the formula's value);  hd95_mm = assd_mm = the crop's diagonal in mm,
    sqrt(sum_k (n_k * spacing_k)^2), the largest distance any non-empty prediction inside the
    crop could score, so a miss never looks better than a wrong guess.
An empty ground truth cannot be scored and raises :class:`DataError` (the data build never
produces one).

The metric specification (``METRIC_SPECS``, one :class:`MetricSpec` per metric) is the one place
that says what each metric is called, which way is better, how it is printed and whether it is a
leaderboard column: the per-nodule table, its aggregates and the leaderboard's columns all follow
it. Adding a leaderboard column is one line there plus ``bench rescore`` for runs made before it
(their stored predictions are scored again, nothing is retrained).

``aggregate(df, strata)`` summarises a per-nodule table (one row per nodule, the columns above
plus ``size_bin`` and ``texture``) into a flat, MLflow-safe dict, grouped by the dataset's strata
(its adapter's size bins and texture classes; LIDC's by default).
"""
from __future__ import annotations

import math
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from benchmark.core.errors import DataError

__all__ = ["MetricSpec", "METRIC_SPECS", "METRICS", "leaderboard_metrics", "leaderboard_columns",
           "truth_columns", "metric_spec", "SIZE_BINS", "TEXTURES", "nodule_metrics", "empty_penalty_mm", "size_bin", "aggregate"]

@dataclass(frozen=True)
class MetricSpec:
    """What one per-nodule metric is and how the leaderboard shows it.

    ``key``: its column in ``per_nodule.csv`` and the stem of its aggregates (``{key}_mean``).
    ``name`` and ``unit`` make the column heading ("HD95 (mm)"); ``{tol}`` in a name is replaced by
    the table's NSD tolerance. ``leaderboard``: its position among a table's metric columns (None:
    not a column; every scored run must have the columns that are). ``median``: the table also
    shows the mean over seeds of each seed's median (for metrics a few penalties dominate).
    ``loss_study``: a column of the loss study's table too. ``vs_truth``: the table also shows the
    metric against the phantom's true shape (``{key}_vs_truth``) when every run of it has one.
    """
    key: str
    name: str
    higher_is_better: Optional[bool]   # None: signed, best at zero (RVE)
    digits: int
    unit: str = ""
    leaderboard: Optional[int] = None
    median: bool = False
    loss_study: bool = False
    vs_truth: bool = False

    def heading(self, tol_mm: float = 1.0, *, what: str = "") -> str:
        """The column heading, e.g. ``HD95 (mm)``, ``HD95 median (mm)`` (what="median"),
        ``NSD@1mm``, ``Dice vs truth`` (what="vs truth")."""
        name = self.name.replace("{tol}", f"{tol_mm:g}") + (f" {what}" if what else "")
        return f"{name} ({self.unit})" if self.unit else name

    def column(self, *, vs_truth: bool = False) -> str:
        return self.key + ("_vs_truth" if vs_truth else "")


#: every per-nodule metric, in the order of the per-nodule table and the aggregates
METRIC_SPECS = (
    MetricSpec("dice", "Dice", True, 3, leaderboard=0, loss_study=True, vs_truth=True),
    MetricSpec("iou", "IoU", True, 3),
    MetricSpec("hd95_mm", "HD95", False, 2, unit="mm", leaderboard=2, median=True, loss_study=True),
    MetricSpec("assd_mm", "ASSD", False, 2, unit="mm"),
    MetricSpec("nsd", "NSD@{tol}mm", True, 3, leaderboard=1),
    MetricSpec("sensitivity", "Sensitivity", True, 3),
    MetricSpec("precision", "Precision", True, 3),
    MetricSpec("rve", "RVE", None, 3),
)
#: per-nodule metrics that ``nodule_metrics`` returns and ``aggregate`` summarises
METRICS = tuple(s.key for s in METRIC_SPECS)


def leaderboard_metrics() -> tuple[MetricSpec, ...]:
    """The leaderboard's metric columns, in table order (read from ``METRIC_SPECS`` when called)."""
    return tuple(sorted((s for s in METRIC_SPECS if s.leaderboard is not None), key=lambda s: s.leaderboard))


def leaderboard_columns() -> tuple[str, ...]:
    """The per-nodule columns every leaderboard table reports, so every scored run must have them."""
    return tuple(s.key for s in leaderboard_metrics())


def truth_columns() -> tuple[str, ...]:
    """The ``*_vs_truth`` columns a table shows when every run of it has them (phantom data)."""
    return tuple(s.column(vs_truth=True) for s in leaderboard_metrics() if s.vs_truth)


def metric_spec(column: str) -> MetricSpec:
    """The specification behind a per-nodule column: a metric key, or ``<key>_vs_truth``."""
    for s in METRIC_SPECS:
        if column in (s.key, s.column(vs_truth=True)):
            return s
    raise ValueError(f"unknown metric column {column!r}; expected one of {', '.join(METRICS)} "
                     "(or one of them followed by _vs_truth)")


@contextmanager
def _quiet_monai():
    # MONAI 1.6's surface-distance code passes an argument it has itself deprecated, which
    # would print a FutureWarning for every nodule; nothing for us to act on.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"monai\.")
        warnings.filterwarnings("ignore", message=r".*always_return_as_numpy.*")
        yield


def _spacing3(spacing_mm) -> tuple[float, float, float]:
    if isinstance(spacing_mm, (int, float, np.floating, np.integer)):
        spacing = (float(spacing_mm),) * 3
    else:
        spacing = tuple(float(s) for s in spacing_mm)
    if len(spacing) != 3 or not all(s > 0 and math.isfinite(s) for s in spacing):
        raise ValueError(f"spacing_mm must be one positive number or three (z, y, x), got {spacing_mm!r}")
    return spacing


def _as_mask(a, what: str) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype != bool:
        if not np.isin(a, (0, 1)).all():
            raise ValueError(f"{what} mask must be boolean or 0/1, got values outside {{0, 1}} (dtype {a.dtype})")
        a = a.astype(bool)
    if a.ndim != 3:
        raise ValueError(f"{what} mask must be 3-D (Z, Y, X), got shape {a.shape}")
    return a


def empty_penalty_mm(shape: Sequence[int], spacing_mm) -> float:
    """HD95/ASSD given to an empty prediction: the diagonal of the crop in mm."""
    return float(math.sqrt(sum((n * s) ** 2 for n, s in zip(shape, _spacing3(spacing_mm)))))


# The strata are the dataset's (its adapter's); LIDC's are the default and keep their old names here.
from benchmark.data.datasets import DEFAULT_DATASET, get_dataset  # noqa: E402

_LIDC_STRATA = get_dataset(DEFAULT_DATASET).strata
#: LIDC's diameter bins (mm) as the data tables spell them, with the MLflow-safe key used in aggregates
SIZE_BINS = dict(_LIDC_STRATA.size_bins)
TEXTURES = _LIDC_STRATA.textures
size_bin = _LIDC_STRATA.size_bin


def nodule_metrics(pred, gt, spacing_mm, nsd_tolerance_mm: float = 1.0, *, nodule_id: str | None = None) -> dict:
    """Metrics of one predicted nodule mask against its ground truth.

    Args:
        pred, gt: boolean (or 0/1) arrays of the same (Z, Y, X) shape.
        spacing_mm: voxel size, one float or (z, y, x).
        nsd_tolerance_mm: the NSD tolerance.
        nodule_id: only used to name the nodule in error messages.

    Returns: dict with dice, iou, hd95_mm, assd_mm, nsd, sensitivity, precision, rve (floats),
    pred_voxels, gt_voxels (ints) and empty_pred (bool). See the module docstring for the
    empty-prediction convention.
    """
    who = f"nodule {nodule_id}" if nodule_id is not None else "nodule"
    pred, gt = _as_mask(pred, "prediction"), _as_mask(gt, "ground-truth")
    if pred.shape != gt.shape:
        raise ValueError(f"{who}: prediction shape {pred.shape} differs from ground truth {gt.shape}")
    spacing = _spacing3(spacing_mm)
    if not nsd_tolerance_mm > 0:
        raise ValueError(f"nsd_tolerance_mm must be > 0, got {nsd_tolerance_mm}")
    n_pred, n_gt = int(pred.sum()), int(gt.sum())
    if n_gt == 0:
        raise DataError(f"{who}: ground-truth mask is empty; it cannot be scored")

    out = {"pred_voxels": n_pred, "gt_voxels": n_gt, "rve": (n_pred - n_gt) / n_gt, "empty_pred": n_pred == 0}
    if n_pred == 0:
        penalty = empty_penalty_mm(gt.shape, spacing)
        out.update(dice=0.0, iou=0.0, nsd=0.0, sensitivity=0.0, precision=0.0, hd95_mm=penalty, assd_mm=penalty)
        return _ordered(out)

    # imported here: the specification above is read by the leaderboard, which needs no torch
    import torch
    from monai.metrics import (compute_average_surface_distance, compute_confusion_matrix_metric, compute_dice,
                               compute_hausdorff_distance, compute_iou, compute_surface_dice,
                               get_confusion_matrix)

    # MONAI wants one-hot (B, C, Z, Y, X); the single foreground channel is "class 0" here,
    # hence include_background=True everywhere.
    p = torch.from_numpy(pred)[None, None].float()
    g = torch.from_numpy(gt)[None, None].float()
    confusion = get_confusion_matrix(p, g, include_background=True)
    with _quiet_monai():
        hd95 = compute_hausdorff_distance(p, g, include_background=True, percentile=95, spacing=spacing)
        assd = compute_average_surface_distance(p, g, include_background=True, symmetric=True, spacing=spacing)
        nsd = compute_surface_dice(p, g, class_thresholds=[float(nsd_tolerance_mm)], include_background=True,
                                   spacing=spacing)
    out.update(
        dice=compute_dice(p, g, include_background=True).item(),
        iou=compute_iou(p, g, include_background=True).item(),
        sensitivity=compute_confusion_matrix_metric("sensitivity", confusion).item(),
        precision=compute_confusion_matrix_metric("precision", confusion).item(),
        hd95_mm=hd95.item(),
        assd_mm=assd.item(),
        nsd=nsd.item(),
    )
    bad = [k for k in METRICS if not math.isfinite(out[k])]
    if bad:  # cannot happen for two non-empty masks; fail loudly rather than log a NaN
        raise RuntimeError(f"{who}: MONAI returned non-finite {', '.join(bad)}")
    return _ordered(out)


def _ordered(d: dict) -> dict:
    keys = (*METRICS, "pred_voxels", "gt_voxels", "empty_pred")
    return {k: (bool(d[k]) if k == "empty_pred" else int(d[k]) if k.endswith("_voxels") else float(d[k]))
            for k in keys}


def _summary(frame, prefix: str) -> dict:
    out = {f"{prefix}n": int(len(frame))}
    if len(frame) == 0:
        return out
    out[f"{prefix}n_empty"] = int(frame["empty_pred"].astype(bool).sum())
    for m in METRICS:
        col = frame[m].astype(float)
        out[f"{prefix}{m}_mean"] = float(col.mean())
        out[f"{prefix}{m}_median"] = float(col.median())
        if len(frame) > 1:  # the sample std of one nodule is undefined: left out, not NaN
            out[f"{prefix}{m}_std"] = float(col.std(ddof=1))
    return out


def aggregate(df, strata=None) -> dict:
    """Summarise a per-nodule metrics table (pandas DataFrame, one row per nodule).

    ``strata``: the dataset's :class:`benchmark.data.adapter.Strata` (None: LIDC's).
    Required columns: the metrics in :data:`METRICS` and ``empty_pred``. Optional: ``size_bin``
    (labels of ``strata.size_bins``; derived from ``diameter_mm`` when only that is present) and
    ``texture`` (one of ``strata.textures``); a grouping whose column is absent is skipped.

    Returns a flat dict with MLflow-safe keys: ``n``, ``n_empty``, ``{metric}_{mean,median,std}``
    over all nodules (empty predictions included at their penalty values), and the same under
    ``size_<key>/`` (LIDC: ``size_{lt6,6-10,10-20,ge20}/``) and ``texture_<label>/`` (LIDC:
    ``texture_{ground_glass,part_solid,solid}/``). Every group gets its ``n`` (0 when no nodule
    falls in it); std is left out for groups of one nodule.
    """
    strata = strata or _LIDC_STRATA
    size_bins, textures = strata.size_bins, strata.textures
    missing = [c for c in (*METRICS, "empty_pred") if c not in df.columns]
    if missing:
        raise ValueError(f"per-nodule table lacks column(s) {', '.join(missing)}")
    if len(df) == 0:
        raise ValueError("per-nodule table is empty: nothing to aggregate")
    nan_cols = [m for m in METRICS if df[m].isna().any()]
    if nan_cols:
        raise ValueError(f"per-nodule table has NaN in {', '.join(nan_cols)}; nodule_metrics never produces NaN")

    out = _summary(df, "")
    bins = None
    if "size_bin" in df.columns:
        bins = df["size_bin"]
    elif "diameter_mm" in df.columns:
        bins = df["diameter_mm"].map(strata.size_bin)
    if bins is not None:
        unknown = sorted(set(bins) - set(size_bins))
        if unknown:
            raise ValueError(f"unknown size_bin label(s) {unknown}; expected {list(size_bins)}")
        for label, key in size_bins.items():
            out.update(_summary(df[bins == label], f"size_{key}/"))
    if "texture" in df.columns:
        unknown = sorted(set(df["texture"]) - set(textures))
        if unknown:
            raise ValueError(f"unknown texture label(s) {unknown}; expected {list(textures)}")
        for label in textures:
            out.update(_summary(df[df["texture"] == label], f"texture_{label}/"))
    return out
