"""``bench suite``: the benchmark matrix, restartable.

    bench suite --preset cpu [--archs unet3d transfuse ...] [--losses dice_bce ...] [--seeds 3]
                [key=value ...] [ARCH:key=value ...]

Runs every (architecture, loss, seed) cell (default: every registered architecture, loss
``dice_bce``, seeds 0, 1, 2) through the normal engine (``benchmark.run.train.run_experiment``),
plus the reference runs (threshold baseline, inter-reader agreement and, on a phantom, the
phantom ceiling) once per data configuration. Overrides apply to every cell; ``ARCH:key=value``
applies to one architecture only (e.g. ``unet3d:model.kwargs.base_channels=8``).

Restartable: a cell is skipped when the MLflow experiment already holds a FINISHED,
test-evaluated run with the same ``config.fingerprint`` on the same data
(``data.content_hash``); a cell whose run was interrupted (status KILLED, checkpoint on disk)
is resumed from its last epoch instead of started again. Reference runs are matched by
``reference.fingerprint`` (preset, data config, NSD tolerance). So the suite can be stopped
with Ctrl-C at any point and started again with the same command.

One progress bar covers the whole matrix (the runs' own bars are off). A failing cell is
reported and the suite goes on; the command exits non-zero at the end if any cell failed.

``--scheduler`` hands the cells to a Dask cluster instead (``benchmark.campaigns.cluster``): each worker
calls ``run_cell`` for its cell, the one function that claims, skips, resumes or runs a cell,
here or there.
"""
from __future__ import annotations

import contextlib
import os
import re
import sys
import time
import traceback
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Optional

import yaml
from tqdm.auto import tqdm   # tqdm.write: a message that does not break a bar on a terminal

from benchmark.run.config import RunConfig, build_config, ran_full_budget
from benchmark.data.datasets import get_dataset
from benchmark.core.progress import progress_bar
from benchmark.core.errors import BenchError, UsageError
from benchmark.core.liveness import HostLock, owner_is_dead
from benchmark.core.paths import runs_dir

if TYPE_CHECKING:
    from benchmark.run.train import PauseCheck

__all__ = ["Cell", "CellOutcome", "SuiteResult", "SuiteFailed", "plan_cells", "run_cell", "run_cells", "run_suite"]

DEFAULT_LOSSES = ("dice_bce",)
_ARCH_OVERRIDE = re.compile(r"^([A-Za-z0-9_\-]+):([^=]+=.*)$")


class SuiteFailed(BenchError):
    exit_code = 4


@dataclass
class Cell:
    """One run of the matrix (or a reference run when ``reference`` is set)."""
    arch: str
    loss: str
    seed: Optional[int]
    cfg: RunConfig
    reference: Optional[str] = None
    #: extra MLflow tags and (file, artifact folder) pairs for this cell's run (``bench protocol``)
    tags: dict = field(default_factory=dict)
    artifacts: list = field(default_factory=list)
    #: False: a validation-only run, never scored on the test split (a protocol's rescoring runs,
    #: which choose a configuration and so must not see the test split); done once it finished
    evaluate_test: bool = True
    #: the cell's name in progress and failure lines when arch/loss/seed do not tell cells apart
    #: (the random architectures of one search space)
    title: Optional[str] = None

    @property
    def label(self) -> str:
        if self.reference:
            return self.reference
        return self.title or f"{self.arch}/{self.loss}/s{self.seed}"


@dataclass
class CellOutcome:
    """What ``run_cell`` did with one cell. ``kind``: ran | resumed | skipped | failed |
    elsewhere (another live process holds it) | deferred (not started: it would not end within
    the time limit) | paused (stopped after an epoch at the time limit, KILLED and resumable);
    ``detail``: the run id, or the failure message or the reason."""
    kind: str
    label: str
    detail: str = ""


@dataclass
class SuiteResult:
    ran: list[tuple[str, str]] = field(default_factory=list)        # (cell label, run id)
    resumed: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)     # (cell label, message)
    elsewhere: list[tuple[str, str]] = field(default_factory=list)  # being trained by another live process
    deferred: list[tuple[str, str]] = field(default_factory=list)   # (cell label, why): left for the next run
    paused: list[tuple[str, str]] = field(default_factory=list)     # (cell label, run id): resumed next time
    planned: list[Cell] = field(default_factory=list)
    seconds: float = 0.0

    def record(self, outcome: CellOutcome) -> None:
        getattr(self, outcome.kind).append((outcome.label, outcome.detail))


