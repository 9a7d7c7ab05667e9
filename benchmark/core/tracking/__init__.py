"""MLflow tracking: configuration from ``mlflow.yaml``, explicit-run-id logging, offline buffer.

Everything goes through :class:`Tracker`, a thin layer over ``MlflowClient`` with an
explicit run id (never MLflow's process-global "active run", which breaks under parallel
trials and resume). If the tracking server goes away mid-run, metrics are appended to
``runs/offline/<run_id>.jsonl`` and training goes on; ``bench sync`` replays them later.
An unreachable server at start is an error before any training happens.

This package is the one door to MLflow (a test checks that no other module imports it):

  * ``settings``: ``mlflow.yaml``, the client, the experiment, the local SQLite store;
  * ``tracker``: ``Tracker`` (one run by its id), batched logging, the offline buffer and ``sync``;
  * ``conventions``: artifact names, the UI's saved view, source tags, the split as dataset inputs;
  * ``models``: the run's MLflow model (logged once), loading it, the model registry.

The names below are its interface.
"""
from __future__ import annotations

from benchmark.core.tracking.settings import (MAX_PARAM_LEN, TrackingSettings, load_settings,
                                              check_reachable, client, experiment_id, prepare_sqlite_store,
                                              create_or_migrate_sqlite)  # noqa: F401
from benchmark.core.tracking.tracker import (log_split_inputs, environment_tags, Tracker, search_all_runs,
                                             logged_metric_steps, metric_history,
                                             log_batch, sync_offline)  # noqa: F401
from benchmark.core.tracking.conventions import (EXPERIMENT_KIND_TAG, TRAINING_EXPERIMENT_KIND,
                                                 RUNS_VIEW_KEY, HEADLINE_METRICS, RUNS_VIEW_TAGS,
                                                 MODEL_ARTIFACT, PER_NODULE_ARTIFACT,
                                                 RESCORED_PER_NODULE_ARTIFACT, RESCORED_TAG,
                                                 per_nodule_artifact, no_download_bars, quiet_mlflow_logging,
                                                 mark_training_experiment, runs_view_state, runs_page_url,
                                                 source_tags, git_commit)  # noqa: F401
from benchmark.core.tracking.models import (logged_model_uri, log_pytorch_model, load_pytorch_model,
                                            register_model, registered_version)  # noqa: F401

__all__ = ["MAX_PARAM_LEN", "TrackingSettings", "load_settings", "check_reachable", "client", "experiment_id",
           "prepare_sqlite_store", "create_or_migrate_sqlite", "environment_tags", "Tracker",
           "search_all_runs", "logged_metric_steps", "metric_history", "log_batch", "sync_offline",
           "EXPERIMENT_KIND_TAG",
           "TRAINING_EXPERIMENT_KIND", "RUNS_VIEW_KEY", "HEADLINE_METRICS", "RUNS_VIEW_TAGS", "MODEL_ARTIFACT",
           "PER_NODULE_ARTIFACT", "RESCORED_PER_NODULE_ARTIFACT", "RESCORED_TAG", "per_nodule_artifact",
           "no_download_bars", "quiet_mlflow_logging", "mark_training_experiment", "runs_view_state",
           "runs_page_url", "source_tags", "git_commit", "log_split_inputs", "logged_model_uri",
           "log_pytorch_model", "load_pytorch_model", "register_model", "registered_version"]
