"""Evaluation on the test split: per-nodule metrics, aggregates, cost, pictures.

Predictions are made on the centre window of each stored crop (the same window for every
architecture), thresholded at ``eval.threshold``, and scored against the ground truth in that
window with ``benchmark.run.metrics`` (MONAI's implementations, one pinned place). On the phantom,
whose true shape is known, the same metrics are also computed against the true shape
(per-nodule columns ``dice_vs_truth``, ...; run metrics ``test_dice_vs_truth``, ...): the
readers' ground truth is one noisy observation of it. Empty predictions are counted
(``n_empty``), never dropped. Everything is written as files first
(``per_nodule.csv``, ``summary.yaml``, overlay PNG) and then logged to the run. Evaluation only
measures: the checkpoint and the MLflow model are published afterwards by :mod:`benchmark.run.publish`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml

from benchmark.core.provenance import sha256_file
from benchmark.core.errors import DataError
from benchmark.run.config import RunConfig
from benchmark.core.tracking import Tracker

NODULE_COLUMNS = ["nodule_id", "patient_id", "diameter_mm", "size_bin"]
#: suffix of the per-nodule columns and run metrics scored against the phantom's true shape
VS_TRUTH = "_vs_truth"


def truth_windows(store, rows: np.ndarray, patch_zyx):
    """Centre windows (N, Z, Y, X) bool of the phantom's true shapes; None when the data has none."""
    if getattr(store, "truth", None) is None:
        return None
    from benchmark.data.augment import center_window
    t = torch.from_numpy(np.ascontiguousarray(store.truth[np.asarray(rows)]))[:, None]
    win, _ = center_window(t, None, patch_zyx)
    return win[:, 0].numpy() > 0


def vs_truth_columns(pred: np.ndarray, truth, spacing_mm: float, nsd_tolerance_mm: float, nodule_id=None) -> dict:
    """``{metric}_vs_truth`` of one prediction; NaN when the true shape is empty in the window."""
    from benchmark.run.metrics import METRICS, nodule_metrics
    if truth is None or not truth.any():
        return {m + VS_TRUTH: float("nan") for m in METRICS}
    m = nodule_metrics(pred, truth, spacing_mm, nsd_tolerance_mm=nsd_tolerance_mm, nodule_id=nodule_id)
    return {k + VS_TRUTH: m[k] for k in METRICS}


def nodule_info(rec) -> dict:
    """Identity and strata of one nodule (texture as its class: ground_glass/part_solid/solid)."""
    out = {c: rec[c] for c in NODULE_COLUMNS if c in rec.index}
    out["texture"] = rec["texture_class"] if "texture_class" in rec.index else rec.get("texture")
    return out


@torch.no_grad()
def predict_center(model, store, rows: np.ndarray, cfg: RunConfig, device, batch_size: int = 8):
    """Binary predictions (N, Z, Y, X) and the matching windows of image and ground truth."""
    from architectures import main_output

    from benchmark.data.loader import center_batches
    model.eval()
    preds, images, gts = [], [], []
    for _, img, gt in center_batches(store, rows, batch_size, cfg.data.patch_zyx):
        logits = main_output(model(img.to(device))).float()
        preds.append((torch.sigmoid(logits) > cfg.eval.threshold).cpu().numpy()[:, 0])
        images.append(img.numpy()[:, 0])
        gts.append(_ground_truth_masks(gt))
    return np.concatenate(preds), np.concatenate(images), np.concatenate(gts)


def _ground_truth_masks(gt) -> np.ndarray:
    """A batch of ground-truth windows (B, 1, Z, Y, X) as the boolean masks that are scored."""
    return gt.numpy()[:, 0] > 0.5