def split_overrides(overrides: list[str]) -> tuple[list[str], dict[str, list[str]]]:
    """Separate global ``key=value`` overrides from ``ARCH:key=value`` ones."""
    common, per_arch = [], {}
    for item in overrides:
        m = _ARCH_OVERRIDE.match(item)
        if m:
            per_arch.setdefault(m.group(1), []).append(m.group(2))
        else:
            common.append(item)
    return common, per_arch


def plan_cells(preset: str, archs: Optional[list[str]] = None, losses: Optional[list[str]] = None,
               seeds: int = 3, overrides: Optional[list[str]] = None, references: bool = True) -> list[Cell]:
    """Every cell's resolved config, built before anything runs (so a typo fails at once)."""
    from architectures import architecture_entry, list_architectures

    from benchmark.losses import loss_entry
    if seeds < 1:
        raise UsageError("--seeds must be at least 1")
    archs = list(archs) if archs else list_architectures()
    losses = list(losses) if losses else list(DEFAULT_LOSSES)
    archs = list(dict.fromkeys(architecture_entry(a).name for a in archs))    # aliases -> canonical names
    losses = list(dict.fromkeys(loss_entry(lo).name for lo in losses))
    common, per_arch = split_overrides(list(overrides or []))
    per_arch = {architecture_entry(a).name: v for a, v in per_arch.items()}
    stray = sorted(set(per_arch) - set(archs))
    if stray:
        raise UsageError(f"per-architecture override for {', '.join(stray)}, which is not in this suite "
                         f"({', '.join(archs)})")
    cells, seen = [], set()
    # seed outermost: a suite stopped part-way has every architecture at the lowest seeds,
    # which makes a usable (if less certain) leaderboard, instead of all seeds of a few archs
    for seed in range(seeds):
        for arch in archs:
            for loss in losses:
                cfg = build_config(preset, common + per_arch.get(arch, []),
                                   **{"model.arch": arch, "loss.name": loss, "train.seed": seed})
                fp = cfg.fingerprint()
                if fp not in seen:
                    seen.add(fp)
                    cells.append(Cell(arch, loss, seed, cfg))
    return (reference_cells(cells) + cells) if references else cells


def reference_cells(cells: list[Cell]) -> list[Cell]:
    """The reference runs (threshold baseline, inter-reader agreement and, on a phantom, its
    ceiling) that put the cells' scores in proportion: one set per distinct data config (per-arch
    overrides may change it). They go first: quick, and they check the data path before hours of
    training."""
    from benchmark.run.reference_rows import INTER_READER, PHANTOM_CEILING, reference_fingerprint
    refs, done = [], set()
    for c in cells:
        key = reference_fingerprint(c.cfg)
        if key not in done:
            done.add(key)
            refs += [Cell("threshold_baseline", "none", None, c.cfg, "threshold_baseline"),
                     Cell(INTER_READER, "none", None, c.cfg, INTER_READER)]
            if get_dataset(c.cfg.data.dataset).has_truth(c.cfg.data.source):   # only a phantom knows the true shape
                refs.append(Cell(PHANTOM_CEILING, "none", None, c.cfg, PHANTOM_CEILING))
    return refs


