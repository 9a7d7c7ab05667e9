"""What makes a run usable beyond its numbers: the MLflow UI's view of it, standard source tags,
artifact names, the split as a dataset input."""
from __future__ import annotations

import json
import logging
import contextlib
import os
import subprocess
import sys
from pathlib import Path

from benchmark import PROJECT_ROOT
from benchmark.core.tracking.settings import log


# ------------------------------------------------------------------------------------------
# What makes a run usable beyond its numbers: the MLflow UI's view of it, standard source
# tags, the split as a dataset input, the selected model as an MLflow model, the registry.
# ------------------------------------------------------------------------------------------
#: the experiment tag MLflow 3's UI reads to choose between its GenAI pages (traces,
#: evaluations) and its classic model-training pages (the runs table)
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
TRAINING_EXPERIMENT_KIND = "custom_model_development"
#: a saved view of the runs table (MLflow's "share view" mechanism: an experiment tag
#: ``mlflow.sharedViewState.<key>`` holding the view as JSON, opened with ``?viewStateShareKey=<key>``):
#: the UI's default columns are Source/Models/Dataset only; this one shows the headline numbers
#: instead, and only those, so that all of them fit a 1600 px window beside the run's name (the UI
#: orders metrics by name and puts tags after them; any other column is one click away)
RUNS_VIEW_KEY = "lidc-bench-runs"
HEADLINE_METRICS = ("test_dice", "test_dice_vs_truth", "test_hd95_mm")
RUNS_VIEW_TAGS = ("arch", "loss", "seed")
#: name of the logged MLflow model (a LoggedModel of the run, loaded by its ``models:/<model_id>`` URI)
MODEL_ARTIFACT = "model"
#: a run's per-nodule test table as evaluation wrote it, and as ``bench rescore --log`` wrote it again
PER_NODULE_ARTIFACT = "evaluation/per_nodule.csv"
RESCORED_PER_NODULE_ARTIFACT = "evaluation/per_nodule_rescored.csv"
RESCORED_TAG = "evaluation.rescored"


def per_nodule_artifact(tags: dict) -> str:
    """The per-nodule table a run is scored by: the rescored one once ``bench rescore --log`` has
    written it (it holds every column the metric specification has now), else the original."""
    return RESCORED_PER_NODULE_ARTIFACT if tags.get(RESCORED_TAG) == "true" else PER_NODULE_ARTIFACT


@contextlib.contextmanager
def _temporary_env(name: str, value: str):
    """Set an environment variable MLflow reads, and put back what was there."""
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


def no_download_bars():
    """No MLflow progress bar per downloaded artifact: reading a few hundred runs' tables
    would bury the console in bars of one file each."""
    return _temporary_env("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def quiet_mlflow_logging(level: str = "WARNING"):
    """Keep MLflow's INFO lines ("Creating initial MLflow database tables", ...) off the console.

    Setting ``logging.getLogger("mlflow")``'s level is not enough: ``import mlflow``
    (re)configures its own loggers from ``MLFLOW_LOGGING_LEVEL`` (default INFO), undoing a
    level set before the import. So the variable is set (also for the ``mlflow ui``
    subprocess) and, if mlflow is already imported, its loggers are lowered as well.
    """
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", level)
    wanted = os.environ["MLFLOW_LOGGING_LEVEL"].upper()
    if "mlflow" in sys.modules:
        for name in ("mlflow", "alembic", "huey"):
            logging.getLogger(name).setLevel(wanted)


def mark_training_experiment(cl, exp_id: str):
    """Tag the experiment as a model-training one so the UI opens on its runs table."""
    try:
        exp = cl.get_experiment(exp_id)
        if exp.tags.get(EXPERIMENT_KIND_TAG) != TRAINING_EXPERIMENT_KIND:
            cl.set_experiment_tag(exp_id, EXPERIMENT_KIND_TAG, TRAINING_EXPERIMENT_KIND)
        view = runs_view_state()
        if exp.tags.get(f"mlflow.sharedViewState.{RUNS_VIEW_KEY}") != view:
            cl.set_experiment_tag(exp_id, f"mlflow.sharedViewState.{RUNS_VIEW_KEY}", view)
    except Exception as e:  # noqa: BLE001 - a UI nicety, never worth failing a run for
        log.warning("could not tag experiment %s as a training experiment: %s", exp_id, e)


def runs_view_state() -> str:
    """The saved runs-table view: sorted by test Dice, headline metrics and tags as columns."""
    def key(kind, name):
        return f"{kind}.`{name}`"
    # no Source/Models/Dataset columns: wide, and the same for every run of the project
    columns = [key("metrics", m) for m in HEADLINE_METRICS] + [key("tags", t) for t in RUNS_VIEW_TAGS]
    return json.dumps({"orderByKey": key("metrics", "test_dice"), "orderByAsc": False, "selectedColumns": columns})


def runs_page_url(base_url: str, exp_id: str) -> str:
    """Where to point a browser: the experiment's runs table in the view above."""
    return f"{base_url.rstrip('/')}/#/experiments/{exp_id}/runs?viewStateShareKey={RUNS_VIEW_KEY}"


def source_tags(argv: list[str] | None = None) -> dict[str, str]:
    """MLflow's standard ``mlflow.source.*`` and ``mlflow.user`` tags (the UI's Source/User columns)."""
    import getpass
    from mlflow.utils.mlflow_tags import (MLFLOW_GIT_COMMIT, MLFLOW_SOURCE_NAME, MLFLOW_SOURCE_TYPE,
                                          MLFLOW_USER)
    argv = list(sys.argv if argv is None else argv)
    script = Path(argv[0]).name if argv else ""
    # `bench run ...` and `python -m benchmark.cli.main run ...` are the same entry point
    if script in ("bench", "cli.py", "__main__.py", "-m", "-c") or script.endswith("benchmark.cli.main"):
        name = "bench " + (argv[1] if len(argv) > 1 and not argv[1].startswith("-") else "")
    else:
        name = script or "python"
    tags = {MLFLOW_SOURCE_NAME: name.strip(), MLFLOW_SOURCE_TYPE: "LOCAL"}
    try:
        tags[MLFLOW_USER] = getpass.getuser()
    except Exception:  # noqa: BLE001 - no user name in some containers
        pass
    commit = git_commit()
    if commit:
        tags[MLFLOW_GIT_COMMIT] = commit
    return tags


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True,
                             text=True, timeout=5).stdout.strip()
        return out or None
    except Exception:  # noqa: BLE001 - not a git checkout (installed from a wheel)
        return None
