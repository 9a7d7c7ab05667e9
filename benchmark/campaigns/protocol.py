"""``bench protocol``: the declared, tuned benchmark protocol, restartable.

    bench protocol run protocols/cpu.yaml [--experiment NAME] [--no-progress] [--scheduler ADDRESS] [--hours H]
    bench protocol status protocols/cpu.yaml
    bench protocol export protocols/cpu.yaml [--out DIR]    # carry its progress to another machine

A protocol is a versioned YAML file in ``protocols/`` (validated by :class:`Protocol`). Running it
does, in this order, skipping whatever the tracking store and the Optuna journal already hold:

  1. **tuning**: per architecture one Optuna study on the validation split, with the same budget
     for every architecture (trials, epochs per trial, pruner, sampler and its seed), over the
     shared optimiser space (``benchmark.campaigns.tune.common_space``) plus the architecture's own
     ``search_space``; the loss (``tuning.loss``) stays at its defaults. The study is named
     ``<protocol>-v<version>-<arch>``, so a new protocol version never reuses an old study;
  2. **final**: right after its study holds ``n_trials`` finished trials, the best trial's exact
     configuration (``benchmark.campaigns.tune.replay_overrides``) trains ``final.seeds`` seeds with the
     preset's epoch budget and is evaluated on the test split;
  3. **defaults**: the same architectures at the preset's default settings for ``defaults.seeds``
     seeds (``bench suite`` cells, with the reference runs): the leaderboard's second section and
     the baseline of each architecture's gain from tuning. Run in this process, each
     architecture's default runs follow its final runs (the references come with the first);
  4. **loss study**: on each of ``loss_study.archs`` (``best`` = the tuned architecture with the
     highest best-trial validation Dice; the test split plays no part in that choice; when the
     best is an architecture already listed, the runner-up takes its place; with
     ``best_max_hours``, only architectures whose loss study fits that estimate qualify) every listed loss x
     ``loss_study.seeds`` seeds with that architecture's tuned settings. Its ``dice_bce`` cells
     are the final runs themselves (same fingerprint), so they are not trained again. Run in
     this process, a named architecture's loss cells follow its default runs, and ``best``'s
     follow the default runs of the last candidate for it (an architecture over ``best_max_hours``
     cannot be chosen, so its study does not hold the choice up).

Restartable like ``bench suite`` (whose cell machinery runs stages 2-4): stop at any point and
rerun the command. A study resumes until it holds its trials (a trial whose process died is
marked failed and replaced); a finished cell is skipped by its config fingerprint; an
interrupted cell resumes from its last checkpoint.

On a Dask cluster (``--scheduler``, see ``benchmark.campaigns.cluster``) the unfinished studies run side by
side, one task each, and then the cells of stages 2-4 are submitted as ``bench suite --scheduler``
submits its cells; the same store, journal and rules, so either way of running resumes the other.

On a machine lent for a fixed time (a batch job's wall time, a session that ends every
process), ``--hours H`` starts no trial or cell that would not end within H hours of the start,
by this machine's measured speed or else the protocol's ``seconds_per_epoch`` (``TimeLimit``),
and stops there: a run cut off at the end would be lost
with the machine, or begun again from its last checkpoint.

A protocol outlives the machine it started on: ``bench protocol export`` writes what it has
finished (its scored runs and its studies' finished trials) as a run export, ``bench import`` of
that folder elsewhere recreates them, and ``bench protocol run`` there resumes as it would here.

Every run the protocol starts carries the tags ``protocol.name``, ``protocol.version``,
``protocol.sha`` (of the file's bytes) and ``protocol.part`` (final / default / loss; tuning
trials are children of their study's parent run, which carries the same tags), and logs the
protocol file as the artifact ``protocol/<file name>``.
"""
from __future__ import annotations

import contextlib
import hashlib
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

from benchmark.core.errors import UsageError

__all__ = ["Protocol", "load_protocol", "run_protocol", "protocol_status", "export_protocol", "register"]

REFERENCE_ARCH = "unet3d"
BEST = "best"   # loss_study.archs entry standing for the best tuned architecture
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,40}$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TuningSpec(_Strict):
    n_trials: int
    epochs: int
    pruner: Literal["median", "hyperband", "none"] = "median"
    sampler: Literal["tpe", "random"] = "tpe"
    sampler_seed: int = 0
    #: TPE's random start-up trials (None: Optuna's default, 10)
    startup_trials: Optional[int] = None
    #: "sampled": every trial is drawn; "default_optimiser": trial 0 is the preset's own optimiser
    #: settings (the default rows' optimiser, learning rate and batch; ``tune.default_optimiser_params``),
    #: the architecture's knobs drawn, so a study has always tried what the default rows train
    first_trial: Literal["sampled", "default_optimiser"] = "sampled"
    #: loss trained during tuning (at its default settings)
    loss: str = "dice_bce"
    #: config overrides for every trial (after the suggestions: they win)
    overrides: list[str] = []
    #: "search": the architectures' size knobs (widths, depths) are tuned with the rest; "preset":
    #: every knob the preset sizes (the architecture's ``preset_kwargs``) is held at the preset's
    #: value, so the study tunes training and regularisation of the network the default runs train
    #: (on two cores the size knobs made a unet3d trial 14x dearer than the protocol's estimate)
    size: Literal["search", "preset"] = "search"
    #: what a trial maximises and reports to the pruner each epoch: the thresholded validation Dice,
    #: or the soft Dice of the probabilities, which moves before any voxel crosses the threshold (in
    #: 6-epoch cpu trials most configurations still scored a thresholded Dice of 0 at the epoch the
    #: pruner first looks, so ties decided the pruning and gave TPE nothing to rank)
    metric: Literal["val_dice", "val_soft_dice"] = "val_dice"
    #: "compressed": a trial's learning-rate schedule spans its ``epochs``; "truncated": a trial is
    #: the first ``epochs`` epochs of the final runs' schedule (``train.stop_after_epochs``), so it
    #: is the beginning of the run the final seeds train and its learning rate is still high where
    #: it stops (a compressed 6-epoch cosine anneals before a U-Net at the default rate has learnt
    #: to predict anything; the same settings score 0.3 at epoch 6 of the 20-epoch schedule)
    schedule: Literal["compressed", "truncated"] = "compressed"

    @field_validator("n_trials", "epochs")
    @classmethod
    def _positive(cls, v):
        if v < 1:
            raise ValueError("must be >= 1")
        return v


class FinalSpec(_Strict):
    seeds: int
    #: training epochs of the final runs (default: the preset's)
    epochs: Optional[int] = None
    overrides: list[str] = []


