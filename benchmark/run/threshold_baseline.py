"""The non-learned reference: intensity threshold + the connected component at the centre.

Scored exactly like a model (centre window, same metrics) and logged as an MLflow run with
``arch = threshold_baseline`` so the leaderboard shows it beside the architectures.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from benchmark.run.config import RunConfig
from benchmark.run.evaluate import dataset_strata, flat_metrics, overlays, score, summarize
from benchmark.core.tracking import Tracker
from benchmark.data.loader import center_batches
from benchmark.run.run_tracking import data_tags

BASELINE_NAME = "threshold_baseline"


def predict_baseline(store, rows, cfg: RunConfig):
    import torch
    from benchmark.data.augment import center_window
    from benchmark.data.baseline import predict_threshold
    preds, images, gts = [], [], []
    for sel, img, gt in center_batches(store, rows, 16, cfg.data.patch_zyx):
        hu = torch.from_numpy(np.ascontiguousarray(store.images_hu[sel], dtype=np.float32)).unsqueeze(1)
        hu = center_window(hu, None, cfg.data.patch_zyx)
        hu = hu[0] if isinstance(hu, tuple) else hu
        for k in range(hu.shape[0]):
            preds.append(predict_threshold(hu[k, 0].numpy()))
        images.append(img.numpy()[:, 0])
        gts.append(gt.numpy()[:, 0] > 0.5)
    return np.stack(preds).astype(bool), np.concatenate(images), np.concatenate(gts)


def run_threshold_baseline(cfg: RunConfig, experiment: str | None = None, tags: dict | None = None):
    from benchmark.data import load_crops
    store = load_crops(cfg.data)
    rows = store.indices("test")
    preds, images, gts = predict_baseline(store, rows, cfg)
    df = score(preds, gts, store, rows, cfg)
    summary = summarize(df, dataset_strata(cfg))
    t = {**data_tags(cfg, store), "arch": BASELINE_NAME, "loss": "none", "reference": "baseline", **(tags or {})}
    tracker = Tracker.start(f"{BASELINE_NAME}-{cfg.preset}", t, experiment=experiment)
    status = "FAILED"
    try:
        tracker.log_params({"data." + k: v for k, v in cfg.data.model_dump(mode="json").items()})
        tracker.log_text(cfg.to_yaml(), "config.yaml")
        tracker.log_metrics({**flat_metrics(summary), "params": 0.0, "macs_per_patch": 0.0})
        with tempfile.TemporaryDirectory() as d:
            csv = Path(d) / "per_nodule.csv"
            df.to_csv(csv, index=False)
            tracker.log_artifact(csv, "evaluation")
            png = overlays(df, preds, images, gts, Path(d) / "test_overlays.png", f"threshold baseline [{cfg.preset}]")
            tracker.log_artifact(png, "plots")
        status = "FINISHED"
    finally:
        tracker.finish(status)
    return tracker.run_id, summary
