"""Running a protocol: its studies (here, or one cluster task each) and then its cells, stage by
stage, in the order the package docstring gives; restartable, and bounded by ``--hours``."""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from benchmark.campaigns.protocol.budget import TimeLimit
from benchmark.campaigns.protocol.plan import (StudyState, default_cells, final_cells, held_size, loss_cells,
                                               loss_study_archs, study_meta, study_state, tuning_overrides,
                                               waiting_for_search)
from benchmark.campaigns.protocol.controls import (second_final_cells, second_sampler_archs, shared_cells,
                                                   swap_cells)
from benchmark.campaigns.protocol.rescore import choose, rescore_cells
from benchmark.campaigns.protocol.spec import BEST, LoadedProtocol, load_protocol
from benchmark.campaigns.protocol.status import runs_on_other_data
from benchmark.core.errors import UsageError


@dataclass
class ProtocolResult:
    studies: dict = field(default_factory=dict)
    suites: list = field(default_factory=list)    # (stage, SuiteResult)
    stopped: str = ""                             # why it stopped at its time limit ("" if it did not)
    elsewhere: list = field(default_factory=list)  # studies and runs left to another live process


def run_protocol(path: str | Path, experiment: Optional[str] = None, storage: Optional[str] = None,
                 show_progress: bool = True, executor=None, hours: Optional[float] = None,
                 pause_runs: bool = False) -> ProtocolResult:
    """Run or continue every stage; see the package docstring. ``hours``: the time limit
    (``TimeLimit``; this process only, not with ``executor``); ``pause_runs``: with ``hours``,
    pause the run under way at the limit instead of not starting it (``TimeLimit.pause_runs``).

    ``executor`` (a ``benchmark.campaigns.cluster.DaskExecutor``, ``bench protocol run --scheduler``): the
    unfinished studies run as one cluster task each, side by side, then every final cell, the
    defaults and the loss study are submitted as cells, exactly as ``bench suite --scheduler``
    does. Without it, each architecture is tuned and then trained in turn in this process."""
    lp = load_protocol(path)
    run = _ProtocolRun(lp, experiment, storage, show_progress, executor,
                       _time_limit(lp, experiment, executor, hours, pause_runs))
    waiting = _announce_what_waits(lp, experiment, executor)
    ready = [a for a in lp.spec.architectures if a not in waiting]
    defaults = [c for c in default_cells(lp) if c.arch not in waiting]
    if executor is not None:
        run.tune_and_finals_on_cluster(ready)
    else:
        run.arch_by_arch(ready, defaults)
    if run.limit and run.limit.stopped:
        run.out.stopped = run.limit.stopped
        return run.out
    run.closing_stages(defaults)
    if not (run.limit and run.limit.stopped):
        run.control_stages()
    run.out.stopped = run.limit.stopped if run.limit else ""
    return run.out


def study_claim(study_name: str):
    """The host lock a process holds while it tunes the study (``_ProtocolRun.tune_unless_elsewhere``)."""
    from benchmark.core.liveness import HostLock
    from benchmark.core.paths import runs_dir
    return HostLock(runs_dir() / "protocol-studies" / f"{study_name}.lock")


WAIT_SECONDS = 300.0     # how long a --wait worker sleeps before it looks again


def run_protocol_waiting(path: str | Path, hours: float, poll_seconds: float = WAIT_SECONDS, **kwargs) -> list:
    """``run_protocol`` again and again within ``hours`` while another process on this host holds
    part of what is left (a study it tunes, a run it trains), looking again every ``poll_seconds``:
    a second worker that would otherwise end as soon as it finds nothing to start (the last
    study is tuned by one process at a time) takes up what that work unlocks (the study's
    rescoring, its finals, the controls that wait for it) when it can. Ends when a pass leaves
    nothing to another process, stops at the time limit, or when less than one look is left.
    Returns every pass's ``ProtocolResult``; ``kwargs`` as ``run_protocol`` takes them."""
    deadline = time.monotonic() + hours * 3600
    passes = []
    while True:
        res = run_protocol(path, hours=max(1e-6, (deadline - time.monotonic()) / 3600), **kwargs)
        passes.append(res)
        if res.stopped or not res.elsewhere or _failed(res):
            return passes
        if deadline - time.monotonic() < poll_seconds:
            res.stopped = (f"another process still holds {listed(res.elsewhere)}, and less than "
                           f"{poll_seconds / 60:g} min is left to wait for it")
            return passes
        print(f"protocol: waiting for another process ({listed(res.elsewhere)}); looking again in "
              f"{poll_seconds / 60:g} min", file=sys.stderr, flush=True)
        _wait(poll_seconds)


def _wait(seconds: float) -> None:
    """The pause between two passes (one name, so a test can stand in for the other process)."""
    time.sleep(seconds)


