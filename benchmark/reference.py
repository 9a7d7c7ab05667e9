"""The human reference: how well do the radiologists agree with each other?

For every test nodule and each of its four readers, that reader's mask is scored against the
STAPLE of the other three readers, exactly as a model's prediction is scored against the
ground truth: the same centre window, the same voxel spacing and the same metrics
(``benchmark.metrics.nodule_metrics``). The four scores are averaged per nodule, so each
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

from .config import RunConfig
from .errors import DataError
from .tracking import Tracker

__all__ = ["INTER_READER", "inter_reader_nodule", "score_inter_reader", "run_inter_reader",
           "reference_fingerprint"]

INTER_READER = "inter_reader"


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
    from .data.augment import center_window
    win, _ = center_window(torch.from_numpy(np.ascontiguousarray(volumes))[None], None, patch_zyx)
    return win[0].numpy()


def inter_reader_nodule(readers: np.ndarray, gt: np.ndarray, patch_zyx, spacing_mm: float,
                        nsd_tolerance_mm: float = 1.0, nodule_id: Optional[str] = None) -> dict:
    """One nodule: mean over readers of (reader vs STAPLE of the others) in the centre window.

    Args:
        readers: (R, Z, Y, X) boolean reader masks on the stored crop.
        gt: (Z, Y, X) ground truth on the stored crop (used only by the fallback).
    Returns the metrics of ``nodule_metrics`` averaged over the scored readers, plus
    ``n_readers``, ``reference_fallback`` and ``dice_reader{k}`` (NaN for an unscored reader).
    """
    from .data.ground_truth import staple
    from .metrics import METRICS, nodule_metrics
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
    return out


def score_inter_reader(store, rows: np.ndarray, cfg: RunConfig) -> pd.DataFrame:
    """The per-nodule table (same nodule columns as a model's ``per_nodule.csv``)."""
    from .evaluate import NODULE_COLUMNS
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
            # the model runs cannot score this nodule either (see benchmark.evaluate.score):
            # keep the row, flagged, so the two tables list the same nodules
            records.append({**info, "gt_empty": True})
            continue
        m = inter_reader_nodule(store.readers[int(row)], gt, cfg.data.patch_zyx, cfg.data.spacing_mm,
                                cfg.eval.nsd_tolerance_mm, nodule_id=nid)
        records.append({**info, **m, "gt_empty": False})
    return pd.DataFrame.from_records(records)


def run_inter_reader(cfg: RunConfig, experiment: Optional[str] = None, tags: Optional[dict] = None,
                     store=None) -> tuple[str, dict]:
    """Score the inter-reader reference on the test split and log it as an MLflow run."""
    from .data import load_crops
    from .evaluate import _plain, flat_metrics, summarize
    from .train import data_tags
    store = store if store is not None else load_crops(cfg.data)
    rows = store.indices("test")
    if len(rows) == 0:
        raise DataError("the test split is empty for this data config; nothing to score")
    df = score_inter_reader(store, rows, cfg)
    summary = summarize(df)
    t = {**data_tags(cfg, store), "arch": INTER_READER, "loss": "none", "reference": "human",
         "reference.fingerprint": reference_fingerprint(cfg), **(tags or {})}
    tracker = Tracker.start(f"{INTER_READER}-{cfg.preset}", t, experiment=experiment)
    status = "FAILED"
    try:
        tracker.log_params({**{"data." + k: v for k, v in cfg.data.model_dump(mode="json").items()},
                            "eval.nsd_tolerance_mm": cfg.eval.nsd_tolerance_mm})
        tracker.log_text(cfg.to_yaml(), "config.yaml")
        scored = df[~df["gt_empty"].astype(bool)]
        tracker.log_metrics({**flat_metrics(summary),
                             "n_reference_fallback": float(scored["reference_fallback"].astype(bool).sum()),
                             "mean_readers_scored": float(scored["n_readers"].mean())})
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