def centre_ground_truth(store, rows: np.ndarray, patch_zyx, batch_size: int = 64) -> np.ndarray:
    """The ground truth of the centre windows ``predict_center`` predicts on (N, Z, Y, X), without
    a model: what stored predictions are scored against (``benchmark.run.rescore``)."""
    from benchmark.data.loader import center_batches
    return np.concatenate([_ground_truth_masks(gt) for _, _, gt in center_batches(store, rows, batch_size, patch_zyx)])


def score(preds: np.ndarray, gts: np.ndarray, store, rows: np.ndarray, cfg: RunConfig) -> pd.DataFrame:
    from benchmark.run.metrics import nodule_metrics
    table = store.table.iloc[rows]
    truths = truth_windows(store, rows, cfg.data.patch_zyx)
    records = []
    for i, (pred, gt) in enumerate(zip(preds, gts)):
        if not gt.any():
            # a nodule smaller than a voxel of a coarse preset vanishes from the resampled ground
            # truth; it cannot be scored. Counted (gt_empty) and excluded from the aggregates.
            records.append(nodule_info(table.iloc[i]) | {"gt_empty": True})
            continue
        m = nodule_metrics(pred.astype(bool), gt.astype(bool), cfg.data.spacing_mm, nsd_tolerance_mm=cfg.eval.nsd_tolerance_mm)
        row = nodule_info(table.iloc[i])
        if truths is not None:
            m |= vs_truth_columns(pred.astype(bool), truths[i], cfg.data.spacing_mm, cfg.eval.nsd_tolerance_mm,
                                  row.get("nodule_id"))
        records.append({**row, **m, "gt_empty": False})
    return pd.DataFrame.from_records(records)


def summarize(df: pd.DataFrame, strata=None) -> dict:
    """Aggregates of a per-nodule table, grouped by ``strata`` (the dataset's; None: LIDC's)."""
    from benchmark.run.metrics import aggregate
    scorable = df[~df["gt_empty"].astype(bool)].drop(columns=["gt_empty"])
    out = aggregate(scorable, strata)
    out["n_gt_empty"] = int(df["gt_empty"].astype(bool).sum())
    out.update(truth_summary(scorable))
    return out