def _failed(res: ProtocolResult) -> bool:
    return any(r.failed for _, r in res.suites)


def listed(items: list[str], most: int = 3) -> str:
    shown = ", ".join(items[:most])
    return shown + (f" and {len(items) - most} more" if len(items) > most else "")


def _time_limit(lp: LoadedProtocol, experiment: Optional[str], executor, hours: Optional[float],
                pause_runs: bool) -> Optional[TimeLimit]:
    """The ``--hours`` limit (None without one), its options checked."""
    if hours is not None and executor is not None:
        raise UsageError("--hours applies to a protocol run in this process, not on a cluster (--scheduler)")
    if hours is not None and hours <= 0:
        raise UsageError(f"--hours must be positive, got {hours:g}")
    if pause_runs and hours is None:
        raise UsageError("--pause-runs pauses runs at the --hours limit: give --hours too")
    return TimeLimit(lp, hours, pause_runs, experiment=experiment) if hours is not None else None


def _announce_what_waits(lp: LoadedProtocol, experiment: Optional[str], executor) -> dict[str, str]:
    """Say which architectures wait for their search (returned, with why) and, in this process,
    whether the store's runs of the protocol were made on other data."""
    waiting = waiting_for_search(lp)
    for arch, why in waiting.items():
        print(f"protocol: {arch} waits for its search and is skipped this time: {why}", file=sys.stderr)
    if executor is None:
        note = runs_on_other_data(lp, experiment)
        if note:
            print(f"protocol: {note}", file=sys.stderr)
    return waiting


