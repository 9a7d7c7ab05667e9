"""Resuming a run: which runs may be resumed, and their checkpoint and config.

``bench run --resume ID`` (and ``bench suite`` / ``bench protocol run``, which resume the runs
they find interrupted) read the run's verified ``last.pt`` and its validated config here; the
run pipeline (:func:`benchmark.run.train.run_experiment`) then builds the model once from that
config and loads the checkpoint's weights into it (:func:`load_model_weights`) before the
MLflow run is touched, so a checkpoint that does not fit its own config is refused with one line.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from benchmark.core.checkpoint import check_resume_epoch, load_checkpoint
from benchmark.core.errors import TrainingError, UsageError
from benchmark.core.paths import checkpoints_dir
from benchmark.run.config import RunConfig


def resume_state(resume_run_id: Optional[str], cfg: Optional[RunConfig]) -> tuple[Optional[dict], RunConfig]:
    """The checkpoint and config of the run to resume (None and ``cfg`` for a new run)."""
    if not resume_run_id:
        return None, cfg
    # under torchrun only rank 0 owns the MLflow run: the other ranks only read the checkpoint
    return load_resume_state(resume_run_id, check_run=os.environ.get("RANK", "0") == "0")


def load_resume_state(run_id: str, check_run: bool = True) -> tuple[dict, RunConfig]:
    """The verified ``last.pt`` of a run that may be resumed, and its validated config.

    Refused with one line: an id that is not a run id, an unknown run, a FINISHED run (its
    test metrics are logged; resuming would evaluate the test split again), a run still
    RUNNING in a live process on this host, a checkpoint that fails its digest or whose config
    is invalid. A run killed before its first checkpoint has nothing to resume: it is marked
    KILLED (instead of staying RUNNING for ever) and the message says to start a new run.

    The config in a checkpoint was resolved when the run started (its architecture is the
    registry's canonical name), so it is validated, not resolved again.
    """
    from benchmark.core.paths import validate_run_id
    from benchmark.run.config import validate_config
    validate_run_id(run_id, context="cannot resume")
    if check_run:
        _check_resumable_run(run_id)
    state_path = checkpoints_dir(run_id) / "last.pt"
    if not state_path.exists():
        raise UsageError(f"cannot resume run {run_id}: no checkpoint at {state_path}")
    state = load_checkpoint(state_path)
    if state.get("run_id") not in (None, run_id):
        raise TrainingError(f"checkpoint {state_path} belongs to run {state.get('run_id')}, not {run_id}")
    cfg = validate_config(state["config"], where=f"checkpoint {state_path}: ")
    check_resume_epoch(state_path, state["epoch"], cfg.train.epochs)   # 1e9 or -5: a crafted file
    return state, cfg


def load_model_weights(model, state: dict, path: Path, cfg: RunConfig) -> None:
    """Load a checkpoint's weights into the model built from its config; a mismatch is one line."""
    try:
        model.load_state_dict(state["model"])
    except (RuntimeError, KeyError, ValueError, TypeError) as e:
        raise UsageError(mismatch_message(path, cfg, e)) from None


def mismatch_message(path: Path, cfg: RunConfig, e: Exception) -> str:
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return f"checkpoint {path} does not fit its own config (model.arch={cfg.model.arch}): {first[:200]}"


def _check_resumable_run(run_id: str) -> None:
    """The MLflow side of ``load_resume_state`` (see there)."""
    from benchmark.core.liveness import owner_is_dead
    from benchmark.core.tracking import client
    cl = client()
    try:
        run = cl.get_run(run_id)
    except Exception:  # noqa: BLE001 - MLflow raises its own types for a missing run
        raise UsageError(f"no MLflow run {run_id!r} in the tracking store") from None
    status = run.info.status
    if status == "FINISHED":
        raise UsageError(f"run {run_id} is FINISHED: nothing to resume (to train it again, start a new run "
                         f"with its config.yaml: bench run --config config.yaml)")
    dead = owner_is_dead(run.data.tags)
    if status == "RUNNING" and dead is False:
        raise UsageError(f"run {run_id} is RUNNING in process {run.data.tags.get('pid')} on this host; "
                         f"stop it first or let it finish")
    if status == "RUNNING" and dead and not (checkpoints_dir(run_id) / "last.pt").exists():
        cl.set_terminated(run_id, "KILLED")
        raise UsageError(f"run {run_id} was killed before its first checkpoint: nothing to resume; it is now "
                         f"marked KILLED, start a new run")