@dataclass
class StoreView:
    """What the MLflow store already holds for one data config (see ``_existing_runs``)."""
    finished: dict = field(default_factory=dict)   # config fingerprint -> run id
    #: config fingerprint -> run id of finished validation-only runs (done only for such cells)
    validated: dict = field(default_factory=dict)
    refs: dict = field(default_factory=dict)       # (reference arch, reference fingerprint) -> run id
    killed: dict = field(default_factory=dict)     # budget fingerprint -> [(interrupted run id, patience)]
    live: dict = field(default_factory=dict)       # budget fingerprint -> run held by a live process here
    #: budget fingerprint -> [(run id, patience)] of finished runs that early stopping never cut short
    complete: dict = field(default_factory=dict)

    def done_for(self, c: Cell) -> Optional[str]:
        from benchmark.run.reference_rows import reference_fingerprint
        if c.reference:
            return self.refs.get((c.arch, reference_fingerprint(c.cfg)))
        if c.cfg.fingerprint() in self.finished:
            return self.finished[c.cfg.fingerprint()]
        if not c.evaluate_test and c.cfg.fingerprint() in self.validated:
            return self.validated[c.cfg.fingerprint()]
        # A run that early stopping never cut short is the same experiment under any larger
        # patience (training is deterministic per seed and epoch), so it counts as done.
        for rid, patience in self.complete.get(c.cfg.budget_fingerprint(), []):
            if patience <= c.cfg.train.early_stopping_patience:
                return rid
        return None

    # Interrupted and in-progress runs are matched on the budget fingerprint too, so a worker
    # started after a change of patience neither trains a cell twice nor throws away progress.
    def held_elsewhere(self, c: Cell) -> Optional[str]:
        return None if c.reference else self.live.get(c.cfg.budget_fingerprint())

    def interrupted(self, c: Cell) -> Optional[str]:
        for rid, patience in reversed(self.killed.get(c.cfg.budget_fingerprint(), [])):  # latest first
            if patience <= c.cfg.train.early_stopping_patience:
                return rid
        return None

    def settled(self, c: Cell) -> Optional[CellOutcome]:
        """What becomes of ``c`` without this process: ``skipped`` (done) or ``elsewhere`` (a
        live process is training it); None when it is this process's to resume or start."""
        done = self.done_for(c)
        if done:
            return CellOutcome("skipped", c.label, done)
        holder = self.held_elsewhere(c)
        return CellOutcome("elsewhere", c.label, holder) if holder else None

    def resumable(self, c: Cell) -> Optional[str]:
        """The interrupted run that starting ``c`` here would resume: one with its checkpoint
        on this machine (without it, the cell starts afresh)."""
        rid = self.interrupted(c)
        return rid if rid and has_checkpoint(rid) else None


def has_checkpoint(run_id: str) -> bool:
    """Whether a run can be resumed here: its last checkpoint is in this machine's runs folder."""
    from benchmark.core.paths import checkpoints_dir
    return (checkpoints_dir(run_id) / "last.pt").exists()


def _budget_of(cl, run) -> Optional[tuple[str, int]]:
    """(budget fingerprint, early-stopping patience) of a model run, or None when unknown.
    The fingerprint is the run's tag or, for runs logged before the tag existed, computed
    from its logged config.yaml and written back as the tag."""
    patience = run.data.params.get("train.early_stopping_patience")
    if patience is None:
        return None
    bfp = run.data.tags.get("config.budget_fingerprint") or _budget_fingerprint_from_config(cl, run)
    return (bfp, int(patience)) if bfp else None


def _budget_fingerprint_from_config(cl, run) -> Optional[str]:
    import tempfile
    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = cl.download_artifacts(run.info.run_id, "config.yaml", tmp)
            with open(path) as f:
                cfg = RunConfig.model_validate(yaml.safe_load(f))
    except Exception:  # noqa: BLE001 - no usable config: the run just cannot stand in for another
        return None
    fp = cfg.budget_fingerprint()
    with contextlib.suppress(Exception):
        cl.set_tag(run.info.run_id, "config.budget_fingerprint", fp)
    return fp


OwnerCheck = Callable[[dict], Optional[bool]]   # a run's tags -> owner dead? (None: cannot tell)


def _cell_filters(c: Cell) -> list[str]:
    """MLflow filters that together find every run able to settle or resume ``c`` (see
    ``StoreView``): a reference row by its reference fingerprint; a model cell by its config
    fingerprint (finished, validated) and by its budget fingerprint (complete under another
    patience, interrupted, live). Runs logged before the budget tag existed are found by the
    first filter when they are this very config; the full scan of ``run_cells`` gives them the
    tag otherwise."""
    from benchmark.run.reference_rows import reference_fingerprint
    if c.reference:
        return [f"tags.`reference.fingerprint` = '{reference_fingerprint(c.cfg)}'"]
    return [f"tags.`config.fingerprint` = '{c.cfg.fingerprint()}'",
            f"tags.`config.budget_fingerprint` = '{c.cfg.budget_fingerprint()}'"]