@dataclass
class _ProtocolRun:
    """One ``run_protocol`` call: where its cells run, its time limit, and what it has done."""
    lp: LoadedProtocol
    experiment: Optional[str]
    storage: Optional[str]
    show_progress: bool
    executor: object
    limit: Optional[TimeLimit]
    out: ProtocolResult = field(default_factory=ProtocolResult)

    def stage(self, name: str, cells: list, desc: str) -> None:
        """Run ``cells`` as one stage of the result, started and paused by the time limit (if any)."""
        from benchmark.campaigns.suite import run_cells
        limit = self.limit
        r = run_cells(cells, desc, self.experiment, self.show_progress, executor=self.executor,
                      may_start=limit.cell if limit else None,
                      pause=limit.pause if limit and limit.pause_runs else None)
        self.out.suites.append((name, r))
        self.out.elsewhere += [label for label, _ in r.elsewhere]

    def rescore(self, st: StudyState) -> None:
        """A complete study's rescoring runs (``tuning.rescore``), then its chosen trial."""
        cells = rescore_cells(self.lp, st) if st.finished >= st.n_trials else []
        if cells:
            self.stage(f"rescore {st.name}", cells, f"rescore [{st.name}]")
        choose(self.lp, st, self.experiment)

    def tune_and_finals_on_cluster(self, ready: list[str]) -> None:
        _tune_on_cluster(self.lp, self.storage, self.executor, ready)
        states = {a: study_state(self.lp, a, self.storage) for a in ready}
        self.stage("rescore", [c for st in states.values() for c in rescore_cells(self.lp, st)], "rescore")
        finals = []
        for arch, st in states.items():
            choose(self.lp, st, self.experiment)
            self.out.studies[arch] = st
            finals += final_cells(self.lp, st)
        self.stage("final", finals, "final")

    def arch_by_arch(self, ready: list[str], defaults: list) -> None:
        """In this process: each architecture's study, then its final runs, its default runs and
        its named loss-study cells; 'best''s loss cells as soon as it is decided."""
        s = self.lp.spec
        best_pending = bool(s.loss_study) and BEST in s.loss_study.archs
        for i, arch in enumerate(ready):
            st = study_state(self.lp, arch, self.storage)
            if self.limit and self.limit.stopped:
                self.out.studies[arch] = st
                continue
            if st.finished < st.n_trials and not (self.limit and self.limit.trial(arch)):
                self.tune_unless_elsewhere(arch)
                st = study_state(self.lp, arch, self.storage)
            self.out.studies[arch] = st
            self.rescore(st)
            self.trained_arch(i, st, defaults)
            if best_pending:
                best_pending = not self.best_loss_study()

    def tune_unless_elsewhere(self, arch: str, offset: int = 0) -> bool:
        """Tune the study here unless another process on this host is tuning it: two `bench
        protocol run` processes (one thread each) then share a protocol's studies, each study
        still tuned by one process at a time, trial after trial, as the sampler's seed assumes.
        The other process's study is left for it; this one goes on with the next architecture
        (a study it finds incomplete waits for the next run, as under a time limit). Cells are
        shared as `bench suite` workers share them. False when the study was left."""
        name = self.lp.study_name(arch, offset)
        claim = study_claim(name)
        if not claim.try_acquire():
            print(f"protocol: study {name} is being tuned by another process on this host; "
                  f"going on without it", file=sys.stderr)
            self.out.elsewhere.append(f"study {name}")
            return False
        try:
            tune_arch(self.lp, arch, self.storage, self.show_progress, self.limit, offset)
        finally:
            claim.release()
        return True

    def trained_arch(self, i: int, st: StudyState, defaults: list) -> None:
        """The runs of the ``i``-th architecture once its study is as far as it gets this time."""
        s, arch = self.lp.spec, st.arch
        cells = final_cells(self.lp, st)
        if cells:
            self.stage(f"final {arch}", cells, f"final [{arch}]")
        # the architecture's default-settings runs (and, with the first, the reference runs)
        # right after its tuned ones: a stopped protocol leaves tuned-vs-default pairs, not
        # a tuned column waiting a day for its baseline. The defaults stage below finds them
        # done and trains only what is left (every default cell on the cluster path).
        mine = [c for c in defaults if c.arch == arch or (c.reference and i == 0)]
        if mine:
            self.stage(f"defaults {arch}", mine, f"defaults [{arch}]")
        # an architecture the loss study names (not 'best', which waits for its candidates) has
        # its loss cells next, for the same reason; the loss stage below skips them as done
        if s.loss_study and arch in s.loss_study.archs and st.chosen is not None:
            self.stage(f"loss study {arch}", loss_cells(self.lp, {arch: st}, [arch]), f"loss study [{arch}]")

    def best_loss_study(self) -> bool:
        """'best' is decided once every candidate for it has been tuned: its loss cells run
        then, before the architectures that cannot be chosen (SwinUNETR on two cores). True
        once it is decided."""
        chosen = loss_study_archs(self.lp, self.out.studies)
        if chosen is None:
            return False
        best = [a for a in chosen if a not in self.lp.spec.loss_study.archs]
        if best:
            self.stage(f"loss study {best[0]}", loss_cells(self.lp, self.out.studies, best),
                       f"loss study [{BEST}: {best[0]}]")
        return True

    def control_stages(self) -> None:
        """v7's controls once every first study has its chosen trial: the second-sampler studies
        (each: study, rescoring, finals), then the shared-recipe and the recipe-swap runs."""
        lp, first = self.lp, dict(self.out.studies)   # the first studies, by architecture
        archs = second_sampler_archs(lp, first)
        if archs is None:
            print("protocol: the second-sampler studies, shared-recipe and swap runs wait for every study's "
                  "chosen trial", file=sys.stderr)
            return
        offset = lp.spec.tuning.second_sampler.seed if lp.spec.tuning.second_sampler else 0
        for arch in archs:
            if self.limit and self.limit.stopped:
                return
            st = study_state(lp, arch, self.storage, offset)
            if st.finished < st.n_trials and not (self.limit and self.limit.trial(arch)):
                self.tune_unless_elsewhere(arch, offset)
                st = study_state(lp, arch, self.storage, offset)
            self.out.studies[st.name] = st
            self.rescore(st)
            cells = second_final_cells(lp, st)
            if cells:
                self.stage(f"final {st.name}", cells, f"final [{st.name}]")
        for name, cells in (("shared recipe", shared_cells(lp, first)), ("recipe swap", swap_cells(lp, first))):
            if cells:
                self.stage(name, cells, name)

    def closing_stages(self, defaults: list) -> None:
        """Every default cell and every loss-study cell (those already done are skipped)."""
        s = self.lp.spec
        if defaults:
            self.stage("defaults", defaults, f"defaults [{s.preset}]")
        archs = loss_study_archs(self.lp, self.out.studies)
        if archs is None:
            print(f"protocol: the loss study's '{BEST}' waits for every candidate's study to be complete",
                  file=sys.stderr)
            archs = [a for a in s.loss_study.archs if a != BEST]   # the named ones need only their own study
        if archs:
            done = {a: st for a, st in self.out.studies.items() if st.chosen is not None}
            self.stage("loss study", loss_cells(self.lp, done, [a for a in archs if a in done]), "loss study")