class DefaultsSpec(_Strict):
    #: seeds of the default-settings section; 0 leaves it out
    seeds: int = 0
    references: bool = True


class LossStudySpec(_Strict):
    archs: list[str]
    losses: list[str]
    seeds: int
    #: ``best`` is chosen among the architectures whose loss study is estimated (from
    #: ``seconds_per_epoch``) to cost at most this many hours; declared before any result, so
    #: the cap cannot be fitted to the ranking. None: no cap.
    best_max_hours: Optional[float] = None


class Protocol(_Strict):
    name: str
    version: int
    preset: str
    #: what is searched: the shared optimiser space plus each architecture's own space
    search_space: Literal["optimiser+architecture"] = "optimiser+architecture"
    architectures: list[str]
    reference_arch: str = REFERENCE_ARCH
    tuning: TuningSpec
    final: FinalSpec
    defaults: DefaultsSpec = DefaultsSpec()
    loss_study: Optional[LossStudySpec] = None
    #: measured training seconds per epoch at the preset (for ``status``'s cost estimate only)
    seconds_per_epoch: dict[str, float] = {}
    #: where ``seconds_per_epoch`` was measured (machine, commit); shown by ``status``
    seconds_per_epoch_source: str = ""

    @field_validator("name")
    @classmethod
    def _name(cls, v):
        if not _NAME.match(v):
            raise ValueError("must be lower-case letters, digits, '-' or '_' (it names Optuna studies)")
        return v

    @model_validator(mode="after")
    def _rules(self):
        from benchmark.run.config import PRESETS
        if self.version < 1:
            raise ValueError("version must be >= 1")
        if self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r} (choose from {', '.join(PRESETS)})")
        min_seeds = 2 if self.preset == "smoke" else 3   # the smoke preset is for tests only
        if self.final.seeds < min_seeds:
            raise ValueError(f"final.seeds must be >= {min_seeds}")
        if self.loss_study and self.loss_study.seeds < min_seeds:
            raise ValueError(f"loss_study.seeds must be >= {min_seeds}")
        if not self.architectures:
            raise ValueError("architectures is empty")
        if self.reference_arch not in self.architectures:
            raise ValueError(f"reference_arch {self.reference_arch!r} is not in architectures")
        if self.loss_study:
            if self.tuning.loss not in self.loss_study.losses:
                raise ValueError(f"loss_study.losses must include the tuning loss {self.tuning.loss!r} "
                                 f"(every other loss is compared with it)")
            stray = [a for a in self.loss_study.archs if a != BEST and a not in self.architectures]
            if stray:
                raise ValueError(f"loss_study.archs {stray} are not in architectures")
        return self


@dataclass
class LoadedProtocol:
    spec: Protocol
    path: Path
    sha: str

    @property
    def tags(self) -> dict[str, str]:
        return {"protocol.name": self.spec.name, "protocol.version": str(self.spec.version),
                "protocol.sha": self.sha, "protocol.comparator": self.spec.reference_arch}

    def study_name(self, arch: str) -> str:
        return f"{self.spec.name}-v{self.spec.version}-{arch}"


def load_protocol(path: str | Path) -> LoadedProtocol:
    """Read, parse (``yaml.safe_load``) and validate a protocol file; names are checked against
    the registries and canonicalised."""
    from architectures import architecture_entry
    from benchmark.losses import loss_entry
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"protocol file not found: {p}")
    raw = p.read_bytes()
    try:
        data = yaml.safe_load(raw)
    except yaml.YAMLError as e:
        raise UsageError(f"protocol file {p} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise UsageError(f"protocol file {p} must hold a mapping")
    try:
        spec = Protocol.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(x) for x in err["loc"]) or "protocol"
        raise UsageError(f"protocol file {p}: {loc}: {err['msg']}") from None
    spec.architectures = list(dict.fromkeys(architecture_entry(a).name for a in spec.architectures))
    spec.reference_arch = architecture_entry(spec.reference_arch).name
    spec.tuning.loss = loss_entry(spec.tuning.loss).name
    if spec.loss_study:
        spec.loss_study.losses = list(dict.fromkeys(loss_entry(x).name for x in spec.loss_study.losses))
        spec.loss_study.archs = [a if a == BEST else architecture_entry(a).name for a in spec.loss_study.archs]
    return LoadedProtocol(spec, p, hashlib.sha256(raw).hexdigest()[:12])


# ---------------------------------------------------------------------------------------------
# studies
# ---------------------------------------------------------------------------------------------
def study_meta(lp: LoadedProtocol, arch: str) -> dict:
    """The study's identity (a rerun with different values is refused by ``open_study``)."""
    s = lp.spec
    return {"arch": arch, "loss": s.tuning.loss, "preset": s.preset, "loss_space": False,
            "protocol": f"{s.name}/v{s.version}", "n_trials": s.tuning.n_trials, "epochs": s.tuning.epochs,
            "pruner": s.tuning.pruner, "sampler": f"{s.tuning.sampler}:{s.tuning.sampler_seed}"
            + (f":{s.tuning.startup_trials}" if s.tuning.startup_trials is not None else ""),
            "first_trial": s.tuning.first_trial,
            "size": s.tuning.size, "metric": s.tuning.metric, "schedule": s.tuning.schedule}


def held_size(lp: LoadedProtocol, arch: str) -> dict:
    """The search-space parameters a study holds fixed (``tuning.size: preset``): ``arch.<kwarg>``
    at the preset's value for every kwarg the preset sizes; nothing under ``size: search``.
    Search spaces name a kwarg's parameter ``arch.<kwarg>``, so this reaches every size knob."""
    from architectures import preset_kwargs
    if lp.spec.tuning.size != "preset":
        return {}
    return {f"arch.{k}": v for k, v in preset_kwargs(arch, lp.spec.preset).items()}


def tuning_overrides(lp: LoadedProtocol) -> list[str]:
    """What every trial adds to its suggestions: the declared overrides and its epoch budget
    (its own schedule, or the first epochs of the final runs' schedule when truncated)."""
    t = lp.spec.tuning
    if t.schedule == "truncated":
        return list(t.overrides) + [f"train.epochs={final_epochs(lp)}", f"train.stop_after_epochs={t.epochs}"]
    return list(t.overrides) + [f"train.epochs={t.epochs}"]


