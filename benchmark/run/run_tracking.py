"""The MLflow side of one run: what it is tagged with, how it opens, what each epoch and the end
of training log. Every call goes through :mod:`benchmark.core.tracking`; only rank 0 of a
distributed run logs (the callers pass no tracker on the other ranks).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import yaml

from benchmark.core.liveness import owner_tags
from benchmark.core.tracking import Tracker
from benchmark.data.datasets import get_dataset
from benchmark.run.config import RunConfig


def data_tags(cfg: RunConfig, store) -> dict[str, str]:
    """The tags that say what a run (model or reference row) was trained and scored on."""
    return {
        "data.source": cfg.data.source, "data.ground_truth": cfg.data.ground_truth,
        "data.spacing_mm": str(cfg.data.spacing_mm), "data.split_hash": store.split_hash,
        "data.content_hash": store.data_hash, "preset": cfg.preset, "arch": cfg.model.arch,
        "loss": cfg.loss.name, "seed": str(cfg.train.seed), "config.fingerprint": cfg.fingerprint(),
        "config.budget_fingerprint": cfg.budget_fingerprint(),
        # what the leaderboard names its tables by (LIDC: lidc-phantom, lidc-dicom)
        "data.dataset": get_dataset(cfg.data.dataset).run_name(cfg.data.source),
        # how batches were made (not part of the config's identity: every way gives the same batches)
        "data.num_workers": str(cfg.data.num_workers), "data.on_device": str(cfg.data.on_device),
        # which phantom generated the images ("none" for real CT): results on two phantom
        # versions are not comparable (their content hashes differ too)
        "data.phantom_version": str(getattr(store, "phantom_version", None) or "none"),
    }


def open_tracker(cfg: RunConfig, store, dist, resume_run_id: Optional[str],
                 resume_state: Optional[dict], tags: Optional[dict], experiment: Optional[str],
                 parent_run_id: Optional[str]) -> Optional[Tracker]:
    """The run's MLflow run (rank 0 only): resumed, or created with its config, data tags and
    split inputs; either way tagged with who runs it now."""
    if not dist.main:
        return None
    if resume_run_id:
        tracker = Tracker.resume(resume_run_id)
        tracker.set_tags({"resumed_from_epoch": resume_state["epoch"]})
    else:
        from benchmark.run.cost import count_parameters  # noqa: F401  (fail early if the module is broken)
        name = cfg.name or f"{cfg.model.arch}-{cfg.loss.name}-{cfg.preset}-s{cfg.train.seed}"
        tracker = Tracker.start(name, {**data_tags(cfg, store), **(tags or {})},
                                experiment=experiment, parent_run_id=parent_run_id)
        tracker.log_params(cfg.flat())
        tracker.log_text(cfg.to_yaml(), "config.yaml")
        tracker.set_tags({"world_size": dist.world})
        from benchmark.core.tracking import log_split_inputs
        adapter = get_dataset(cfg.data.dataset)
        log_split_inputs(tracker, store.table, store.split_hash, adapter.run_name(cfg.data.source),
                         adapter.split_path())
    # who runs it now: lets `bench suite` tell a hard-killed run (still RUNNING) from a live one
    tracker.set_tags(owner_tags())
    tracker.start_system_metrics()
    return tracker


def close_training(tracker: Tracker, progress, stopped_early: bool, ckpt_dir: Path,
                   samples_per_epoch: Optional[int] = None) -> None:
    """What the run logs once training is over: its time, epochs, stop reason, learning curve,
    and (``samples_per_epoch``: the epoch's steps x batch) the training patches it saw, the
    budget a comparison across batch sizes holds equal (tag ``budget.samples_seen``)."""
    tracker.log_metrics({"train_seconds": progress.elapsed, "epochs_completed": len(progress.history)},
                        step=len(progress.history))
    tags = {"stopped_early": stopped_early}
    if samples_per_epoch is not None:
        tags["budget.samples_seen"] = str(len(progress.history) * samples_per_epoch)
    tracker.set_tags(tags)
    _log_learning_curve(tracker, progress.history, ckpt_dir)


def log_epoch(tracker: Tracker, record: dict, best: dict):
    """One epoch's metrics and the best so far, at step = epoch."""
    step = record["epoch"]
    tracker.log_metrics({k: v for k, v in record.items() if k != "epoch"}, step=step)
    tracker.log_metrics({"best_val_dice": best["val_dice"], "best_epoch": best["epoch"]}, step=step)


def backfill(tracker: Tracker, history: list, best: dict):
    """Log epochs the checkpoint holds but the run lacks (killed between the two writes)."""
    try:
        logged = {m.step for m in tracker.client.get_metric_history(tracker.run_id, "train_loss")}
    except Exception:  # noqa: BLE001 - server away: the offline buffer covers it
        return
    for record in history:
        if record["epoch"] not in logged:
            log_epoch(tracker, record, best)


def _log_learning_curve(tracker: Tracker, history: list, ckpt_dir: Path):
    from benchmark.run.figures import learning_curve
    path = ckpt_dir / "learning_curve.png"
    learning_curve(history, path)
    tracker.log_artifact(path, "plots")
    tracker.log_text(yaml.safe_dump(history, sort_keys=False), "history.yaml")
