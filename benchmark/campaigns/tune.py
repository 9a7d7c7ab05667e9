"""``bench tune``: Optuna studies on the validation split, tracked as MLflow parent/child runs.

    bench tune --arch unet3d --trials 20 --study unet3d-cpu [--loss dice_bce] [--preset cpu]
               [--storage URL] [--workers K] [--pruner median|hyperband|successive_halving]
               [--fix optim.optimizer=adam] [--narrow optim.lr=1e-4:1e-3] [key=value ...]
    bench tune --report unet3d-cpu
    bench run --arch unet3d --params-from unet3d-cpu

Search space (``benchmark.campaigns.search_space``): the common training knobs, plus the
``search_space(trial)`` declared next to each architecture's and loss's code. ``--fix
NAME=VALUE`` pins a parameter, ``--narrow NAME=LOW:HIGH`` (or ``NAME=a,b,c`` for a categorical)
shrinks it (a name no trial suggests is refused); positional ``key=value`` overrides fix config
fields that are not searched.

Replay: each trial records the exact ``key=value`` list it trained with (user attribute
``overrides``: its suggestions, then the command's fixed overrides); ``--params-from`` and
``bench protocol`` rebuild the trial's config from it (``search_space.replay_overrides``), so the replayed
config has the trial's fingerprint. Overrides given after it win (e.g. ``train.epochs=20``).

Objective: best validation Dice of the trial's training run, reported every epoch to the
pruner (median by default). The test split is never evaluated by tuning.

Storage: by default Optuna's journal file ``runs/optuna/journal.log`` (safe for several
processes on one machine; open it with ``optuna-dashboard runs/optuna/journal.log``). An RDB
URL (``postgresql://...``) serves several machines; SQLite is refused for parallel workers
(it locks). Rerunning the same command resumes the same study until it holds ``--trials``
finished (complete or pruned) trials. Failed trials do not count; a worker stops after
``--max-failures`` (default 3) of them in a row, with the last one's error.

MLflow: one parent run per study (its id is stored in the study's user attributes), one
child run per trial (tags ``optuna.trial``, ``optuna.state`` = COMPLETE / PRUNED / FAIL),
written by :class:`MlflowTrialTracker` with explicit run ids (optuna-integration's
MLflowCallback is deprecated and serialises parallel trials).
"""
from __future__ import annotations

import contextlib
import math
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Callable, Optional

from benchmark.core.errors import BenchError, TrainingError, UsageError
from benchmark.core.liveness import HostLock, pid_alive
from benchmark.core.paths import runs_dir
from benchmark.core.optuna_storage import open_storage
from benchmark.campaigns.search_space import (NEVER_PRUNE_ATTR, OVERRIDES_ATTR, ConstrainedTrial, check_constraints, config_from_overrides,
                                              declared_parameters, parse_fix, parse_narrow, replay_overrides,
                                              trial_run_overrides)

#: consecutive failed trials after which a worker gives up (``--max-failures``)
DEFAULT_MAX_FAILURES = 3


@contextlib.contextmanager
def ask_lock(storage_label: str):
    """Serialise "count finished trials, then ask" among local workers of a journal study."""
    if "://" in storage_label:
        yield
        return
    with HostLock(storage_label + ".asklock"):
        yield



#: validation metrics a study can maximise (``Trainer.validate``'s)
TUNING_METRICS = ("val_dice", "val_soft_dice")


# ---------------------------------------------------------------------------------------------
# MLflow parent/child tracking
# ---------------------------------------------------------------------------------------------
class MlflowTrialTracker:
    """Optuna callback: stamp each trial's child run with its final state and value."""

    def __init__(self, parent_run_id: str):
        from benchmark.core.tracking import client
        self.client = client()
        self.parent_run_id = parent_run_id

    def __call__(self, study, trial):
        from benchmark.core.tracking import log_batch
        run_id = trial.user_attrs.get("mlflow_run_id")
        state = trial.state.name
        if run_id:
            log_batch(self.client, run_id, tags={"optuna.state": state, "optuna.trial": trial.number})
            if state == "FAIL":
                with contextlib.suppress(Exception):
                    self.client.set_terminated(run_id, "FAILED")
        metrics = {}
        if trial.value is not None:
            metrics["trial_value"] = trial.value
        with contextlib.suppress(ValueError):    # no completed trial yet
            metrics["best_value"] = study.best_value
        if metrics:
            log_batch(self.client, self.parent_run_id, metrics=metrics, step=trial.number)