def final_epochs(lp: LoadedProtocol) -> int:
    """Training epochs of the final (and loss-study) runs: declared, else the preset's, else the
    run config's default (what such a run trains for)."""
    from benchmark.run.config import PRESETS, TrainConfig
    return int(lp.spec.final.epochs or PRESETS[lp.spec.preset].get("train", {}).get(
        "epochs", TrainConfig.model_fields["epochs"].default))


@dataclass
class StudyState:
    arch: str
    name: str
    finished: int                 # complete + pruned trials
    n_trials: int
    best_trial: object = None     # optuna FrozenTrial of the best complete trial, once the study is done
    seconds: float = 0.0          # wall time of its trials so far

    @property
    def done(self) -> bool:
        return self.finished >= self.n_trials and self.best_trial is not None


def study_state(lp: LoadedProtocol, arch: str, storage: Optional[str]) -> StudyState:
    import optuna
    from benchmark.core.optuna_storage import open_storage
    name = lp.study_name(arch)
    st = StudyState(arch, name, 0, lp.spec.tuning.n_trials)
    storage_obj, _ = open_storage(storage)
    try:
        study = optuna.load_study(study_name=name, storage=storage_obj)
    except KeyError:
        return st
    S = optuna.trial.TrialState
    trials = study.get_trials(deepcopy=False)
    st.finished = sum(t.state in (S.COMPLETE, S.PRUNED) for t in trials)
    st.seconds = sum((t.datetime_complete - t.datetime_start).total_seconds() for t in trials
                     if t.datetime_complete and t.datetime_start)
    if st.finished >= st.n_trials:
        try:
            st.best_trial = study.best_trial
        except ValueError:
            st.best_trial = None   # every trial pruned or failed: nothing to train
    return st


def tune_arch(lp: LoadedProtocol, arch: str, storage: Optional[str], show_progress: bool,
              limit: Optional["TimeLimit"] = None) -> None:
    """Run (or resume) the architecture's study until it holds ``n_trials`` finished trials (or
    until the next trial would overrun ``limit``)."""
    from benchmark.core.tracking import Tracker, client, load_settings
    from benchmark.campaigns.tune import close_parent_run, default_optimiser_params, ensure_parent_run, open_study, run_worker
    t = lp.spec.tuning
    meta = study_meta(lp, arch)
    study, _ = open_study(lp.study_name(arch), storage, 1, meta, t.pruner)
    if t.first_trial == "default_optimiser" and not study.get_trials(deepcopy=False):
        study.enqueue_trial(default_optimiser_params(arch, lp.spec.preset))
    new_parent = "mlflow_parent_run_id" not in study.user_attrs
    parent = ensure_parent_run(study, {**meta, **lp.tags})
    if new_parent:
        settings = load_settings()
        Tracker(client(settings), parent, settings).log_artifact(lp.path, "protocol")
    run_worker(lp.study_name(arch), storage, t.n_trials, meta, tuning_overrides(lp), held_size(lp, arch), {}, t.pruner,
               show_progress=show_progress, sampler=(t.sampler, t.sampler_seed, t.startup_trials),
               may_start=(lambda: limit.trial(arch)) if limit else None)
    close_parent_run(parent)
    _tag_trial_runs(lp, arch, storage)


def _tag_trial_runs(lp: LoadedProtocol, arch: str, storage: Optional[str]) -> None:
    """Give the study's trial runs the protocol tags (their parent run holds the protocol file).
    Done after the study, so a trial run of an interrupted study gets them on the next run."""
    import optuna
    from benchmark.core.tracking import Tracker, client, load_settings
    from benchmark.core.optuna_storage import open_storage
    settings = load_settings()
    cl = client(settings)
    study = optuna.load_study(study_name=lp.study_name(arch), storage=open_storage(storage)[0])
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


# ---------------------------------------------------------------------------------------------
# cells
# ---------------------------------------------------------------------------------------------
def final_overrides(lp: LoadedProtocol, seed: int) -> list[str]:
    """What the final runs add to a replayed trial: the preset's (or the declared) epoch budget,
    every epoch of it (a truncated trial stopped early), and the seed (later overrides win over
    the trial's own ``train.epochs`` and ``train.stop_after_epochs``)."""
    epochs = final_epochs(lp)
    out = list(lp.spec.final.overrides)
    if epochs:
        out.append(f"train.epochs={epochs}")
    if lp.spec.tuning.schedule == "truncated":
        out.append("train.stop_after_epochs=null")
    return out + [f"train.seed={seed}"]


def tuned_cell(lp: LoadedProtocol, st: StudyState, loss: str, seed: int, part: str):
    from benchmark.run.run_args import validate_names
    from benchmark.campaigns.suite import Cell
    from benchmark.campaigns.tune import config_from_overrides, replay_overrides
    meta = study_meta(lp, st.arch)
    overrides = replay_overrides(st.best_trial, meta) + final_overrides(lp, seed)
    cfg = config_from_overrides({**meta, "loss": loss}, overrides)
    validate_names(cfg)
    t = lp.spec.tuning
    epochs = f"first {t.epochs} of {final_epochs(lp)} epochs" if t.schedule == "truncated" else f"{t.epochs} epochs"
    budget = f"{t.n_trials} trials x {epochs}, {t.pruner} pruner" + \
        (f", on {t.metric}" if t.metric != "val_dice" else "")
    tags = {**lp.tags, "protocol.part": part, "tuned": "true", "optuna.study": st.name, "tuning.metric": t.metric,
            "optuna.best_trial": str(st.best_trial.number), "tuning.budget": budget,
            "tuning.seconds": f"{st.seconds:.0f}", "tuning.best_value": f"{st.best_trial.value:.6g}"}
    return Cell(st.arch, cfg.loss.name, seed, cfg, tags=tags, artifacts=[(str(lp.path), "protocol")])


def waiting_for_search(lp: LoadedProtocol) -> dict[str, str]:
    """The protocol's searched architectures whose genotype is not yet a recorded search on its
    preset, with why (``architectures.searched_genotype_problem``). They are neither tuned nor
    trained until it is: their runs would be of a placeholder network under the searched name."""
    from architectures import searched_genotype_problem
    out = {}
    for arch in lp.spec.architectures:
        why = searched_genotype_problem(arch, lp.spec.preset)
        if why:
            out[arch] = why
    return out


def default_cells(lp: LoadedProtocol) -> list:
    from benchmark.campaigns.suite import plan_cells
    d = lp.spec.defaults
    if d.seeds < 1:
        return []
    cells = plan_cells(lp.spec.preset, lp.spec.architectures, [lp.spec.tuning.loss], d.seeds, [], d.references)
    for c in cells:
        c.tags = {**lp.tags, "protocol.part": "reference" if c.reference else "default"}
        if not c.reference:
            c.artifacts = [(str(lp.path), "protocol")]
    return cells


