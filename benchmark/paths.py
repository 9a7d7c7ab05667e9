"""Where the suite keeps its files.

Everything written at run time (MLflow store, checkpoints, Optuna journals, crop caches,
offline metric buffers) lives under ``runs/`` and ``.cache/`` beside ``mlflow.yaml`` and is
git-ignored. ``LIDC_BENCH_HOME`` moves all of it (tests point it at a temporary folder).
"""
from __future__ import annotations

import os
from pathlib import Path

from . import PROJECT_ROOT


def home() -> Path:
    return Path(os.environ.get("LIDC_BENCH_HOME", PROJECT_ROOT)).resolve()


def runs_dir() -> Path:
    return home() / "runs"


def checkpoints_dir(run_id: str) -> Path:
    return runs_dir() / "checkpoints" / run_id


def offline_dir() -> Path:
    return runs_dir() / "offline"


def studies_dir() -> Path:
    return runs_dir() / "studies"
