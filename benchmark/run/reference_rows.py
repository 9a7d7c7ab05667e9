"""Reference rows: how well do the radiologists agree, and what is the best any model can do?

Two reference runs, scored like a model on the test split:

* ``inter_reader`` (``reference = human``): each radiologist against the others (below) and,
  on the phantom, each radiologist against the true shape (``*_vs_truth`` columns, "readers
  vs truth": where a model's ``dice_vs_truth`` stands against a radiologist's).
* ``phantom_ceiling`` (``reference = phantom``, phantom only): the phantom's true shape
  scored as a prediction against the readers' ground truth on the same windows and metrics.
  The image is rendered from the true shape, so no model can be expected to beat it: it is
  the phantom's ceiling, the top of the scale the leaderboard's ``test_dice`` lives on.

The inter-reader reference in detail:

For every test nodule and each of its four readers, that reader's mask is scored against the
STAPLE of the other three readers, exactly as a model's prediction is scored against the
ground truth: the same centre window, the same voxel spacing and the same metrics
(``benchmark.run.metrics.nodule_metrics``). The four scores are averaged per nodule, so each
test nodule gets one row, aligned with the models' rows for paired tests. The result is
logged as an MLflow run with ``arch = inter_reader`` and ``reference = human`` and the same
``evaluation/per_nodule.csv`` artifact a model run has, so the leaderboard treats it like
any other row (but does not rank it).

Choices, and why:
  * The leave-one-out reference is STAPLE over three readers (``benchmark.data.ground_truth.
    staple``, the function that builds the ground truth from four), computed on the whole
    stored crop and then windowed, like the ground truth. With three raters it is close to a
    2-of-3 vote (Dice 0.998 on average, 0.90 at worst, between the two over 160
    leave-one-out masks of the cpu preset's test split). It is computed on the readers'
    masks as stored (already resampled to the run's spacing); the ground truth itself was
    computed on the native grid, so the two can differ by partial-volume effects at coarse
    spacings.
  * A reader whose mask is empty in the window (a tiny nodule lost at a coarse spacing)
    scores like an empty prediction (Dice 0, distance penalty) and the row's ``empty_pred``
    is set: misses are counted, never dropped.
  * A reader whose leave-one-out reference is empty cannot be scored (no reference) and is
    left out of that nodule's mean (``n_readers`` says how many were scored). Where no reader
    of a nodule can be scored, every reader is scored against the ground truth instead
    (``reference_fallback`` = True, counted in the run's ``n_reference_fallback`` metric) so
    that the nodule keeps its row. On the cpu preset's test split (2 mm, 168 nodules) no
    nodule needed it and all four readers were scored everywhere.
  * A nodule whose ground truth is empty in the window (smaller than a voxel of a coarse
    preset) is listed with ``gt_empty`` and no metrics, exactly as in a model's table.
"""
from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd
import torch
import yaml

from benchmark.run.config import RunConfig
from benchmark.core.errors import DataError
from benchmark.core.tracking import Tracker

__all__ = ["INTER_READER", "PHANTOM_CEILING", "inter_reader_nodule", "score_inter_reader", "run_inter_reader",
           "ceiling_nodule", "score_phantom_ceiling", "run_phantom_ceiling", "reference_fingerprint"]

INTER_READER = "inter_reader"
PHANTOM_CEILING = "phantom_ceiling"


def reference_fingerprint(cfg: RunConfig) -> str:
    """What makes two reference runs identical: preset, data config and NSD tolerance.

    Training settings play no part in a reference, so this (not ``config.fingerprint``)
    decides whether the suite must run one again.
    """
    d = {"preset": cfg.preset, "data": cfg.data.model_dump(mode="json"),
         "nsd_tolerance_mm": cfg.eval.nsd_tolerance_mm}
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def _window(volumes: np.ndarray, patch_zyx) -> np.ndarray:
    """The centre window of (R, Z, Y, X) volumes, taken by the engine's own function."""
    from benchmark.data.augment import center_window
    win, _ = center_window(torch.from_numpy(np.ascontiguousarray(volumes))[None], None, patch_zyx)
    return win[0].numpy()