def loss_study_archs(lp: LoadedProtocol, states: dict[str, StudyState]) -> Optional[list[str]]:
    """The loss study's architectures, ``best`` resolved; None while a study is unfinished."""
    ls = lp.spec.loss_study
    if not ls:
        return []
    fixed = [a for a in ls.archs if a != BEST]
    if BEST not in ls.archs:
        return fixed
    # 'best' is chosen among the candidates only: not a named architecture (the runner-up takes
    # its place) and not one over `best_max_hours` (a cap on the declared seconds per epoch, so
    # fixed before any result). Their studies decide it; the others' cannot change it, so 'best'
    # does not wait for them (on two cores, SwinUNETR's 10.9 h).
    candidates = [a for a in lp.spec.architectures if a not in fixed and loss_study_affordable(lp, a)]
    if not all(a in states and states[a].done for a in candidates):
        return None
    ranked = sorted((states[a] for a in candidates), key=lambda s: (-s.best_trial.value, s.arch))
    return fixed + ([ranked[0].arch] if ranked else [])


def loss_study_hours(lp: LoadedProtocol, arch: str) -> Optional[float]:
    """Estimated two-core hours of ``arch``'s loss study (its tuning-loss cells are the final
    runs, so they cost nothing more); None without a ``seconds_per_epoch`` figure."""
    s, ls = lp.spec, lp.spec.loss_study
    epochs = final_epochs(lp)
    n_other = len([x for x in ls.losses if x != s.tuning.loss])
    sec = _cost(lp, arch, n_other * ls.seeds * epochs)
    return None if sec is None else sec / 3600


def loss_study_affordable(lp: LoadedProtocol, arch: str) -> bool:
    cap = lp.spec.loss_study.best_max_hours
    hours = loss_study_hours(lp, arch)
    return cap is None or hours is None or hours <= cap


def loss_cells(lp: LoadedProtocol, states: dict[str, StudyState], archs: list[str]) -> list:
    ls = lp.spec.loss_study
    return [tuned_cell(lp, states[a], loss, seed, "loss")
            for seed in range(ls.seeds) for a in archs for loss in ls.losses]


# ---------------------------------------------------------------------------------------------
# run and status
# ---------------------------------------------------------------------------------------------
@dataclass
class ProtocolResult:
    studies: dict = field(default_factory=dict)
    suites: list = field(default_factory=list)    # (stage, SuiteResult)
    stopped: str = ""                             # why it stopped at its time limit ("" if it did not)


def measured_seconds_per_epoch(lp: "LoadedProtocol", arch: str, experiment: Optional[str] = None,
                               trials: bool = True) -> Optional[float]:
    """Median seconds per epoch of ``arch``'s finished runs at the protocol's preset in the
    tracking store (tuning trials included unless ``trials`` is False), each scaled to the preset's
    batch (an epoch is a fixed number of steps): what this machine takes, where the declared
    ``seconds_per_epoch`` comes from another. None without such a run. Without trials, the figure
    comes from the runs a protocol export carries, so it is the same on the machine it is
    imported to."""
    import statistics

    from benchmark.core.tracking import client, experiment_id, load_settings, search_all_runs
    settings = load_settings()
    cl = client(settings)
    preset = lp.spec.preset
    base = preset_batch(preset)
    where = f"attributes.status = 'FINISHED' and tags.arch = '{arch}' and tags.preset = '{preset}'"
    rates = []
    for r in search_all_runs(cl, [experiment_id(cl, settings, experiment)], where):
        if not trials and r.data.tags.get("protocol.part") == "tuning":
            continue
        m, batch = r.data.metrics, r.data.params.get("train.batch_size")
        if m.get("train_seconds") and m.get("epochs_completed") and batch:
            rates.append(m["train_seconds"] / m["epochs_completed"] / (float(batch) / base))
    return statistics.median(rates) if rates else None


def finished_protocol_runs(lp: "LoadedProtocol", experiment: Optional[str] = None) -> list:
    """The store's FINISHED runs tagged with this protocol's name and version (every part)."""
    from benchmark.core.tracking import client, experiment_id, load_settings, search_all_runs
    settings = load_settings()
    cl = client(settings)
    where = (f"attributes.status = 'FINISHED' and tags.`protocol.name` = '{lp.spec.name}' "
             f"and tags.`protocol.version` = '{lp.spec.version}'")
    return search_all_runs(cl, [experiment_id(cl, settings, experiment)], where)


def spent_seconds(runs: list) -> dict[tuple[str, str], float]:
    """Training seconds of a protocol's finished runs (``finished_protocol_runs``), summed by
    architecture and part (``final``, ``default``, ``loss``): what the protocol has cost so far
    beside its trials (whose wall time is ``StudyState.seconds``). Only what a protocol export
    carries is counted, so the figure reads the same after ``bench import``."""
    from collections import defaultdict
    spent: dict[tuple[str, str], float] = defaultdict(float)
    for r in runs:
        part = r.data.tags.get("protocol.part")
        if part in ("final", "default", "loss"):
            spent[(r.data.tags.get("arch", ""), part)] += r.data.metrics.get("train_seconds", 0.0)
    return dict(spent)


def runs_on_other_data(lp: "LoadedProtocol", experiment: Optional[str] = None,
                       runs: Optional[list] = None) -> Optional[str]:
    """A warning when this store holds finished runs of the protocol made on other data than this
    machine's crop cache (another data content hash), else None. Such runs never count as done
    here (a cell is matched on its data hash as well as its config), so the status would show
    them as missing with no reason given. None as well when no crop cache is built yet. ``runs``:
    the protocol's finished runs where the caller has them already (``finished_protocol_runs``)."""
    from collections import Counter

    from benchmark.run.config import build_config
    from benchmark.data.store import built_data_hash
    arch = lp.spec.architectures[0]
    here = built_data_hash(build_config(lp.spec.preset, [], **{"model.arch": arch}).data)
    if here is None:
        return None
    if runs is None:
        runs = finished_protocol_runs(lp, experiment)
    other = Counter(r.data.tags.get("data.content_hash") for r in runs
                    if r.data.tags.get("data.content_hash") not in (None, here))
    if not other:
        return None
    which = ", ".join(f"{n} on data {h}" for h, n in other.most_common())
    return (f"warning: {sum(other.values())} finished runs of this protocol were made on other data than this "
            f"machine's crop cache (data {here}): {which}. They do not count here, and rerunning trains them "
            f"again. The same phantom gives other bits after a code change or under other NumPy/SciPy "
            f"versions: compare the runs' tags (git.commit, pkg.*) with this checkout")


