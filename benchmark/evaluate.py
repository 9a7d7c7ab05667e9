"""Evaluation on the test split: per-nodule metrics, aggregates, cost, pictures.

Predictions are made on the centre window of each stored crop (the same window for every
architecture), thresholded at ``eval.threshold``, and scored against the ground truth in that
window with ``benchmark.metrics`` (MONAI's implementations, one pinned place). Empty
predictions are counted (``n_empty``), never dropped. Everything is written as files first
(``per_nodule.csv``, ``summary.yaml``, overlay PNG) and then logged to the run.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml

from .config import RunConfig
from .tracking import Tracker

NODULE_COLUMNS = ["nodule_id", "patient_id", "diameter_mm", "size_bin"]


def nodule_info(rec) -> dict:
    """Identity and strata of one nodule (texture as its class: ground_glass/part_solid/solid)."""
    out = {c: rec[c] for c in NODULE_COLUMNS if c in rec.index}
    out["texture"] = rec["texture_class"] if "texture_class" in rec.index else rec.get("texture")
    return out


@torch.no_grad()
def predict_center(model, store, rows: np.ndarray, cfg: RunConfig, device, batch_size: int = 8):
    """Binary predictions (N, Z, Y, X) and the matching windows of image and ground truth."""
    from .train import center_batches, main_output
    model.eval()
    preds, images, gts = [], [], []
    for _, img, gt in center_batches(store, rows, batch_size, cfg.data.patch_zyx):
        logits = main_output(model(img.to(device))).float()
        preds.append((torch.sigmoid(logits) > cfg.eval.threshold).cpu().numpy()[:, 0])
        images.append(img.numpy()[:, 0])
        gts.append(gt.numpy()[:, 0] > 0.5)
    return np.concatenate(preds), np.concatenate(images), np.concatenate(gts)


def score(preds: np.ndarray, gts: np.ndarray, store, rows: np.ndarray, cfg: RunConfig) -> pd.DataFrame:
    from .metrics import nodule_metrics
    table = store.table.iloc[rows]
    records = []
    for i, (pred, gt) in enumerate(zip(preds, gts)):
        if not gt.any():
            # a nodule smaller than a voxel of a coarse preset vanishes from the resampled ground
            # truth; it cannot be scored. Counted (gt_empty) and excluded from the aggregates.
            records.append(nodule_info(table.iloc[i]) | {"gt_empty": True})
            continue
        m = nodule_metrics(pred.astype(bool), gt.astype(bool), cfg.data.spacing_mm, nsd_tolerance_mm=cfg.eval.nsd_tolerance_mm)
        row = nodule_info(table.iloc[i])
        records.append({**row, **m, "gt_empty": False})
    return pd.DataFrame.from_records(records)


def summarize(df: pd.DataFrame) -> dict:
    from .metrics import aggregate
    scorable = df[~df["gt_empty"].astype(bool)].drop(columns=["gt_empty"])
    out = aggregate(scorable)
    out["n_gt_empty"] = int(df["gt_empty"].astype(bool).sum())
    return out


def flat_metrics(summary: dict, prefix: str = "test_") -> dict[str, float]:
    """``aggregate()`` keys as MLflow metrics: ``dice_mean`` -> ``test_dice`` (the headline),
    everything else prefixed as is (``test_dice_median``, ``test_size_lt6/dice_mean``, ...)."""
    out: dict[str, float] = {}
    for key, value in summary.items():
        if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
            continue
        if not np.isfinite(value):
            continue
        name = key[:-len("_mean")] if ("/" not in key and key.endswith("_mean")) else key
        out[prefix + name] = float(value)
    return out


def overlays(df: pd.DataFrame, preds, images, gts, path: Path, title: str) -> Path:
    from .plots import overlay_panel
    keep = np.flatnonzero(~df["gt_empty"].astype(bool).to_numpy())
    df, preds, images, gts = df.iloc[keep], preds[keep], images[keep], gts[keep]
    order = df["dice"].to_numpy().argsort()
    picks = [("best", order[-1]), ("median", order[len(order) // 2]), ("worst", order[0])]
    cases = [{"image": images[i], "gt": gts[i], "pred": preds[i],
              "label": f"{name}: {df.iloc[i].get('nodule_id', i)}\nDice {df.iloc[i]['dice']:.2f}"} for name, i in picks]
    return overlay_panel(cases, path, title)


def cost_metrics(model, cfg: RunConfig, device) -> dict[str, float]:
    from .cost import count_macs, count_parameters, measure_latency, peak_memory
    shape = (1, 1, *cfg.data.patch_zyx)
    model.eval()
    out = {"params": float(count_parameters(model)), "macs_per_patch": float(count_macs(model, shape))}
    lat = measure_latency(model, shape, repeats=cfg.eval.latency_repeats, warmup=1, device=device)
    out["latency_ms_median"] = float(lat["median_ms"])
    out["peak_memory_mb"] = float(peak_memory(model, (cfg.train.batch_size, 1, *cfg.data.patch_zyx), device=device,
                                              training=True))
    model.eval()
    return out


def evaluate_run(model, store, cfg: RunConfig, device, tracker: Tracker, out_dir: Path, train_seconds: float) -> dict:
    rows = store.indices("test")
    preds, images, gts = predict_center(model, store, rows, cfg, device)
    df = score(preds, gts, store, rows, cfg)
    out_dir = Path(out_dir)
    csv = out_dir / "per_nodule.csv"
    df.to_csv(csv, index=False)
    summary = summarize(df)
    costs = cost_metrics(model, cfg, device)
    costs["train_seconds"] = train_seconds
    (out_dir / "summary.yaml").write_text(yaml.safe_dump(_plain({"test": summary, "cost": costs}), sort_keys=False))
    # train_seconds is in summary.yaml; the metric is logged once, by the training loop
    tracker.log_metrics({**flat_metrics(summary), **{k: v for k, v in costs.items() if k != "train_seconds"}})
    tracker.log_artifact(csv, "evaluation")
    tracker.log_artifact(out_dir / "summary.yaml", "evaluation")
    if cfg.eval.overlays and len(df):
        png = overlays(df, preds, images, gts, out_dir / "test_overlays.png",
                       f"{cfg.model.arch} / {cfg.loss.name} [{cfg.preset}] test: best, median, worst")
        tracker.log_artifact(png, "plots")
    if (out_dir / "best.pt").exists():
        tracker.log_artifact(out_dir / "best.pt", "checkpoints")
    return summary


def _plain(x):
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if isinstance(x, np.bool_):
        return bool(x)
    return x