def ensure_parent_run(study, meta: dict[str, str], storage_label: Optional[str] = None) -> str:
    """The study's MLflow parent run, created by the first process that gets here: the check
    and the creation happen under one lock (two `bench tune` started together made two)."""
    from benchmark.core.tracking import Tracker, client
    with parent_lock(storage_label or f"study:{study.study_name}"):
        pid = study.user_attrs.get("mlflow_parent_run_id")  # read afresh from the storage
        if pid:
            with contextlib.suppress(Exception):
                client().get_run(pid)
                return pid
        tracker = Tracker.start(f"study-{study.study_name}", {"optuna.study": study.study_name,
                                                              "optuna.role": "parent", **meta})
        tracker.log_params({f"study.{k}": v for k, v in meta.items()})
        study.set_user_attr("mlflow_parent_run_id", tracker.run_id)
        return tracker.run_id


@contextlib.contextmanager
def parent_lock(storage_label: str):
    """Host-wide lock for creating a study's parent run. A journal file locks beside itself; an
    RDB storage (several machines) or an in-memory study locks in this host's runs/ folder:
    processes of one host are serialised, and separate machines should start their first worker
    one after the other."""
    import hashlib
    if "://" in storage_label or storage_label.startswith("study:"):  # an RDB, or an in-memory study
        path = runs_dir() / "optuna" / f".parent-{hashlib.sha256(storage_label.encode()).hexdigest()[:12]}.lock"
    else:
        path = Path(storage_label + ".parentlock")
    with HostLock(path):
        yield


def close_parent_run(parent_run_id: str) -> None:
    """Mark the study's parent run finished (a later resume adds children to it all the same)."""
    from benchmark.core.tracking import client
    with contextlib.suppress(Exception):
        client().set_terminated(parent_run_id, "FINISHED")


def fail_dead_local_trials(study):
    """Mark RUNNING trials whose worker process on this host is gone as FAIL (journal storage
    has no heartbeat; a SIGKILLed worker would otherwise leave its trial RUNNING forever)."""
    import optuna
    host = socket.gethostname()
    failed = []
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        if t.user_attrs.get("worker_host") != host:
            continue
        pid = t.user_attrs.get("worker_pid")
        if pid and not pid_alive(int(pid)):
            study._storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)
            failed.append(t)
    if failed:
        with contextlib.suppress(Exception):
            cb = MlflowTrialTracker(study.user_attrs["mlflow_parent_run_id"])
            for t in study.get_trials(deepcopy=False):
                if t.number in {f.number for f in failed}:
                    cb(study, t)
    return len(failed)


# ---------------------------------------------------------------------------------------------
# the study
# ---------------------------------------------------------------------------------------------
def make_pruner(name: str):
    """An Optuna pruner by name; ``successive_halving:<min epochs>:<reduction factor>`` (a
    protocol's ``tuning.pruner: successive_halving``): a trial reaches its first rung after
    ``min epochs`` reported epochs and each rung keeps the best 1/``reduction factor``."""
    import optuna
    if name.startswith("successive_halving"):
        _, min_epochs, factor = (name.split(":") + ["1", "3"])[:3]
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=int(min_epochs), reduction_factor=int(factor))
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise UsageError(f"unknown pruner {name!r} (median, hyperband, successive_halving, none)")


def make_sampler(spec: Optional[tuple], study=None):
    """Optuna sampler from (name, seed) or (name, seed, TPE start-up trials); None keeps Optuna's
    default (TPE, unseeded). TPE samples at random until it has its start-up trials (Optuna's
    default 10), so a 12-trial study would otherwise be a random search but for two trials.

    A resumed study gets a fresh sampler object; seeding it with the declared seed plus the
    number of trials already in the study keeps a stop-and-rerun sequence reproducible and stops
    its random start-up trials from repeating the first ones."""
    import optuna
    if spec is None:
        return None
    name, seed, startup = (*spec, None)[:3]
    if study is not None:
        seed = seed + len(study.get_trials(deepcopy=False))
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed) if startup is None else \
            optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise UsageError(f"unknown sampler {name!r} (tpe, random)")