@dataclass
class TimeLimit:
    """``--hours``: start nothing that would not end within ``hours`` of ``start``. A trial or
    cell costs its epochs times the architecture's seconds per epoch, scaled by its batch (a trial
    at the largest batch the study can draw, counted unpruned; see ``trial``): as measured on this machine
    (``measured_seconds_per_epoch``) once it has finished a run of that architecture, else as
    the protocol declares; work with neither is started. Once one thing is refused, so is
    everything after it: the protocol stops in its own order, not by filling the time left with
    whatever is cheaper. (The declared figures alone decide what the protocol declares, such as
    which architectures the loss study can afford; this only decides when to stop.)

    ``pause_runs`` (``--pause-runs``): a final, default or loss run needs only its next epoch to
    fit; it is paused after the last epoch that ends in time (``pause``) and the next protocol run
    resumes it from there. For a machine whose ``runs/`` folder stays: the checkpoints are the
    run's progress. Trials are never resumed, so they still need all of their time."""
    lp: "LoadedProtocol"
    hours: float
    pause_runs: bool = False
    start: float = field(default_factory=time.monotonic)
    stopped: str = ""
    experiment: Optional[str] = None
    _rates: dict = field(default_factory=dict)

    def seconds_per_epoch(self, arch: str) -> Optional[float]:
        if arch not in self._rates:     # measured once per architecture, as soon as there is a run
            measured = measured_seconds_per_epoch(self.lp, arch, self.experiment)
            if measured is None:
                return self.lp.spec.seconds_per_epoch.get(arch)
            self._rates[arch] = measured
        return self._rates[arch]

    def _cost(self, arch: str, epochs: float, batch_factor: float) -> Optional[float]:
        sec = self.seconds_per_epoch(arch)
        return None if sec is None else sec * epochs * batch_factor

    def seconds_left(self) -> float:
        return self.hours * 3600 - (time.monotonic() - self.start)

    def _refuse(self, what: str, seconds: Optional[float]) -> Optional[str]:
        if not self.stopped and (seconds is None or seconds <= self.seconds_left()):
            return None
        if not self.stopped:
            self.stopped = (f"{what} would take about {seconds / 60:.0f} min and {max(0.0, self.seconds_left()) / 60:.0f} "
                            f"min of --hours {self.hours:g} are left")
        return self.stopped

    def trial(self, arch: str) -> Optional[str]:
        """The next trial, costed at the largest batch the study can draw: its batch is drawn only
        once it has started. A swinunetr trial at batch 16 took 358-446 s per epoch against
        163-184 s at 8, up to 2.3x the mean batch's estimate and 1.35x the largest's: a nearer
        bound than the mean, not a strict one."""
        s = self.lp.spec
        return self._refuse(f"a {arch} trial", self._cost(arch, s.tuning.epochs, tuning_batch_factor(s.preset, "max")))

    def cell(self, c, resume: Optional[str] = None) -> Optional[str]:
        """A final, default or loss run: its epochs left (``epochs_left``: all, or those after
        the last checkpoint of the interrupted run ``resume``) at its own batch
        (``cell_batch_factor``), or with ``pause_runs`` one epoch; a reference run trains nothing."""
        if c.reference:
            return self._refuse(f"run {c.label}", 0.0)
        epochs = 1 if self.pause_runs else epochs_left(self.lp, resume)
        what = f"an epoch of run {c.label}" if self.pause_runs else f"{'resuming ' if resume else ''}run {c.label}"
        return self._refuse(what, self._cost(c.arch, epochs, cell_batch_factor(self.lp, c)))

    def pause(self, c) -> Callable[[float], Optional[str]]:
        """The ``PauseCheck`` of cell ``c``'s run: once the time left is shorter than the epoch
        just trained, it stops the protocol and pauses the run. (The last epoch is never
        followed by a pause: the test evaluation after it may run a few minutes over.)"""
        def check(epoch_seconds: float) -> Optional[str]:
            left = self.seconds_left()
            if not self.stopped and epoch_seconds <= left:
                return None
            self.stopped = self.stopped or (
                f"run {c.label} paused: its next epoch would take about {epoch_seconds / 60:.0f} min and "
                f"{max(0.0, left) / 60:.0f} min of --hours {self.hours:g} are left")
            return self.stopped
        return check