# ---------------------------------------------------------------------------------------------
# studies
# ---------------------------------------------------------------------------------------------
def tune_arch(lp: LoadedProtocol, arch: str, storage: Optional[str], show_progress: bool,
              limit: Optional[TimeLimit] = None, offset: int = 0) -> None:
    """Run (or resume) the architecture's study (``offset``: a second-sampler study) until it
    holds ``n_trials`` finished trials (or until the next trial would overrun ``limit``)."""
    from benchmark.core.tracking import Tracker, client, load_settings
    from benchmark.campaigns.search_space import NEVER_PRUNE_ATTR, RECIPE_ATTR, default_optimiser_params, default_recipe
    from benchmark.campaigns.tune import close_parent_run, ensure_parent_run, open_study, run_worker
    t = lp.spec.tuning
    meta = study_meta(lp, arch, offset)
    name = lp.study_name(arch, offset)
    study, _ = open_study(name, storage, 1, meta, t.pruner_name())
    if t.first_trial == "default_optimiser" and not study.get_trials(deepcopy=False):
        study.enqueue_trial(default_optimiser_params(arch, lp.spec.preset))
    if t.first_trial == "default_recipe" and not study.get_trials(deepcopy=False):
        params, exact = default_recipe(arch, lp.spec.preset, held_size(lp, arch))
        study.enqueue_trial(params, user_attrs={RECIPE_ATTR: exact, NEVER_PRUNE_ATTR: True})
    new_parent = "mlflow_parent_run_id" not in study.user_attrs
    parent = ensure_parent_run(study, {**meta, **lp.tags})
    if new_parent:
        settings = load_settings()
        Tracker(client(settings), parent, settings).log_artifact(lp.path, "protocol")
    run_worker(name, storage, t.n_trials, meta, tuning_overrides(lp), held_size(lp, arch), {}, t.pruner_name(),
               show_progress=show_progress, sampler=(t.sampler, t.sampler_seed + offset, t.startup_trials),
               may_start=(lambda: limit.trial(arch)) if limit else None)
    close_parent_run(parent)
    _tag_trial_runs(lp, name, storage)


def _tag_trial_runs(lp: LoadedProtocol, study_name: str, storage: Optional[str]) -> None:
    """Give the study's trial runs the protocol tags (their parent run holds the protocol file).
    Done after the study, so a trial run of an interrupted study gets them on the next run."""
    import optuna
    from benchmark.core.tracking import Tracker, client, load_settings
    from benchmark.core.optuna_storage import open_storage
    settings = load_settings()
    cl = client(settings)
    study = optuna.load_study(study_name=study_name, storage=open_storage(storage)[0])
    for t in study.get_trials(deepcopy=False):
        rid = t.user_attrs.get("mlflow_run_id")
        if rid and _in_store(cl, rid):
            Tracker(cl, rid, settings).set_tags({**lp.tags, "protocol.part": "tuning"})


def _in_store(cl, run_id: str) -> bool:
    """False for a trial imported with its study (``bench protocol export``): its MLflow run
    stayed in the store it was tuned in, and tagging it here would only fill the offline buffer."""
    try:
        cl.get_run(run_id)
        return True
    except Exception:  # noqa: BLE001 - MLflow raises its own types for an unknown id
        return False


@dataclass
class _TuneJob:
    """One architecture's study, as shipped to a cluster worker (with the driver's tracking URI,
    checked there, as for cells: a worker cannot be told to switch stores)."""
    protocol_path: str
    arch: str
    storage: Optional[str]
    tracking_uri: str


def _tune_job(job: _TuneJob) -> str:
    from benchmark.core.errors import BenchError
    from benchmark.core.tracking import load_settings
    settings = load_settings()
    if settings.tracking_uri != job.tracking_uri:
        raise BenchError(f"this worker tracks to {settings.tracking_uri} but the protocol to {job.tracking_uri}: "
                         f"start the workers with LIDC_BENCH_TRACKING_URI={job.tracking_uri}")
    tune_arch(load_protocol(job.protocol_path), job.arch, job.storage, show_progress=False)
    return job.arch


def _tune_on_cluster(lp: LoadedProtocol, storage: Optional[str], executor, archs: list[str]) -> None:
    """Every unfinished study as one task (a study's trials stay sequential: TPE learns from the
    ones before). The studies' journal must be on a disk every worker reads, as the checkpoints
    are (a shared ``LIDC_BENCH_HOME``), or ``--storage`` an RDB URL. A study whose task fails is
    reported and left unfinished: the next run of the command resumes it."""
    from benchmark.core.tracking import client, experiment_id, load_settings
    todo = [a for a in archs if study_state(lp, a, storage).finished < lp.spec.tuning.n_trials]
    if not todo:
        return
    settings = load_settings()
    experiment_id(client(settings), settings, None)   # the store, created once before any worker uses it
    jobs = [_TuneJob(str(lp.path.resolve()), a, storage, settings.tracking_uri) for a in todo]
    for job, result in executor.map_unordered(_tune_job, jobs, [f"tune-{a}" for a in todo]):
        if isinstance(result, BaseException):
            why = str(result).splitlines()[0] if str(result) else type(result).__name__
            print(f"protocol: tuning {job.arch} failed on the cluster: {why}", file=sys.stderr)