def open_study(study_name: str, storage_url: Optional[str], workers: int, meta: Optional[dict] = None,
               pruner: str = "median", create: bool = True, sampler: Optional[tuple[str, int]] = None):
    import optuna
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage, label = open_storage(storage_url, workers)
    if create:
        study = optuna.create_study(storage=storage, study_name=study_name, direction="maximize",
                                    pruner=make_pruner(pruner), load_if_exists=True)
        if sampler is not None:
            study.sampler = make_sampler(sampler, study)
    else:
        try:
            study = optuna.load_study(study_name=study_name, storage=storage, pruner=make_pruner(pruner),
                                      sampler=make_sampler(sampler))
        except KeyError:
            raise UsageError(f"no Optuna study {study_name!r} in {label}") from None
    if meta:
        old = study.user_attrs.get("meta")
        if old is None:
            study.set_user_attr("meta", meta)
        else:
            clash = {k: (old.get(k), v) for k, v in meta.items() if old.get(k) != v}
            if clash:
                k, (a, b) = next(iter(clash.items()))
                raise UsageError(f"study {study_name!r} was created with {k}={a}, this command asks {k}={b}; "
                                 f"use another --study name")
    return study, label


def count_finished(study) -> int:
    import optuna
    S = optuna.trial.TrialState
    return len(study.get_trials(deepcopy=False, states=(S.COMPLETE, S.PRUNED, S.RUNNING)))


def objective_factory(base_overrides: list[str], meta: dict, fixed: dict, narrowed: dict, parent_run_id: str):
    import optuna
    from benchmark.run.train import run_experiment
    from benchmark.run.run_args import validate_names

    # what a trial reports each epoch and maximises (its best epoch's): the thresholded validation
    # Dice, or the soft Dice a protocol may declare (``tuning.metric``; see Trainer.validate)
    metric = meta.get("metric", "val_dice")
    if metric not in TUNING_METRICS:
        raise UsageError(f"tuning metric {metric!r}: choose from {', '.join(TUNING_METRICS)}")

    def objective(trial) -> float:
        # an enqueued default recipe is never pruned: it is the study's reference point (the
        # default row's settings), so its full-schedule value must exist to compare the tuned
        # configurations with, and pruning it on an early rung would judge the default recipe
        # at a short horizon, the very thing the full schedule is there to avoid
        protected = bool(trial.user_attrs.get(NEVER_PRUNE_ATTR))
        trial.set_user_attr("worker_pid", os.getpid())
        trial.set_user_attr("worker_host", socket.gethostname())
        ct = ConstrainedTrial(trial, fixed, narrowed)
        overrides = trial_run_overrides(ct, meta, base_overrides)
        for k, v in fixed.items():
            trial.set_user_attr(f"fixed.{k}", v)
        # the exact list this trial trains with: replaying it is replaying the trial
        trial.set_user_attr(OVERRIDES_ATTR, overrides)
        cfg = config_from_overrides(meta, overrides)
        validate_names(cfg)
        trial.set_user_attr("config_fingerprint", cfg.fingerprint())
        cfg.name = f"{trial.study.study_name}-t{trial.number:03d}"

        best = {"value": -math.inf}
        seen = {"epochs": 0, "run_id": None}

        def report(epoch: int, metrics: dict):
            seen["epochs"] = epoch + 1
            if metric in metrics:
                value = metrics[metric]
                best["value"] = max(best["value"], value)
                trial.report(value, epoch)
                if not protected and trial.should_prune():
                    raise optuna.TrialPruned(f"pruned at epoch {epoch + 1}")

        def started(run_id: str):
            seen["run_id"] = run_id
            trial.set_user_attr("mlflow_run_id", run_id)

        try:
            res = run_experiment(cfg, parent_run_id=parent_run_id, evaluate_test=False, on_epoch_end=report,
                                 on_run_start=started, show_progress=False, discard_checkpoints=True,
                                 tags={"optuna.study": trial.study.study_name, "optuna.trial": str(trial.number)})
        except optuna.TrialPruned:
            _tag_pruned_budget(seen["run_id"], cfg, seen["epochs"])
            raise
        value = res.best_val_dice if metric == "val_dice" else best["value"]
        if not math.isfinite(value):
            raise optuna.TrialPruned(f"non-finite {metric}")
        return value

    return objective