def run_protocol(path: str | Path, experiment: Optional[str] = None, storage: Optional[str] = None,
                 show_progress: bool = True, executor=None, hours: Optional[float] = None,
                 pause_runs: bool = False) -> ProtocolResult:
    """Run or continue every stage; see the module docstring. ``hours``: the time limit
    (``TimeLimit``; this process only, not with ``executor``); ``pause_runs``: with ``hours``,
    pause the run under way at the limit instead of not starting it (``TimeLimit.pause_runs``).

    ``executor`` (a ``benchmark.campaigns.cluster.DaskExecutor``, ``bench protocol run --scheduler``): the
    unfinished studies run as one cluster task each, side by side, then every final cell, the
    defaults and the loss study are submitted as cells, exactly as ``bench suite --scheduler``
    does. Without it, each architecture is tuned and then trained in turn in this process."""
    from benchmark.campaigns.suite import run_cells
    lp = load_protocol(path)
    s = lp.spec
    out = ProtocolResult()
    if hours is not None and executor is not None:
        raise UsageError("--hours applies to a protocol run in this process, not on a cluster (--scheduler)")
    if hours is not None and hours <= 0:
        raise UsageError(f"--hours must be positive, got {hours:g}")
    if pause_runs and hours is None:
        raise UsageError("--pause-runs pauses runs at the --hours limit: give --hours too")
    limit = TimeLimit(lp, hours, pause_runs, experiment=experiment) if hours is not None else None
    # what every stage's cells are started and paused by (nothing without --hours)
    limits = dict(may_start=limit.cell if limit else None, pause=limit.pause if limit and pause_runs else None)
    waiting = waiting_for_search(lp)
    for arch, why in waiting.items():
        print(f"protocol: {arch} waits for its search and is skipped this time: {why}", file=sys.stderr)
    if executor is None:
        note = runs_on_other_data(lp, experiment)
        if note:
            print(f"protocol: {note}", file=sys.stderr)
    ready = [a for a in s.architectures if a not in waiting]
    defaults = [c for c in default_cells(lp) if c.arch not in waiting]
    if executor is not None:
        _tune_on_cluster(lp, storage, executor, ready)
        finals = []
        for arch in ready:
            st = out.studies[arch] = study_state(lp, arch, storage)
            finals += _final_cells(lp, st)
        out.suites.append(("final", run_cells(finals, "final", experiment, show_progress, executor=executor)))
    else:
        best_pending = bool(s.loss_study) and BEST in s.loss_study.archs
        for i, arch in enumerate(ready):
            st = study_state(lp, arch, storage)
            if limit and limit.stopped:
                out.studies[arch] = st
                continue
            if st.finished < st.n_trials and not (limit and limit.trial(arch)):
                tune_arch(lp, arch, storage, show_progress, limit)
                st = study_state(lp, arch, storage)
            out.studies[arch] = st
            cells = _final_cells(lp, st)
            if cells:
                out.suites.append((f"final {arch}", run_cells(cells, f"final [{arch}]", experiment, show_progress,
                                                              **limits)))
            # the architecture's default-settings runs (and, with the first, the reference runs)
            # right after its tuned ones: a stopped protocol leaves tuned-vs-default pairs, not
            # a tuned column waiting a day for its baseline. The defaults stage below finds them
            # done and trains only what is left (every default cell on the cluster path).
            mine = [c for c in defaults if c.arch == arch or (c.reference and i == 0)]
            if mine:
                out.suites.append((f"defaults {arch}", run_cells(mine, f"defaults [{arch}]", experiment,
                                                                 show_progress, **limits)))
            # an architecture the loss study names (not 'best', which waits for its candidates) has
            # its loss cells next, for the same reason; the loss stage below skips them as done
            if s.loss_study and arch in s.loss_study.archs and st.best_trial is not None:
                out.suites.append((f"loss study {arch}", run_cells(loss_cells(lp, {arch: st}, [arch]),
                                                                   f"loss study [{arch}]", experiment,
                                                                   show_progress, **limits)))
            # 'best' is decided once every candidate for it has been tuned: its loss cells run
            # then, before the architectures that cannot be chosen (SwinUNETR on two cores)
            if best_pending:
                chosen = loss_study_archs(lp, out.studies)
                if chosen is not None:
                    best_pending = False
                    best = [a for a in chosen if a not in s.loss_study.archs]
                    if best:
                        out.suites.append((f"loss study {best[0]}", run_cells(
                            loss_cells(lp, out.studies, best), f"loss study [{BEST}: {best[0]}]", experiment,
                            show_progress, **limits)))
    if limit and limit.stopped:
        out.stopped = limit.stopped
        return out
    if defaults:
        out.suites.append(("defaults", run_cells(defaults, f"defaults [{s.preset}]", experiment, show_progress,
                                                 executor=executor, **limits)))
    archs = loss_study_archs(lp, out.studies)
    if archs is None:
        print(f"protocol: the loss study's '{BEST}' waits for every candidate's study to be complete",
              file=sys.stderr)
        archs = [a for a in s.loss_study.archs if a != BEST]   # the named ones need only their own study
    if archs:
        done = {a: st for a, st in out.studies.items() if st.best_trial is not None}
        cells = loss_cells(lp, done, [a for a in archs if a in done])
        out.suites.append(("loss study", run_cells(cells, "loss study", experiment, show_progress, executor=executor,
                                                   **limits)))
    out.stopped = limit.stopped if limit else ""
    return out


def _final_cells(lp: LoadedProtocol, st: StudyState) -> list:
    if st.best_trial is None:
        if st.finished >= st.n_trials:
            print(f"protocol: study {st.name} has no completed trial; {st.arch} gets no tuned runs", file=sys.stderr)
        else:
            print(f"protocol: study {st.name} holds {st.finished}/{st.n_trials} trials; {st.arch} gets its "
                  f"final runs once it is complete (rerun the command)", file=sys.stderr)
        return []
    return [tuned_cell(lp, st, lp.spec.tuning.loss, seed, "final") for seed in range(lp.spec.final.seeds)]


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


def _cost(lp: LoadedProtocol, arch: str, epochs: float, batch_factor: float = 1.0) -> Optional[float]:
    sec = lp.spec.seconds_per_epoch.get(arch)
    return None if sec is None else sec * epochs * batch_factor


def _cells_cost(lp: LoadedProtocol, cells: list, res) -> Optional[float]:
    """What the cells a dry run would train cost: each started (``res.ran``), resumed
    (``res.resumed``) or running (``res.elsewhere``) cell its epochs left (``epochs_left``), at
    its own batch (a tuned cell trains at its study's batch, which may be twice the preset's)."""
    left = {label: None for label, _ in res.ran} | {label: rid for label, rid in res.resumed + res.elsewhere}
    costs = [_cost(lp, c.arch, epochs_left(lp, left[c.label]), cell_batch_factor(lp, c))
             for c in cells if c.label in left]
    return None if None in costs else sum(costs)


def epochs_left(lp: LoadedProtocol, resume: Optional[str] = None) -> int:
    """The epochs a final, default or loss run has still to train: all of them, or, for the
    interrupted or running run ``resume``, those after its last logged epoch (an epoch is logged
    right after its checkpoint, so that is where a resume starts)."""
    epochs = final_epochs(lp)
    if not resume:
        return epochs
    from benchmark.core.tracking import client
    trained = max((m.step for m in client().get_metric_history(resume, "epoch_seconds")), default=0)
    return max(0, epochs - trained)


def cell_batch_factor(lp: LoadedProtocol, c) -> float:
    """A cell's batch over the preset's: what one of its epochs costs against the preset's (an
    epoch is a fixed number of steps, so a tuned batch of 16 costs twice the preset's 8)."""
    return c.cfg.train.batch_size / preset_batch(lp.spec.preset)


def tuning_batch_factor(preset: str, which: Literal["mean", "max"] = "mean") -> float:
    """Tuning batch over the preset's batch: trials sample ``train.batch_size`` and an epoch is a
    fixed number of steps, so an epoch's cost grows with the batch. ``mean``: what a trial costs
    on average (the status's cost left); ``max``: what one may cost (the time limit)."""
    from benchmark.campaigns.tune import BATCH_CHOICES
    choices = BATCH_CHOICES.get(preset, [4, 8])
    batch = max(choices) if which == "max" else sum(choices) / len(choices)
    return batch / preset_batch(preset)


def preset_batch(preset: str) -> int:
    """The batch a run of ``preset`` trains with when nothing overrides it: the preset's, else the
    run config's default. Every cost estimate scales by a run's batch over this one."""
    from benchmark.run.config import PRESETS, TrainConfig
    return int(PRESETS[preset].get("train", {}).get("batch_size", TrainConfig.model_fields["batch_size"].default))