def _existing_runs(cl, experiment_id: Optional[str], content_hash: Optional[str],
                   is_dead: OwnerCheck = owner_is_dead, only: Optional[Cell] = None) -> StoreView:
    """The runs of this experiment on these data (every run when ``content_hash`` is None),
    sorted into a ``StoreView``; with ``only``, just the runs that bear on that cell (a cell's
    look at the store just before it starts: the whole experiment, read again for each of a
    protocol's hundreds of cells, grew with every run).

    Interrupted means KILLED (Ctrl-C, SIGTERM) or still RUNNING although the process that ran
    it has exited (SIGKILL, OOM, reboot), as ``is_dead`` judges from the run's owner tags (by
    default: by pid, on this host only; on a cluster also by asking the scheduler). A RUNNING
    run whose process is alive is being trained by another suite: it counts as in progress and
    is not started again."""
    view = StoreView()
    if experiment_id is None:
        return view
    data = [f"tags.`data.content_hash` = '{content_hash}'"] if content_hash else []
    found = {}                  # run id -> run: a run two filters match is sorted in once
    for extra in (_cell_filters(only) if only is not None else [None]):
        for run in _search_all(cl, experiment_id, " and ".join(data + ([extra] if extra else []))):
            found[run.info.run_id] = run
    # oldest first, as one search would give them: the latest interrupted run is the one resumed
    for run in sorted(found.values(), key=lambda r: (r.info.start_time or 0, r.info.run_id)):
        _sort_into(view, cl, run, is_dead)
    return view


def _search_all(cl, experiment_id: str, where: str):
    token = None
    while True:
        page = cl.search_runs([experiment_id], where, max_results=1000,
                              page_token=token, order_by=["attributes.start_time ASC"])
        yield from page
        token = page.token
        if not token:
            return


def _sort_into(view: StoreView, cl, run, is_dead: OwnerCheck) -> None:
    """One run into its place in ``view`` (see ``StoreView``), or nowhere."""
    tags, status, rid = run.data.tags, run.info.status, run.info.run_id
    fp = tags.get("config.fingerprint")
    if status == "FINISHED" and tags.get("reference.fingerprint") and tags.get("arch"):
        view.refs[(tags["arch"], tags["reference.fingerprint"])] = rid
        return
    if not fp or tags.get("reference"):
        return
    if status == "FINISHED" and "test_dice" in run.data.metrics:
        view.finished[fp] = rid
        cut_short = not ran_full_budget(tags.get("stopped_early"), run.data.metrics.get("epochs_completed"),
                                        run.data.params.get("train.epochs"))
        budget = None if cut_short else _budget_of(cl, run)
        if budget:
            view.complete.setdefault(budget[0], []).append((rid, budget[1]))
    elif status == "FINISHED" and tags.get("evaluation") == "validation_only":
        view.validated[fp] = rid
    elif status in ("KILLED", "RUNNING"):
        dead = status == "KILLED" or is_dead(tags)   # None: RUNNING elsewhere, unknown
        budget = _budget_of(cl, run) if dead is not None else None
        if budget and dead:
            view.killed.setdefault(budget[0], []).append((rid, budget[1]))
        elif budget:
            view.live[budget[0]] = rid


def run_suite(preset: str, archs: Optional[list[str]] = None, losses: Optional[list[str]] = None, seeds: int = 3,
              overrides: Optional[list[str]] = None, experiment: Optional[str] = None, references: bool = True,
              show_progress: bool = True, dry_run: bool = False, executor=None) -> SuiteResult:
    """Run (or resume, or skip) every cell; see the module docstring. Never raises for a
    failing cell: failures are collected in the result.

    ``executor``: run the cells elsewhere instead of in this process (see ``run_cells``)."""
    cells = plan_cells(preset, archs, losses, seeds, overrides, references)
    return run_cells(cells, f"suite [{preset}]", experiment, show_progress, dry_run, executor)


