"""``bench tune``: Optuna studies on the validation split, tracked as MLflow parent/child runs.

    bench tune --arch unet3d --trials 20 --study unet3d-cpu [--loss dice_bce] [--preset cpu]
               [--storage URL] [--workers K] [--pruner median|hyperband]
               [--fix optim.optimizer=adam] [--narrow optim.lr=1e-4:1e-3] [key=value ...]
    bench tune --report unet3d-cpu
    bench run --arch unet3d --params-from unet3d-cpu

Search space: the common training knobs below, plus the ``search_space(trial)`` declared next
to each architecture's and loss's code. ``--fix NAME=VALUE`` pins a parameter, ``--narrow
NAME=LOW:HIGH`` (or ``NAME=a,b,c`` for a categorical) shrinks it; positional ``key=value``
overrides fix config fields that are not searched.

Replay: each trial records the exact ``key=value`` list it trained with (user attribute
``overrides``: its suggestions, then the command's fixed overrides); ``--params-from`` and
``bench protocol`` rebuild the trial's config from it (``replay_overrides``), so the replayed
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
import tempfile
from pathlib import Path
from typing import Any, Callable, Optional

from benchmark.core.errors import BenchError, TrainingError, UsageError
from benchmark.core.liveness import HostLock, pid_alive
from benchmark.core.paths import runs_dir
from benchmark.core.optuna_storage import open_storage

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


# ---------------------------------------------------------------------------------------------
# search space
# ---------------------------------------------------------------------------------------------
class ConstrainedTrial:
    """Wraps an Optuna trial so the CLI can fix or narrow any declared parameter."""

    def __init__(self, trial, fixed: dict[str, Any], narrowed: dict[str, Any]):
        self._trial, self._fixed, self._narrowed = trial, fixed, narrowed

    def __getattr__(self, name):
        return getattr(self._trial, name)

    def suggest_float(self, name, low, high, *, log=False, step=None):
        if name in self._fixed:
            return float(self._fixed[name])
        if name in self._narrowed:
            low, high = self._narrowed[name]
        return self._trial.suggest_float(name, low, high, log=log, step=step)

    def suggest_int(self, name, low, high, *, log=False, step=1):
        if name in self._fixed:
            return int(self._fixed[name])
        if name in self._narrowed:
            low, high = (int(v) for v in self._narrowed[name])
        return self._trial.suggest_int(name, low, high, log=log, step=step)

    def suggest_categorical(self, name, choices):
        if name in self._fixed:
            return self._fixed[name]
        if name in self._narrowed:
            choices = self._narrowed[name]
        return self._trial.suggest_categorical(name, list(choices))


BATCH_CHOICES = {"smoke": [2, 4], "cpu": [4, 8, 16], "paper": [4, 8, 16]}
#: validation metrics a study can maximise (``Trainer.validate``'s)
TUNING_METRICS = ("val_dice", "val_soft_dice")


#: learning-rate range per optimiser: SGD (momentum 0.9) works at rates ten times Adam's, so one
#: shared range left most SGD draws unable to learn in a short trial (cpu protocol v4: every
#: SGD trial of unet3d at <= 3.5e-3 ended at Dice 0)
LR_RANGES = {"adam": (1e-4, 1e-2), "adamw": (1e-4, 1e-2), "sgd": (1e-3, 1e-1)}
WEIGHT_DECAY_RANGE = (1e-6, 1e-3)


def common_space(trial, preset: str) -> dict[str, Any]:
    """Training knobs every architecture is tuned over (same budget, same ranges). The learning
    rate is conditional on the optimiser: ``optim.lr`` for Adam and AdamW, ``optim.sgd_lr`` for
    SGD, each over its own range (``LR_RANGES``)."""
    optimizer = trial.suggest_categorical("optim.optimizer", ["adam", "adamw", "sgd"])
    lr_name = "optim.sgd_lr" if optimizer == "sgd" else "optim.lr"
    return {
        "optim.lr": trial.suggest_float(lr_name, *LR_RANGES[optimizer], log=True),
        "optim.weight_decay": trial.suggest_float("optim.weight_decay", *WEIGHT_DECAY_RANGE, log=True),
        "optim.optimizer": optimizer,
        "train.batch_size": trial.suggest_categorical("train.batch_size", BATCH_CHOICES.get(preset, [4, 8])),
    }


def default_optimiser_params(arch: str, preset: str) -> dict[str, Any]:
    """The preset's own optimiser settings in the shared space's parameter names: the trial a
    study can start from (a protocol's ``tuning.first_trial: default_optimiser``). A weight
    decay of 0 becomes the range's floor (1e-6: no measurable difference in 400 steps)."""
    from benchmark.run.config import build_config
    cfg = build_config(preset, [], **{"model.arch": arch})
    o = cfg.optim
    lr_name = "optim.sgd_lr" if o.optimizer == "sgd" else "optim.lr"
    return {"optim.optimizer": o.optimizer, lr_name: o.lr,
            "optim.weight_decay": max(o.weight_decay, WEIGHT_DECAY_RANGE[0]),
            "train.batch_size": cfg.train.batch_size}


def suggest_overrides(trial, arch: str, loss: str, preset: str, loss_space: bool = True) -> list[str]:
    """All suggested values as config overrides (``optim.lr=...``, ``model.kwargs.x=...``).
    ``loss_space=False`` leaves the loss at its defaults (the protocol tunes architecture and
    optimiser only, so that its loss study compares losses on equal terms)."""
    from architectures import architecture_entry
    from benchmark.losses import loss_entry
    out = common_space(trial, preset)
    a = architecture_entry(arch)
    if a.search_space:
        out.update({f"model.kwargs.{k}": v for k, v in a.search_space(trial).items()})
    lo = loss_entry(loss)
    if loss_space and lo.search_space:
        out.update({f"loss.kwargs.{k}": v for k, v in lo.search_space(trial).items()})
    return [f"{k}={_yaml_value(v)}" for k, v in out.items()]


def _yaml_value(v) -> str:
    import yaml
    return yaml.safe_dump(v, default_flow_style=True).strip().removesuffix("...").strip()


def parse_fix(items: list[str]) -> dict[str, Any]:
    out = {}
    for it in items or []:
        if "=" not in it:
            raise UsageError(f"--fix {it!r} is not NAME=VALUE")
        k, v = it.split("=", 1)
        out[k] = _yaml_arg("--fix", it, v)
    return out


def _yaml_arg(option: str, item: str, text: str):
    import yaml
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise UsageError(f"{option} {item!r}: {text!r} is not a valid value ({str(e).splitlines()[0]})") from None


def parse_narrow(items: list[str]) -> dict[str, Any]:
    out = {}
    for it in items or []:
        if "=" not in it:
            raise UsageError(f"--narrow {it!r} is not NAME=LOW:HIGH or NAME=a,b")
        k, v = it.split("=", 1)
        if ":" in v:
            lo, hi = (_yaml_arg("--narrow", it, x) for x in v.split(":", 1))
            if not (isinstance(lo, (int, float)) and isinstance(hi, (int, float)) and lo < hi):
                raise UsageError(f"--narrow {it!r}: need numeric LOW < HIGH")
            out[k] = (lo, hi)
        else:
            out[k] = [_yaml_arg("--narrow", it, x) for x in v.split(",")]
    return out


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
    import optuna
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise UsageError(f"unknown pruner {name!r} (median, hyperband, none)")


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

        def report(epoch: int, metrics: dict):
            if metric in metrics:
                value = metrics[metric]
                best["value"] = max(best["value"], value)
                trial.report(value, epoch)
                if trial.should_prune():
                    raise optuna.TrialPruned(f"pruned at epoch {epoch + 1}")

        def started(run_id: str):
            trial.set_user_attr("mlflow_run_id", run_id)

        res = run_experiment(cfg, parent_run_id=parent_run_id, evaluate_test=False, on_epoch_end=report,
                             on_run_start=started, show_progress=False, discard_checkpoints=True,
                             tags={"optuna.study": trial.study.study_name, "optuna.trial": str(trial.number)})
        value = res.best_val_dice if metric == "val_dice" else best["value"]
        if not math.isfinite(value):
            raise optuna.TrialPruned(f"non-finite {metric}")
        return value

    return objective


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
    from tqdm.auto import tqdm
    study, label = open_study(study_name, storage_url, 2, meta, pruner, sampler=sampler)
    parent = ensure_parent_run(study, meta, label)
    fail_dead_local_trials(study)
    objective = objective_factory(base_overrides, meta, fixed, narrowed, parent)
    tracker_cb = MlflowTrialTracker(parent)
    done = failures = 0
    bar = tqdm(total=n_trials, initial=min(count_finished(study), n_trials), desc=f"study {study_name}",
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
        bar.n = min(count_finished(study), n_trials)
        bar.refresh()
    bar.close()
    return done


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
    return text if isinstance(e, BenchError) else f"{type(e).__name__}: {text}"


def tune(args) -> None:
    from benchmark.run.run_args import resolve_config
    cfg = resolve_config(args)
    meta = {"arch": cfg.model.arch, "loss": cfg.loss.name, "preset": cfg.preset}
    if args.trials < 1:
        raise UsageError("--trials must be >= 1")
    if args.workers < 1:
        raise UsageError("--workers must be >= 1")
    if args.max_failures < 1:
        raise UsageError("--max-failures must be >= 1")
    fixed, narrowed = parse_fix(args.fix), parse_narrow(args.narrow)
    study, label = open_study(args.study, args.storage, args.workers, meta, args.pruner)
    parent = ensure_parent_run(study, meta, label)
    print(f"study {args.study} in {label}; MLflow parent run {parent}", file=sys.stderr)
    if args.workers == 1:
        try:
            run_worker(args.study, args.storage, args.trials, meta, args.overrides, fixed, narrowed, args.pruner,
                       show_progress=not args.no_progress, max_failures=args.max_failures)
        except BenchError:
            close_parent_run(parent)  # the study stays resumable; its parent run must not read RUNNING
            raise
    else:
        cmd = [sys.executable, "-m", "benchmark.cli.main", "tune", "--arch", meta["arch"], "--loss", meta["loss"],
               "--preset", meta["preset"], "--trials", str(args.trials), "--study", args.study,
               "--pruner", args.pruner, "--workers", "1", "--no-progress", "--max-failures", str(args.max_failures),
               *args.overrides]
        if args.storage:
            cmd += ["--storage", args.storage]
        for f in args.fix or []:
            cmd += ["--fix", f]
        for n in args.narrow or []:
            cmd += ["--narrow", n]
        procs = [subprocess.Popen(cmd) for _ in range(args.workers)]
        codes = [p.wait() for p in procs]
        if all(codes):
            raise TrainingError(f"every worker of study {args.study} stopped (exit codes {codes}; their errors are "
                                f"above); the study stays usable, rerun to complete it")
        if any(codes):
            print(f"warning: worker exit codes {codes}; the study stays usable, rerun to complete it", file=sys.stderr)
    study, _ = open_study(args.study, args.storage, 1, None, args.pruner, create=False)
    close_parent_run(parent)
    print_summary(study)


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


# ---------------------------------------------------------------------------------------------
# report and reuse
# ---------------------------------------------------------------------------------------------
def report(args) -> None:
    import optuna
    from benchmark.core.tracking import Tracker
    study, label = open_study(args.report, args.storage, 1, None, "median", create=False)
    print_summary(study)
    completed = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not completed:
        raise UsageError(f"study {args.report!r} has no completed trial to report on")
    importances = {}
    if len(completed) >= 2:
        with contextlib.suppress(Exception):
            importances = optuna.importance.get_param_importances(study)
    if importances:
        print("parameter importances:")
        for k, v in importances.items():
            print(f"  {k:32s} {v:.3f}")
    parent = study.user_attrs.get("mlflow_parent_run_id")
    if not parent:
        return
    from benchmark.core.tracking import client, load_settings
    settings = load_settings()
    cl = client(settings)
    try:
        cl.get_run(parent)
    except Exception:  # noqa: BLE001 - MLflow raises its own exception types
        # e.g. a study imported from a run export: its parent run stayed on the exporting machine
        print(f"note: the study's MLflow parent run {parent} is not in {settings.tracking_uri}; "
              f"plots not logged", file=sys.stderr)
        return
    t = Tracker(cl, parent, settings)
    from optuna.visualization.matplotlib import (plot_optimization_history, plot_parallel_coordinate,
                                                 plot_param_importances)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    # Optuna's plots set the global style (ggplot); the context gives the process its own back
    with matplotlib.rc_context(), tempfile.TemporaryDirectory() as d:
        plots = [("optimization_history.png", plot_optimization_history)]
        if importances:
            plots.append(("param_importances.png", plot_param_importances))
        plots.append(("parallel_coordinate.png", plot_parallel_coordinate))
        for name, fn in plots:
            try:
                ax = fn(study)
                fig = (ax.flat[0] if hasattr(ax, "flat") else ax).figure
                fig.set_size_inches(9, 5)
                fig.tight_layout()
                fig.savefig(Path(d) / name, dpi=100)
                plt.close(fig)
                t.log_artifact(Path(d) / name, "optuna")
            except Exception as e:  # noqa: BLE001 - one plot failing must not hide the others
                print(f"warning: {name} not drawn: {e}", file=sys.stderr)
        b = study.best_trial
        t.log_metrics({"best_value": b.value, "n_trials": len(study.trials)})
        t.set_tags({"best_trial": b.number, "best_run_id": b.user_attrs.get("mlflow_run_id", "")})
        import json
        t.log_text(json.dumps({"best_trial": b.number, "value": b.value, "params": b.params,
                               "importances": importances}, indent=2), "optuna/best.json")
    print(f"plots logged to MLflow parent run {parent}")


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


# ---------------------------------------------------------------------------------------------
# exact replay
# ---------------------------------------------------------------------------------------------
#: trial user attribute holding the exact ``key=value`` list the trial's run was built from
OVERRIDES_ATTR = "overrides"


def trial_run_overrides(trial, meta: dict, base_overrides: list[str]) -> list[str]:
    """The overrides a trial trains with: its suggestions, then the study's fixed overrides
    (which win, as they come last)."""
    return suggest_overrides(trial, meta["arch"], meta["loss"], meta["preset"],
                             loss_space=meta.get("loss_space", True)) + list(base_overrides)


def config_from_overrides(meta: dict, overrides: list[str]):
    """The RunConfig a trial (or its replay) trains: preset + arch + loss + overrides."""
    from benchmark.run.config import build_config
    return build_config(meta["preset"], list(overrides), **{"model.arch": meta["arch"], "loss.name": meta["loss"]})


def replay_overrides(trial, meta: dict) -> list[str]:
    """The overrides that rebuild ``trial``'s own config exactly.

    Trials record their list (``OVERRIDES_ATTR``). For trials from before that record, the
    search space is re-run on the stored parameter values (``optuna.trial.FixedTrial``), so
    derived values (unetr's width preset -> hidden_size and num_heads, Tversky's alpha = 1 -
    beta) come out as they did in the trial; the study's own fixed overrides are then not known
    and must be given again."""
    import optuna
    stored = trial.user_attrs.get(OVERRIDES_ATTR)
    if stored is not None:
        return list(stored)
    fixed = {k[len("fixed."):]: v for k, v in trial.user_attrs.items() if k.startswith("fixed.")}
    params = {k: v for k, v in trial.params.items() if k not in fixed}
    ct = ConstrainedTrial(optuna.trial.FixedTrial(params, trial.number), fixed, {})
    return suggest_overrides(ct, meta["arch"], meta["loss"], meta["preset"], loss_space=meta.get("loss_space", True))


# ---------------------------------------------------------------------------------------------
def register(sub) -> None:
    from benchmark.run.run_args import add_config_arguments
    p = sub.add_parser("tune", help="Optuna study over an architecture's search space (validation split only)")
    add_config_arguments(p)
    p.add_argument("--trials", type=int, default=20, help="finished (complete or pruned) trials the study should hold")
    p.add_argument("--study", help="study name (rerun the same command to resume it)")
    p.add_argument("--storage", help="Optuna storage URL or journal path (default: runs/optuna/journal.log)")
    p.add_argument("--workers", type=int, default=1, help="worker processes on this machine")
    p.add_argument("--pruner", default="median", choices=["median", "hyperband", "none"])
    p.add_argument("--fix", action="append", metavar="NAME=VALUE", help="pin a search parameter")
    p.add_argument("--narrow", action="append", metavar="NAME=LOW:HIGH", help="shrink a search range")
    p.add_argument("--max-failures", type=int, default=DEFAULT_MAX_FAILURES, metavar="N",
                   help=f"stop a worker after N trials in a row failed (default {DEFAULT_MAX_FAILURES})")
    p.add_argument("--report", metavar="STUDY", help="print and log the study's best trial, importances, plots")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_dispatch)


def _dispatch(args):
    if args.report:
        return report(args)
    if not args.study:
        raise UsageError("bench tune needs --study NAME (or --report STUDY)")
    if not args.arch:
        raise UsageError("bench tune needs --arch NAME (see `bench archs`)")
    return tune(args)