def inter_reader_nodule(readers: np.ndarray, gt: np.ndarray, patch_zyx, spacing_mm: float,
                        nsd_tolerance_mm: float = 1.0, nodule_id: Optional[str] = None,
                        truth: Optional[np.ndarray] = None) -> dict:
    """One nodule: mean over readers of (reader vs STAPLE of the others) in the centre window.

    Args:
        readers: (R, Z, Y, X) boolean reader masks on the stored crop.
        gt: (Z, Y, X) ground truth on the stored crop (used only by the fallback).
        truth: (Z, Y, X) the phantom's true shape on the stored crop, or None.
    Returns the metrics of ``nodule_metrics`` averaged over the scored readers, plus
    ``n_readers``, ``reference_fallback`` and ``dice_reader{k}`` (NaN for an unscored reader);
    with ``truth``, also ``{metric}_vs_truth`` averaged over all readers (each reader's mask
    scored against the true shape; NaN where the true shape is empty in the window) and
    ``dice_vs_truth_reader{k}``.
    """
    from benchmark.data.ground_truth import staple
    from benchmark.run.metrics import METRICS, nodule_metrics
    readers = np.asarray(readers).astype(bool)
    n_readers = readers.shape[0]
    if n_readers < 2:
        raise DataError(f"nodule {nodule_id}: inter-reader agreement needs at least 2 readers, got {n_readers}")
    refs = np.stack([staple(np.delete(readers, k, axis=0)) for k in range(n_readers)])
    own = _window(readers.astype(np.uint8), patch_zyx).astype(bool)
    refs = _window(refs.astype(np.uint8), patch_zyx).astype(bool)
    scorable = [k for k in range(n_readers) if refs[k].any()]
    fallback = not scorable
    if fallback:
        # an empty ground truth raises in nodule_metrics, exactly as it does for a model
        gt_win = _window(np.asarray(gt, dtype=np.uint8)[None], patch_zyx)[0].astype(bool)
        refs = np.broadcast_to(gt_win, own.shape)
        scorable = list(range(n_readers))
    per = {k: nodule_metrics(own[k], refs[k], spacing_mm, nsd_tolerance_mm=nsd_tolerance_mm,
                             nodule_id=f"{nodule_id} reader {k}") for k in scorable}
    out = {m: float(np.mean([per[k][m] for k in scorable])) for m in METRICS}
    out["pred_voxels"] = float(np.mean([per[k]["pred_voxels"] for k in scorable]))
    out["gt_voxels"] = float(np.mean([per[k]["gt_voxels"] for k in scorable]))
    out["empty_pred"] = any(per[k]["empty_pred"] for k in scorable)
    out["n_readers"] = len(scorable)
    out["reference_fallback"] = fallback
    for k in range(n_readers):
        out[f"dice_reader{k}"] = per[k]["dice"] if k in per else float("nan")
    if truth is not None:
        from benchmark.run.evaluate import VS_TRUTH, vs_truth_columns
        t_win = _window(np.asarray(truth, dtype=np.uint8)[None], patch_zyx)[0].astype(bool)
        vs = [vs_truth_columns(own[k], t_win, spacing_mm, nsd_tolerance_mm, f"{nodule_id} reader {k}")
              for k in range(n_readers)]
        for m in METRICS:
            out[m + VS_TRUTH] = float(np.mean([v[m + VS_TRUTH] for v in vs]))
        for k in range(n_readers):
            out[f"dice{VS_TRUTH}_reader{k}"] = vs[k]["dice" + VS_TRUTH]
    return out


def ceiling_nodule(truth: np.ndarray, gt: np.ndarray, patch_zyx, spacing_mm: float,
                   nsd_tolerance_mm: float = 1.0, nodule_id: Optional[str] = None) -> dict:
    """One nodule: the true shape as a prediction against the ground truth, in the centre window."""
    from benchmark.run.metrics import nodule_metrics
    both = _window(np.stack([np.asarray(truth, np.uint8), np.asarray(gt, np.uint8)]), patch_zyx).astype(bool)
    return nodule_metrics(both[0], both[1], spacing_mm, nsd_tolerance_mm=nsd_tolerance_mm, nodule_id=nodule_id)


def score_inter_reader(store, rows: np.ndarray, cfg: RunConfig) -> pd.DataFrame:
    """The per-nodule table (same nodule columns as a model's ``per_nodule.csv``)."""
    from benchmark.run.evaluate import NODULE_COLUMNS
    table = store.table.iloc[rows]
    records = []
    for i, row in enumerate(rows):
        meta = table.iloc[i]
        nid = str(meta["nodule_id"])
        info = {c: meta[c] for c in NODULE_COLUMNS if c in table.columns}
        if "texture" not in info and "texture_class" in table.columns:
            info["texture"] = meta["texture_class"]
        gt = store.gt[int(row)]
        if not _window(np.asarray(gt, dtype=np.uint8)[None], cfg.data.patch_zyx).any():
            # the model runs cannot score this nodule either (see benchmark.run.evaluate.score):
            # keep the row, flagged, so the two tables list the same nodules
            records.append({**info, "gt_empty": True})
            continue
        truth = store.truth[int(row)] if getattr(store, "truth", None) is not None else None
        m = inter_reader_nodule(store.readers[int(row)], gt, cfg.data.patch_zyx, cfg.data.spacing_mm,
                                cfg.eval.nsd_tolerance_mm, nodule_id=nid, truth=truth)
        records.append({**info, **m, "gt_empty": False})
    return pd.DataFrame.from_records(records)


