"""Where the suite keeps its files.

Everything written at run time (MLflow store, checkpoints, Optuna journals, crop caches,
offline metric buffers) lives under ``runs/`` and ``.cache/`` beside ``mlflow.yaml`` and is
git-ignored. ``LIDC_BENCH_HOME`` moves all of it (tests point it at a temporary folder).
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from benchmark import PROJECT_ROOT
from benchmark.core.errors import UsageError

#: an MLflow run id: 32 lowercase hex digits (uuid4().hex)
_RUN_ID = re.compile(r"[0-9a-f]{32}")


def home() -> Path:
    return Path(os.environ.get("LIDC_BENCH_HOME", PROJECT_ROOT)).resolve()


def runs_dir() -> Path:
    return home() / "runs"


def validate_run_id(run_id, context: str = "") -> str:
    """``run_id`` if it is an MLflow run id; a UsageError otherwise. Ids are joined into paths
    (checkpoints, offline buffers), so nothing else may pass: no ``..``, no ``/``."""
    if not isinstance(run_id, str) or not _RUN_ID.fullmatch(run_id):
        raise UsageError(f"{context + ': ' if context else ''}{str(run_id)[:80]!r} is not an MLflow run id "
                         f"(32 hex digits)")
    return run_id


def checkpoints_dir(run_id: str) -> Path:
    return runs_dir() / "checkpoints" / validate_run_id(run_id)


def offline_dir() -> Path:
    return runs_dir() / "offline"


def studies_dir() -> Path:
    return runs_dir() / "studies"