def protocol_status(path: str | Path, experiment: Optional[str] = None, storage: Optional[str] = None) -> str:
    """What is done, what is left, and the estimated two-core cost of what is left (from the
    protocol's measured seconds per epoch; pruning makes the tuning figure an upper bound)."""
    from benchmark.campaigns.suite import run_cells
    lp = load_protocol(path)
    s = lp.spec
    n_epochs = final_epochs(lp)
    bf = tuning_batch_factor(s.preset)
    lines = [f"protocol {s.name} v{s.version} (sha {lp.sha}), preset {s.preset}, {len(s.architectures)} architectures"]
    left_total, unknown = 0.0, []
    states = {}
    runs = finished_protocol_runs(lp, experiment)
    spent = spent_seconds(runs)
    spent_by = {}                   # what each row and loss-study line has cost so far, in seconds

    def add(arch, sec):
        nonlocal left_total
        if sec is None:
            unknown.append(arch)
        else:
            left_total += sec

    lines.append(f"{'architecture':16s} {'tuning':>10s} {'final':>7s} {'default':>8s}  {'spent (h)':>9s}  "
                 f"{'cost left (h)':>13s}  s/epoch declared, here")
    waiting = waiting_for_search(lp)
    for arch in s.architectures:
        st = study_state(lp, arch, storage)
        states[arch] = st
        trials_left = max(0, st.n_trials - st.finished)
        left = _cost(lp, arch, trials_left * s.tuning.epochs, bf)
        if st.done:
            cells = [tuned_cell(lp, st, s.tuning.loss, seed, "final") for seed in range(s.final.seeds)]
            res = run_cells(cells, "", experiment, show_progress=False, dry_run=True)
            fin_done = len(res.skipped)
            c = _cells_cost(lp, cells, res)
        else:       # the tuned batch is not known yet: the preset's
            fin_done, fin_left = 0, s.final.seeds
            c = _cost(lp, arch, fin_left * n_epochs)
        left = None if left is None or c is None else left + c
        d_done = 0
        if s.defaults.seeds:
            from benchmark.campaigns.suite import plan_cells
            cells = plan_cells(s.preset, [arch], [s.tuning.loss], s.defaults.seeds, [], references=False)
            res = run_cells(cells, "", experiment, show_progress=False, dry_run=True)
            d_done = len(res.skipped)
            c = _cells_cost(lp, cells, res)
            left = None if left is None or c is None else left + c
        add(arch, left)
        spent_by[arch] = st.seconds + spent.get((arch, "final"), 0.0) + spent.get((arch, "default"), 0.0)
        if (arch, "loss") in spent:
            spent_by[f"loss study {arch}"] = spent[(arch, "loss")]
        # the costs above go by the declared figure (what the protocol declares must not depend on
        # the machine); beside it, the one measured on the runs an export carries (not the trials,
        # which it does not), so that the status reads the same after `bench import`
        declared = s.seconds_per_epoch.get(arch)
        here = measured_seconds_per_epoch(lp, arch, experiment, trials=False)
        speed = f"{'?' if declared is None else f'{declared:.1f}':>8s}, {'-' if here is None else f'{here:.1f}'}"
        lines.append(f"{arch:16s} {st.finished:>4d}/{st.n_trials:<5d} {fin_done:>3d}/{s.final.seeds:<3d} "
                     f"{d_done:>4d}/{s.defaults.seeds:<3d}  {spent_by[arch] / 3600:>9.2f}  "
                     f"{'?' if left is None else f'{left / 3600:.2f}':>13s}  "
                     f"{speed}" + ("  (waits for its search)" if arch in waiting else ""))
    if s.loss_study:
        archs = loss_study_archs(lp, states)
        ls = s.loss_study
        n_other = len([x for x in ls.losses if x != s.tuning.loss])

        def loss_study_line(a):
            cells = loss_cells(lp, states, [a])
            res = run_cells(cells, "", experiment, show_progress=False, dry_run=True)
            # its cells of the tuning loss are the final runs, costed on the architecture's row
            add(f"loss study {a}", _cells_cost(lp, [c for c in cells if c.loss != s.tuning.loss], res))
            lines.append(f"loss study {a}: {len(res.skipped)} done, "
                         f"{len(res.ran) + len(res.resumed) + len(res.elsewhere)} left, "
                         f"{spent_by.get(f'loss study {a}', 0.0) / 3600:.2f} h spent")

        if archs is None:
            named = [a for a in ls.archs if a != BEST]
            lines.append(f"loss study: waiting for tuning to pick '{BEST}'; {len(ls.losses)} losses x {ls.seeds} seeds "
                         f"on {', '.join(named + [BEST])}")
            for a in named:     # a named architecture's loss cells run once its own study is done
                if a in states and states[a].done:
                    loss_study_line(a)
                else:
                    add(f"loss study {a}", _cost(lp, a, n_other * ls.seeds * n_epochs))
            hours = {a: loss_study_hours(lp, a) for a in s.architectures if a not in named}
            costs = [h for a, h in hours.items() if h is not None and loss_study_affordable(lp, a)]
            if costs:
                lines.append(f"  '{BEST}' adds {min(costs):.2f} to {max(costs):.2f} h, depending on which "
                             f"architecture wins")
            capped = [a for a in hours if not loss_study_affordable(lp, a)]
            if capped:
                lines.append(f"  not eligible for '{BEST}' (loss study over best_max_hours={ls.best_max_hours:g} h): "
                             + ", ".join(f"{a} ({hours[a]:.1f} h)" for a in capped))
        else:
            for a in archs:
                loss_study_line(a)
    lines.append("s/epoch: at the preset's batch; 'here' is the median of this store's finished final, default "
                 "and loss runs of the preset ('-': none yet)")
    total = sum(spent_by.values())
    if total:
        top = max(spent_by, key=spent_by.get)
        lines.append(f"spent so far: {total / 3600:.1f} h on the machines that ran it (its trials' wall time and its "
                     f"finished runs' training time; data building and evaluation not counted), "
                     f"{top} {spent_by[top] / 3600:.1f} h of it ({100 * spent_by[top] / total:.0f} %)")
    lines.append(f"estimated cost left: {left_total / 3600:.1f} h on the machine the figures come from"
                 + (f" ({s.seconds_per_epoch_source})" if s.seconds_per_epoch_source else "")
                 + "; tuning counted without pruning (an upper bound)")
    if unknown:
        lines.append(f"no seconds_per_epoch for: {', '.join(unknown)} (not counted)")
    for arch, why in waiting.items():
        lines.append(f"{arch} waits for its search: {why}")
    note = runs_on_other_data(lp, experiment, runs)
    if note:
        lines.append(note)
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# export: the protocol's progress, carried to another machine
# ---------------------------------------------------------------------------------------------
#: the runs an export carries (tuning trials travel inside their study documents)
EXPORTED_PARTS = ("final", "default", "loss", "reference")
#: the trials it carries: a RUNNING or WAITING trial belongs to a process on this machine, and
#: the protocol there enqueues or runs it again
FINISHED_TRIAL_STATES = ("COMPLETE", "PRUNED", "FAIL")