def score_phantom_ceiling(store, rows: np.ndarray, cfg: RunConfig) -> pd.DataFrame:
    """Per-nodule table of the true shape scored against the ground truth (phantom only)."""
    from benchmark.run.evaluate import nodule_info
    if getattr(store, "truth", None) is None:
        raise DataError("the phantom ceiling needs the phantom's true shape; this data has none "
                        f"(source {store.manifest.get('source')!r})")
    table = store.table.iloc[rows]
    records = []
    for i, row in enumerate(rows):
        info = nodule_info(table.iloc[i])
        gt = store.gt[int(row)]
        if not _window(np.asarray(gt, dtype=np.uint8)[None], cfg.data.patch_zyx).any():
            records.append({**info, "gt_empty": True})
            continue
        m = ceiling_nodule(store.truth[int(row)], gt, cfg.data.patch_zyx, cfg.data.spacing_mm,
                           cfg.eval.nsd_tolerance_mm, nodule_id=str(info.get("nodule_id")))
        records.append({**info, **m, "gt_empty": False})
    return pd.DataFrame.from_records(records)


def _log_reference(cfg: RunConfig, store, arch: str, kind: str, df: pd.DataFrame, extra_metrics: dict,
                   experiment: Optional[str], tags: Optional[dict]) -> tuple[str, dict]:
    """Log a reference table as an MLflow run shaped like a model's (metrics, per_nodule.csv)."""
    from benchmark.run.evaluate import _plain, dataset_strata, flat_metrics, summarize
    from benchmark.run.run_tracking import data_tags
    summary = summarize(df, dataset_strata(cfg))
    t = {**data_tags(cfg, store), "arch": arch, "loss": "none", "reference": kind,
         "reference.fingerprint": reference_fingerprint(cfg), **(tags or {})}
    tracker = Tracker.start(f"{arch}-{cfg.preset}", t, experiment=experiment)
    status = "FAILED"
    try:
        tracker.log_params({**{"data." + k: v for k, v in cfg.data.model_dump(mode="json").items()},
                            "eval.nsd_tolerance_mm": cfg.eval.nsd_tolerance_mm})
        tracker.log_text(cfg.to_yaml(), "config.yaml")
        tracker.log_metrics({**flat_metrics(summary), **extra_metrics})
        with tempfile.TemporaryDirectory() as d:
            csv = Path(d) / "per_nodule.csv"
            df.to_csv(csv, index=False)
            tracker.log_artifact(csv, "evaluation")
            (Path(d) / "summary.yaml").write_text(yaml.safe_dump(_plain({"test": summary}), sort_keys=False))
            tracker.log_artifact(Path(d) / "summary.yaml", "evaluation")
        status = "FINISHED"
    finally:
        tracker.finish(status)
    return tracker.run_id, summary


def _test_rows(cfg: RunConfig, store):
    from benchmark.data import load_crops
    store = store if store is not None else load_crops(cfg.data)
    rows = store.indices("test")
    if len(rows) == 0:
        raise DataError("the test split is empty for this data config; nothing to score")
    return store, rows


def run_inter_reader(cfg: RunConfig, experiment: Optional[str] = None, tags: Optional[dict] = None,
                     store=None) -> tuple[str, dict]:
    """Score the inter-reader reference on the test split and log it as an MLflow run."""
    store, rows = _test_rows(cfg, store)
    df = score_inter_reader(store, rows, cfg)
    scored = df[~df["gt_empty"].astype(bool)]
    extra = {"n_reference_fallback": float(scored["reference_fallback"].astype(bool).sum()),
             "mean_readers_scored": float(scored["n_readers"].mean())}
    return _log_reference(cfg, store, INTER_READER, "human", df, extra, experiment, tags)


def run_phantom_ceiling(cfg: RunConfig, experiment: Optional[str] = None, tags: Optional[dict] = None,
                        store=None) -> tuple[str, dict]:
    """Score the phantom ceiling (true shape vs ground truth) on the test split and log it."""
    store, rows = _test_rows(cfg, store)
    df = score_phantom_ceiling(store, rows, cfg)
    return _log_reference(cfg, store, PHANTOM_CEILING, "phantom", df, {}, experiment, tags)