def _tag_pruned_budget(run_id: Optional[str], cfg, epochs: int) -> None:
    """A pruned trial's run ends before the engine tags the training patches it saw
    (``budget.samples_seen``, set when training closes); tag it here, so every trial of a
    samples-budget study says what it cost. Exact while an epoch's step cap is under one pass
    over the training split (the cpu preset's 160 patches are), which is when the cap applies."""
    if run_id is None or cfg.train.samples_per_epoch is None or not epochs:
        return
    from benchmark.core.tracking import client, log_batch
    with contextlib.suppress(Exception):       # bookkeeping: never turn a pruned trial into a failed one
        log_batch(client(), run_id, tags={"budget.samples_seen": epochs * cfg.train.max_steps() * cfg.train.batch_size,
                                          "pruned_at_epoch": epochs})


def run_worker(study_name: str, storage_url: Optional[str], n_trials: int, meta: dict, base_overrides: list[str],
               fixed: dict, narrowed: dict, pruner: str, show_progress: bool = True,
               sampler: Optional[tuple[str, int]] = None, max_failures: int = DEFAULT_MAX_FAILURES,
               may_start: Optional[Callable[[], Optional[str]]] = None) -> int:
    """One worker process: ask/tell trials until the study holds ``n_trials`` finished ones, or
    until ``may_start`` gives a reason not to start the next one (``bench protocol run --hours``).

    Failed trials do not count towards ``n_trials`` (a rerun after a fix still gets its
    trials), so a trial that fails the same way every time would loop for ever: after
    ``max_failures`` consecutive failures of this worker it stops with the last trial's error.
    """
    import optuna
    from benchmark.core.progress import progress_bar
    study, label = open_study(study_name, storage_url, 2, meta, pruner, sampler=sampler)
    parent = ensure_parent_run(study, meta, label)
    fail_dead_local_trials(study)
    objective = objective_factory(base_overrides, meta, fixed, narrowed, parent)
    tracker_cb = MlflowTrialTracker(parent)
    done = failures = 0
    bar = progress_bar(total=n_trials, initial=min(count_finished(study), n_trials), desc=f"study {study_name}",
               unit="trial", disable=not show_progress)
    while True:
        with ask_lock(label):
            fail_dead_local_trials(study)
            if count_finished(study) >= n_trials:
                break
            why = may_start() if may_start is not None else None
            if why:
                print(f"study {study_name}: no new trial: {why}", file=sys.stderr)
                break
            trial = study.ask()
            trial.set_user_attr("worker_pid", os.getpid())
            trial.set_user_attr("worker_host", socket.gethostname())
        state, value, error = optuna.trial.TrialState.COMPLETE, None, None
        try:
            value = objective(trial)
        except optuna.TrialPruned:
            state = optuna.trial.TrialState.PRUNED
        except Exception as e:  # noqa: BLE001 - a failed trial must not stop the study
            state, error = optuna.trial.TrialState.FAIL, e
            trial.set_user_attr("fail_reason", f"{type(e).__name__}: {str(e)[:300]}")
            print(f"trial {trial.number} failed: {_one_line(e)}", file=sys.stderr)
        frozen = study.tell(trial, value if state == optuna.trial.TrialState.COMPLETE else None, state=state)
        tracker_cb(study, frozen)
        done += 1
        failures = failures + 1 if error is not None else 0
        if failures >= max_failures:
            bar.close()
            gave_up = BenchError(f"study {study_name}: {failures} trials failed in a row, giving up "
                                 f"(--max-failures {max_failures}); last error: {_one_line(error)}")
            gave_up.exit_code = getattr(error, "exit_code", TrainingError.exit_code)
            raise gave_up
        bar.update(min(count_finished(study), n_trials) - bar.n)
    bar.close()
    return done


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
    return text if isinstance(e, BenchError) else f"{type(e).__name__}: {text}"


