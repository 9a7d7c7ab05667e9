"""``bench rescore RUN_ID``: score a finished run again from its stored test predictions.

Every run keeps its binary test predictions (``evaluation/predictions.npz``, written by
``benchmark.run.evaluate``), as nnU-Net keeps its validation predictions: a metric added to
``benchmark.run.metrics`` later, or a fixed metric, is computed for old runs from them, without
retraining. The ground truth comes from the crop cache of the run's data config, which must be
the very data the run was evaluated on (its ``data.content_hash`` tag); anything else is refused.

    bench rescore RUN_ID            # print the recomputed aggregates next to the logged ones
    bench rescore RUN_ID --log      # also log what the run lacks: new aggregate metrics and
                                    # evaluation/per_nodule_rescored.csv (logged values are kept);
                                    # the leaderboard and exports then read that table
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from benchmark.core.errors import DataError, UsageError
from benchmark.core.paths import validate_run_id

__all__ = ["rescore_run", "compare_with_logged", "log_rescore"]


def rescore_run(run_id: str, require_digest: bool = False) -> tuple[pd.DataFrame, dict, dict]:
    """(per-nodule table, aggregates flattened as the run logs them, the run's logged metrics).

    The stored predictions must match the sha256 evaluation recorded (tag
    ``evaluation.predictions_sha256``). A run evaluated before digests were recorded cannot be
    checked: a warning, or a ``UsageError`` with ``require_digest`` (what ``--log`` asks for,
    since the leaderboard then scores the run by the rescored table)."""
    from benchmark.run.config import validate_config
    from benchmark.data import load_crops
    from benchmark.run.evaluate import (PREDICTIONS_FILE, centre_ground_truth, dataset_strata, flat_metrics,
                                        load_predictions, score, summarize)
    from benchmark.core.tracking import client, no_download_bars
    run_id = validate_run_id(run_id, "bench rescore")
    cl = client()
    try:
        run = cl.get_run(run_id)
    except Exception:  # noqa: BLE001 - MLflow raises several kinds for an unknown id
        raise UsageError(f"no run {run_id} in the tracking store") from None
    with tempfile.TemporaryDirectory() as tmp, no_download_bars():
        try:
            cfg_path = cl.download_artifacts(run_id, "config.yaml", tmp)
            pred_path = cl.download_artifacts(run_id, f"evaluation/{PREDICTIONS_FILE}", tmp)
        except Exception:  # noqa: BLE001
            raise UsageError(f"run {run_id} has no stored test predictions (evaluation/{PREDICTIONS_FILE}): "
                             f"it was evaluated before they were kept, or did not finish") from None
        _check_digest(run_id, run.data.tags, Path(pred_path), require_digest)
        cfg = validate_config(yaml.safe_load(Path(cfg_path).read_text()) or {}, f"run {run_id}'s config.yaml")
        ids, preds = load_predictions(pred_path)
    store = load_crops(cfg.data)
    logged_hash = run.data.tags.get("data.content_hash")
    if logged_hash and logged_hash != store.data_hash:
        raise DataError(f"run {run_id} was evaluated on data {logged_hash}, the crop cache here is "
                        f"{store.data_hash}: its predictions cannot be scored against these ground truths")
    rows = store.indices("test")
    position = {n: i for i, n in enumerate(store.table.iloc[rows]["nodule_id"])}
    missing = [n for n in ids if n not in position]
    if missing or len(ids) != len(rows):
        raise DataError(f"run {run_id}'s predictions cover {len(ids)} nodules, the test split here {len(rows)}"
                        + (f" (unknown: {missing[:3]})" if missing else ""))
    rows = rows[[position[n] for n in ids]]
    gts = centre_ground_truth(store, rows, cfg.data.patch_zyx)
    df = score(preds, gts, store, rows, cfg)
    flat = flat_metrics(summarize(df, dataset_strata(cfg)))
    return df, flat, dict(run.data.metrics)


def _check_digest(run_id: str, tags: dict, pred_path: Path, require_digest: bool) -> None:
    from benchmark.core.provenance import sha256_file
    from benchmark.run.evaluate import PREDICTIONS_DIGEST_TAG, PREDICTIONS_FILE
    recorded = tags.get(PREDICTIONS_DIGEST_TAG)
    if recorded is None:
        what = (f"run {run_id} predates prediction digests (no tag {PREDICTIONS_DIGEST_TAG}): its stored "
                f"evaluation/{PREDICTIONS_FILE} cannot be checked")
        if require_digest:
            raise UsageError(f"{what}; add --accept-unverified to log its rescoring anyway")
        print(f"warning: {what}", file=sys.stderr)
    elif sha256_file(pred_path) != recorded:
        raise DataError(f"run {run_id}: evaluation/{PREDICTIONS_FILE} does not match the sha256 recorded when it "
                        f"was evaluated (tag {PREDICTIONS_DIGEST_TAG}): changed since; refused")


def compare_with_logged(flat: dict, logged: dict) -> tuple[dict, dict]:
    """(the aggregates the run has not logged, {name: (logged, recomputed)} of those that differ)."""
    new = {k: v for k, v in flat.items() if k not in logged}
    changed = {k: (logged[k], v) for k, v in flat.items()
               if k in logged and not np.isclose(logged[k], v, rtol=1e-6, atol=1e-9, equal_nan=True)}
    return new, changed


def log_rescore(run_id: str, df: pd.DataFrame, new: dict) -> None:
    """Log the rescored per-nodule table and the aggregates the run lacks (``new``; logged values
    are kept), and tag the run so the leaderboard and exports read that table from now on."""
    from benchmark.core.tracking import RESCORED_PER_NODULE_ARTIFACT, RESCORED_TAG, Tracker, client, load_settings
    settings = load_settings()
    tracker = Tracker(client(settings), run_id, settings)
    with tempfile.TemporaryDirectory() as tmp:
        folder, _, name = RESCORED_PER_NODULE_ARTIFACT.rpartition("/")
        csv = Path(tmp) / name
        df.to_csv(csv, index=False)
        tracker.log_artifact(csv, folder)
    if new:
        tracker.log_metrics(new)
    # from now on the leaderboard and exports read the rescored table (per_nodule_artifact)
    tracker.set_tags({RESCORED_TAG: "true"})