def default_export_path(lp: LoadedProtocol) -> Path:
    return lp.path.parent / "progress" / f"{lp.spec.name}-v{lp.spec.version}.runs"


@dataclass
class ProtocolExport:
    path: Path
    runs: int
    trials: dict          # study name -> finished trials exported


def export_protocol(path: str | Path, out: Optional[str | Path] = None, experiment: Optional[str] = None,
                    storage: Optional[str] = None) -> ProtocolExport:
    """Write what the protocol has finished so far as a run export (``benchmark.results.run_export``): every
    finished final, default, loss-study and reference run it started (tags ``protocol.name`` and
    ``protocol.version``), and each of its studies with its finished trials.

    ``bench import`` of the folder into another store and journal (a fresh clone, another
    machine) gives ``bench protocol run`` there the state to resume from: its cells are matched
    by their config fingerprints, which the runs carry as tags, and each study continues from its
    trials. Left behind: checkpoints, the trials' own MLflow runs, and whatever is still running
    (it is trained again there)."""
    import optuna
    from benchmark.results.run_export import export_runs
    from benchmark.results.study_export import export_studies
    from benchmark.core.tracking import client, load_settings
    from benchmark.core.optuna_storage import open_storage
    lp = load_protocol(path)
    s = lp.spec
    settings = load_settings()
    cl = client(settings)
    runs = [r.info.run_id for r in finished_protocol_runs(lp, experiment)
            if r.data.tags.get("protocol.part") in EXPORTED_PARTS]
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    present = set(optuna.get_all_study_names(open_storage(storage)[0]))
    studies = export_studies([n for n in map(lp.study_name, s.architectures) if n in present], storage)
    for doc in studies:
        kept = [t for t in doc["trials"] if t["state"] in FINISHED_TRIAL_STATES]
        # numbered as the importing storage will number them (a running trial left out is a gap)
        doc["trials"] = [{**t, "number": i} for i, t in enumerate(kept)]
    dest = Path(out) if out else default_export_path(lp)
    export_runs(cl, runs, dest, experiment or settings.experiment, studies)
    return ProtocolExport(dest, len(set(runs)), {d["study_name"]: len(d["trials"]) for d in studies})


# ---------------------------------------------------------------------------------------------
def register(sub) -> None:
    p = sub.add_parser("protocol", help="run or inspect a declared, tuned benchmark protocol (protocols/*.yaml)")
    verbs = p.add_subparsers(dest="verb", required=True, metavar="{run,status,export}")
    for verb, help_ in (("run", "tune every architecture, train the tuned seeds, defaults and the loss study; "
                                "restartable"),
                        ("status", "what is done, what is left, and its estimated cost"),
                        ("export", "write what is finished as a run export, to resume on another machine after "
                                   "`bench import` there")):
        v = verbs.add_parser(verb, help=help_)
        v.add_argument("file", help="protocol file, e.g. protocols/cpu.yaml")
        v.add_argument("--experiment", help="MLflow experiment (default: mlflow.yaml's)")
        v.add_argument("--storage", help="Optuna storage URL or journal path (default: runs/optuna/journal.log)")
        if verb == "run":
            v.add_argument("--no-progress", action="store_true", help="hide the progress bars")
            v.add_argument("--scheduler", metavar="ADDRESS",
                           help="run the studies and cells on a Dask cluster: tcp://HOST:PORT of a running "
                                "scheduler, or local:N for N worker processes here (default: this process)")
            v.add_argument("--hours", type=float, metavar="H",
                           help="start no trial or run that would not end within H hours (by this machine's "
                                "measured seconds per epoch, else the protocol's seconds_per_epoch), then "
                                "stop; rerun to continue")
            v.add_argument("--pause-runs", action="store_true",
                           help="with --hours: start a run if its next epoch fits, and pause it after the last "
                                "epoch that does (KILLED, checkpoint kept); the next protocol run resumes it. "
                                "For a machine whose runs/ folder stays")
        if verb == "export":
            v.add_argument("--out", help="export folder (default: protocols/progress/<name>-v<version>.runs "
                                         "beside the protocol file)")
        v.set_defaults(func=_cmd)


def _cmd(args) -> None:
    from benchmark.campaigns.suite import SuiteFailed
    if args.verb == "status":
        print(protocol_status(args.file, args.experiment, args.storage))
        return
    if args.verb == "export":
        done = export_protocol(args.file, args.out, args.experiment, args.storage)
        trials = ", ".join(f"{name} {n}" for name, n in sorted(done.trials.items())) or "none"
        print(f"{done.runs} finished runs and the studies' finished trials ({trials}) are in {done.path}; "
              f"elsewhere: bench import {done.path}, then bench protocol run {args.file}")
        return
    with contextlib.ExitStack() as stack:
        executor = None
        if args.scheduler:
            from benchmark.campaigns.cluster import DaskExecutor
            executor = stack.enter_context(DaskExecutor.connect(args.scheduler))
        res = run_protocol(args.file, args.experiment, args.storage, show_progress=not args.no_progress,
                           executor=executor, hours=args.hours, pause_runs=args.pause_runs)
    failed = []
    for stage, r in res.suites:
        print(f"{stage}: {len(r.planned)} runs: {len(r.ran)} ran, {len(r.resumed)} resumed, "
              f"{len(r.skipped)} already done, {len(r.failed)} failed"
              + (f", {len(r.paused)} paused" if r.paused else "")
              + (f", {len(r.deferred)} left for the next run" if r.deferred else ""))
        failed += [f"{stage} {label}: {msg}" for label, msg in r.failed]
    if failed:
        raise SuiteFailed(f"{len(failed)} protocol runs failed ({'; '.join(failed)}); rerun the same command to "
                          f"retry them")
    if res.stopped:
        print(f"stopped at the time limit: {res.stopped}; rerun the same command to continue")
        return
    print(f"next: bench leaderboard --preset {load_protocol(args.file).spec.preset}")