def truth_summary(scorable: pd.DataFrame) -> dict:
    """Overall aggregates of the ``*_vs_truth`` columns, keyed ``dice_vs_truth_mean``, ...

    (``flat_metrics`` turns them into ``test_dice_vs_truth``, ...). Empty when the table has
    no such columns (real images); nodules whose true shape is empty in the window are left
    out and counted (``n_vs_truth``).
    """
    from benchmark.run.metrics import METRICS, aggregate
    cols = [m + VS_TRUTH for m in METRICS]
    if not set(cols) <= set(scorable.columns):
        return {}
    t = scorable[scorable[cols[0]].notna()]
    if len(t) == 0:
        return {}
    renamed = t[cols].rename(columns=lambda c: c[:-len(VS_TRUTH)])
    agg = aggregate(renamed.assign(empty_pred=t["empty_pred"].astype(bool).to_numpy()))
    out = {}
    for key, value in agg.items():
        if key in ("n", "n_empty"):
            out[key + VS_TRUTH] = value
        else:
            metric, stat = key.rsplit("_", 1)
            out[f"{metric}{VS_TRUTH}_{stat}"] = value
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
    from benchmark.run.figures import overlay_panel
    keep = np.flatnonzero(~df["gt_empty"].astype(bool).to_numpy())
    df, preds, images, gts = df.iloc[keep], preds[keep], images[keep], gts[keep]
    order = df["dice"].to_numpy().argsort()
    picks = [("best", order[-1]), ("median", order[len(order) // 2]), ("worst", order[0])]
    cases = [{"image": images[i], "gt": gts[i], "pred": preds[i],
              "label": f"{name}: {df.iloc[i].get('nodule_id', i)}\nDice {df.iloc[i]['dice']:.2f}"} for name, i in picks]
    return overlay_panel(cases, path, title)


def cost_metrics(model, cfg: RunConfig, device) -> dict[str, float]:
    from benchmark.run.cost import count_macs, count_parameters, measure_latency, peak_memory
    shape = (1, 1, *cfg.data.patch_zyx)
    model.eval()
    out = {"params": float(count_parameters(model)), "macs_per_patch": float(count_macs(model, shape))}
    lat = measure_latency(model, shape, repeats=cfg.eval.latency_repeats, warmup=1, device=device)
    out["latency_ms_median"] = float(lat["median_ms"])
    out["peak_memory_mb"] = float(peak_memory(model, (cfg.train.batch_size, 1, *cfg.data.patch_zyx), device=device,
                                              training=True))
    model.eval()
    return out


def dataset_strata(cfg: RunConfig):
    """The strata a run's aggregates are grouped by: its dataset adapter's."""
    from benchmark.data.datasets import get_dataset
    return get_dataset(cfg.data.dataset).strata


#: the run's binary test predictions (``evaluation/predictions.npz``): what ``bench rescore``
#: scores again, so a metric added later is computed for old runs without retraining
PREDICTIONS_FILE = "predictions.npz"


def save_predictions(path: Path, nodule_ids, preds: np.ndarray) -> Path:
    """The (N, Z, Y, X) binary predictions, bit-packed and compressed (a few KB per nodule at
    the paper preset, less at cpu), with the nodule ids they belong to."""
    preds = np.asarray(preds, bool)
    np.savez_compressed(path, nodule_id=np.asarray([str(n) for n in nodule_ids]),
                        shape=np.asarray(preds.shape, np.int64), packed=np.packbits(preds, axis=None))
    return Path(path)


def load_predictions(path: Path) -> tuple[list[str], np.ndarray]:
    """``save_predictions``' file back: (nodule ids, boolean predictions (N, Z, Y, X)).
    A file that is not one (truncated, edited, another archive) is a one-line DataError."""
    import zipfile
    try:
        with np.load(path, allow_pickle=False) as f:
            ids, shape, packed = f["nodule_id"], tuple(int(n) for n in f["shape"]), f["packed"]
        n_bits = int(np.prod(shape, dtype=object)) if shape else -1
        if len(shape) != 4 or min(shape) < 0 or ids.ndim != 1 or len(ids) != shape[0] \
                or packed.dtype != np.uint8 or packed.size != (n_bits + 7) // 8:
            raise ValueError("its arrays do not fit together")
        bits = np.unpackbits(packed, count=n_bits).astype(bool)
        return [str(n) for n in ids], bits.reshape(shape)
    except (ValueError, KeyError, TypeError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise DataError(f"{Path(path).name} is not a predictions file of lidc-bench "
                        f"({type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''})") from None


#: the run tag holding the sha256 of ``evaluation/predictions.npz`` as evaluation logged it:
#: ``bench rescore`` refuses a stored file that no longer matches it
PREDICTIONS_DIGEST_TAG = "evaluation.predictions_sha256"


def evaluate_run(model, store, cfg: RunConfig, device, tracker: Tracker, out_dir: Path, train_seconds: float) -> dict:
    """Score ``model`` on the test split and log what it scored: metrics, per-nodule table,
    summary, binary predictions and overlays (files in ``out_dir`` first). Publishing the model
    is a later, separate step (:mod:`benchmark.run.publish`)."""
    rows = store.indices("test")
    preds, images, gts = predict_center(model, store, rows, cfg, device)
    df = score(preds, gts, store, rows, cfg)
    out_dir = Path(out_dir)
    csv = out_dir / "per_nodule.csv"
    df.to_csv(csv, index=False)
    pred_file = save_predictions(out_dir / PREDICTIONS_FILE, store.table.iloc[rows]["nodule_id"], preds)
    tracker.log_artifact(pred_file, "evaluation")
    tracker.set_tags({PREDICTIONS_DIGEST_TAG: sha256_file(pred_file)})
    summary = summarize(df, dataset_strata(cfg))
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