def run_cells(cells: list[Cell], desc: str, experiment: Optional[str] = None, show_progress: bool = True,
              dry_run: bool = False, executor=None,
              may_start: Optional[Callable[[Cell, Optional[str]], Optional[str]]] = None,
              pause: Optional[Callable[[Cell], PauseCheck]] = None) -> SuiteResult:
    """Skip, run or resume each planned cell in order (what ``bench suite`` and ``bench protocol``
    share). Never raises for a failing cell: failures are collected in the result.

    ``may_start``: asked before a cell that is not done yet is started, with the interrupted run
    it would resume (or None); a reason (not None) leaves it ``deferred`` (``bench protocol run
    --hours``). ``pause``: gives the ``PauseCheck`` a started cell's run asks after each epoch
    (``--hours --pause-runs``); a paused cell is ``paused``, and the cells after it are for
    ``may_start`` to refuse.

    ``dry_run``: decide, train nothing: each cell comes out ``skipped`` (done: its run id),
    ``elsewhere`` (being trained by a live process: its run id), ``resumed`` (its interrupted
    run, to be resumed) or ``ran`` (to start).

    ``executor``: an object with ``run_cells(cells, experiment)`` yielding ``(cell, CellOutcome)``
    as cells end (see ``benchmark.campaigns.cluster.DaskExecutor``); the data are then loaded by the
    workers, not here."""
    from benchmark.data import load_crops
    from benchmark.data.store import built_data_hash
    from benchmark.core.tracking import client, load_settings
    t0 = time.perf_counter()
    result = SuiteResult(planned=cells)
    remote = executor is not None and not dry_run

    settings = load_settings()
    cl = client(settings)
    exp = cl.get_experiment_by_name(experiment or settings.experiment)
    exp_id = exp.experiment_id if exp is not None else None

    # Load each distinct data config once, before the bar starts: a first build of the crop
    # cache shows its own progress, and its content hash is what "same data" means. A dry run
    # (a status) builds nothing: it takes the hash of a cache already built, and without one
    # matches runs by their config fingerprint alone.
    stores, existing = {}, {}
    for c in cells if not remote else []:
        key = c.cfg.data.model_dump_json()
        if key in existing:
            continue
        if dry_run:
            existing[key] = _existing_runs(cl, exp_id, built_data_hash(c.cfg.data))
        else:
            stores[key] = load_crops(c.cfg.data, progress=show_progress)
            existing[key] = _existing_runs(cl, exp_id, stores[key].data_hash)

    bar = progress_bar(total=len(cells), desc=desc, unit="run", disable=not show_progress)

    def attempt(c: Cell) -> CellOutcome:
        key = c.cfg.data.model_dump_json()
        bar.set_postfix_str(c.label)
        view = existing[key]
        if dry_run:
            settled = view.settled(c)
            if settled:
                return settled
            resume = view.resumable(c)
            return CellOutcome("resumed", c.label, resume) if resume else CellOutcome("ran", c.label)
        if may_start is not None and not view.done_for(c):
            why = may_start(c, view.resumable(c))
            if why:
                return CellOutcome("deferred", c.label, why)
        # Claim the cell under a host-wide lock: other `bench suite` processes on this host may
        # have finished or started cells meanwhile (run_cell lets it go once the run names our pid).
        with HostLock(runs_dir() / "suite.lock") as claim:
            return run_cell(c, store=stores[key], claim=claim, experiment=experiment,
                            pause=pause(c) if pause is not None else None)

    def each(todo: list[Cell]):
        if remote:
            yield from executor.run_cells(todo, experiment)
        else:
            for c in todo:
                yield c, attempt(c)

    try:
        held_elsewhere = []
        for c, outcome in each(cells):
            if outcome.kind == "elsewhere":
                held_elsewhere.append(c)
                continue
            result.record(outcome)
            bar.update(1)
        # a second look at cells another worker held: it may have finished them, or died (then
        # its run is resumed here)
        for c, outcome in each(held_elsewhere):
            result.record(outcome)
            bar.update(1)
    finally:
        bar.close()
        result.seconds = time.perf_counter() - t0
    return result