def tune_study(study_name: str, storage: Optional[str], meta: dict, n_trials: int, overrides: list[str],
               fix: list[str], narrow: list[str], pruner: str = "median", workers: int = 1,
               max_failures: int = DEFAULT_MAX_FAILURES, show_progress: bool = True) -> None:
    """``bench tune``: run (or resume) study ``study_name`` of ``meta`` (arch, loss, preset) until
    it holds ``n_trials`` finished trials, in this process or in ``workers`` worker processes,
    then print its summary. ``fix`` and ``narrow``: the ``NAME=...`` constraints, refused before
    anything is written when a trial never suggests the name."""
    fixed, narrowed = parse_fix(fix), parse_narrow(narrow)
    check_constraints(fixed, narrowed, declared_parameters(meta["arch"], meta["loss"], meta["preset"]),
                      f"{meta['arch']} with loss {meta['loss']}")
    study, label = open_study(study_name, storage, workers, meta, pruner)
    parent = ensure_parent_run(study, meta, label)
    print(f"study {study_name} in {label}; MLflow parent run {parent}", file=sys.stderr)
    if workers == 1:
        try:
            run_worker(study_name, storage, n_trials, meta, overrides, fixed, narrowed, pruner,
                       show_progress=show_progress, max_failures=max_failures)
        except BenchError:
            close_parent_run(parent)  # the study stays resumable; its parent run must not read RUNNING
            raise
    else:
        cmd = [sys.executable, "-m", "benchmark.cli.main", "tune", "--arch", meta["arch"], "--loss", meta["loss"],
               "--preset", meta["preset"], "--trials", str(n_trials), "--study", study_name,
               *_pruner_arguments(pruner), "--workers", "1", "--no-progress", "--max-failures", str(max_failures),
               *overrides]
        if storage:
            cmd += ["--storage", storage]
        for f in fix or []:
            cmd += ["--fix", f]
        for n in narrow or []:
            cmd += ["--narrow", n]
        procs = [subprocess.Popen(cmd) for _ in range(workers)]
        codes = [p.wait() for p in procs]
        if all(codes):
            raise TrainingError(f"every worker of study {study_name} stopped (exit codes {codes}; their errors are "
                                f"above); the study stays usable, rerun to complete it")
        if any(codes):
            print(f"warning: worker exit codes {codes}; the study stays usable, rerun to complete it", file=sys.stderr)
    study, _ = open_study(study_name, storage, 1, None, pruner, create=False)
    close_parent_run(parent)
    print_summary(study)


def _pruner_arguments(pruner: str) -> list[str]:
    """``bench tune``'s arguments for a pruner name (``successive_halving:<min>:<factor>`` included)."""
    name, *rest = pruner.split(":")
    if name == "successive_halving" and rest:
        return ["--pruner", name, "--min-epochs", rest[0], "--reduction-factor", rest[1]]
    return ["--pruner", name]


def print_summary(study):
    import optuna
    S = optuna.trial.TrialState
    counts = {s.name: len(study.get_trials(deepcopy=False, states=(s,))) for s in (S.COMPLETE, S.PRUNED, S.FAIL, S.RUNNING)}
    print(f"study {study.study_name}: " + ", ".join(f"{v} {k.lower()}" for k, v in counts.items()))
    try:
        b = study.best_trial
        print(f"best trial {b.number}: val Dice {b.value:.4f}  " + " ".join(f"{k}={v}" for k, v in b.params.items()))
    except ValueError:
        print("no completed trial yet")



def best_params_overrides(study_name: str, storage_url: Optional[str]) -> tuple[list[str], dict, dict]:
    """Config overrides reproducing a study's best trial, its tags, and the study's
    (arch, loss, preset), for ``bench run --params-from``."""
    study, _ = open_study(study_name, storage_url, 1, None, "median", create=False)
    try:
        best = study.best_trial
    except ValueError:
        raise UsageError(f"study {study_name!r} has no completed trial") from None
    meta = study.user_attrs.get("meta", {})
    tags = {"optuna.study": study_name, "optuna.best_trial": str(best.number), "tuned": "true"}
    return replay_overrides(best, meta), tags, meta