def run_cell(c: Cell, *, store, claim, experiment: Optional[str] = None,
             is_dead: OwnerCheck = owner_is_dead, pause: Optional[PauseCheck] = None) -> CellOutcome:
    """Skip, resume or run one cell in this process: the one place that decides what to do
    with a cell, for the local suite and for cluster workers alike.

    ``store``: the cell's loaded crops. ``claim``: a lock the caller has acquired, shared by
    every process that may pick this cell; the store is looked at afresh under it, and its
    ``release()`` is called as soon as the cell's MLflow run exists and names its owner
    (``benchmark.core.liveness.owner_tags``), so no two processes start one cell. ``is_dead``
    judges RUNNING runs by their owner tags (see ``_existing_runs``). ``pause``: passed to the
    run (``run_experiment``); a paused run is the outcome ``paused``. Never raises for a failing
    cell: the failure is the outcome."""
    from benchmark.run.reference_rows import PHANTOM_CEILING, reference_fingerprint, run_inter_reader, run_phantom_ceiling
    from benchmark.core.tracking import client, load_settings
    from benchmark.run.train import RunPaused
    settings = load_settings()
    cl = client(settings)
    exp = cl.get_experiment_by_name(experiment or settings.experiment)
    view = _existing_runs(cl, exp.experiment_id if exp is not None else None, store.data_hash, is_dead, only=c)
    settled = view.settled(c)
    if settled:
        return settled
    try:
        if c.reference == "threshold_baseline":
            from benchmark.run.threshold_baseline import run_threshold_baseline
            rid, _ = run_threshold_baseline(
                c.cfg, experiment=experiment, tags={**c.tags, "reference.fingerprint": reference_fingerprint(c.cfg)})
            return CellOutcome("ran", c.label, rid)
        if c.reference == PHANTOM_CEILING:
            rid, _ = run_phantom_ceiling(c.cfg, experiment=experiment, store=store, tags=c.tags or None)
            return CellOutcome("ran", c.label, rid)
        if c.reference:
            rid, _ = run_inter_reader(c.cfg, experiment=experiment, store=store, tags=c.tags or None)
            return CellOutcome("ran", c.label, rid)
        result_run, resumed = _run_cell(c, view.interrupted(c), experiment,
                                        on_run_start=claim.release, pause=pause)
        return CellOutcome("resumed" if resumed else "ran", c.label, result_run.run_id)
    except RunPaused as e:
        tqdm.write(f"paused {c.label} (run {e.run_id}): {e.reason}", file=sys.stderr)
        return CellOutcome("paused", c.label, e.run_id or "")
    except Exception as e:  # noqa: BLE001 - one failing cell must not stop the matrix
        msg = str(e) if isinstance(e, BenchError) else f"{type(e).__name__}: {e}"
        msg = msg.splitlines()[0] if msg else type(e).__name__
        tqdm.write(f"FAILED {c.label}: {msg}", file=sys.stderr)
        if os.environ.get("LIDC_BENCH_DEBUG") == "1":
            traceback.print_exc()
        return CellOutcome("failed", c.label, msg)


def _run_cell(c: Cell, killed_run: Optional[str], experiment: Optional[str], on_run_start=None,
              pause: Optional[PauseCheck] = None):
    from benchmark.run.train import run_experiment
    if killed_run and has_checkpoint(killed_run):
        return run_experiment(None, resume_run_id=killed_run, show_progress=False, on_run_start=on_run_start,
                              pause=pause, evaluate_test=c.evaluate_test), True
    if killed_run:  # died before its first checkpoint: nothing to resume, so stop it reading RUNNING
        from benchmark.core.tracking import client
        with contextlib.suppress(Exception):
            client().set_terminated(killed_run, status="KILLED")

    def started(run_id: str):
        if c.artifacts:   # logged at once, so an interrupted run already says what it belongs to
            from benchmark.core.tracking import Tracker, client, load_settings
            settings = load_settings()
            t = Tracker(client(settings), run_id, settings)
            for path, folder in c.artifacts:
                t.log_artifact(path, folder)
        if on_run_start:
            on_run_start(run_id)
    # the tag by which a later run of the suite knows the validation-only cell is done (StoreView.validated)
    tags = {**c.tags, **({} if c.evaluate_test else {"evaluation": "validation_only"})}
    return run_experiment(c.cfg, experiment=experiment, show_progress=False, on_run_start=started,
                          tags=tags or None, pause=pause, evaluate_test=c.evaluate_test), False


# ---------------------------------------------------------------------------------------------
