"""What a protocol trains: its studies' identity and state, and the cells of its final,
default and loss-study runs (``benchmark.campaigns.suite.Cell``), built from a study's best trial."""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Optional

from benchmark.campaigns.protocol.budget import loss_study_affordable
from benchmark.campaigns.protocol.spec import BEST, LoadedProtocol, final_epochs


# ---------------------------------------------------------------------------------------------
# studies
# ---------------------------------------------------------------------------------------------
def study_meta(lp: LoadedProtocol, arch: str, offset: int = 0) -> dict:
    """The study's identity (a rerun with different values is refused by ``open_study``).
    ``offset``: a second-sampler study's seed offset (``tuning.second_sampler``). Keys added
    with v7 appear only when set, so a v6 study's identity reads as it was recorded."""
    s = lp.spec
    meta = {"arch": arch, "loss": s.tuning.loss, "preset": s.preset, "loss_space": False,
            "protocol": f"{s.name}/v{s.version}", "n_trials": s.tuning.n_trials, "epochs": s.tuning.epochs,
            "pruner": s.tuning.pruner_name(), "sampler": f"{s.tuning.sampler}:{s.tuning.sampler_seed + offset}"
            + (f":{s.tuning.startup_trials}" if s.tuning.startup_trials is not None else ""),
            "first_trial": s.tuning.first_trial,
            "size": s.tuning.size, "metric": s.tuning.metric, "schedule": s.tuning.schedule}
    if s.budget:
        meta["samples_per_epoch"] = s.budget.samples_per_epoch
    return meta


def budget_overrides(lp: LoadedProtocol) -> list[str]:
    """The protocol's data budget (``budget.samples_per_epoch``) as overrides; none up to v6."""
    return lp.spec.budget.overrides() if lp.spec.budget else []


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
    base = budget_overrides(lp) + list(t.overrides)
    if t.schedule == "truncated":
        return base + [f"train.epochs={final_epochs(lp)}", f"train.stop_after_epochs={t.epochs}"]
    if t.schedule == "full":      # the finals' whole schedule; the pruner stops the weak trials
        return base + [f"train.epochs={final_epochs(lp)}"]
    return base + [f"train.epochs={t.epochs}"]


@dataclass
class StudyState:
    arch: str
    name: str
    finished: int                 # complete + pruned trials
    n_trials: int
    best_trial: object = None     # optuna FrozenTrial of the best complete trial, once the study is done
    seconds: float = 0.0          # wall time of its trials so far
    offset: int = 0               # sampler seed offset (a second-sampler study: name suffix -s<offset>)
    trials: list = field(default_factory=list)   # its FrozenTrials
    chosen: object = None         # the trial the finals train (``rescore.choose``; the best without rescoring)
    rescored: dict = field(default_factory=dict)  # trial number -> mean of trial value and rescoring runs

    def __post_init__(self):
        if self.chosen is None:     # built with its best trial (no rescoring): that is the choice
            self.chosen = self.best_trial

    @property
    def value(self) -> Optional[float]:
        """What ranks the study's architecture: its chosen trial's rescored mean, else its best value."""
        if self.chosen is not None and self.chosen.number in self.rescored:
            return self.rescored[self.chosen.number]
        return None if self.best_trial is None else self.best_trial.value

    @property
    def done(self) -> bool:
        """Every trial finished and the configuration the finals train chosen."""
        return self.finished >= self.n_trials and self.chosen is not None


def study_state(lp: LoadedProtocol, arch: str, storage: Optional[str], offset: int = 0) -> StudyState:
    import optuna
    from benchmark.core.optuna_storage import open_storage
    name = lp.study_name(arch, offset)
    st = StudyState(arch, name, 0, lp.spec.tuning.n_trials, offset=offset)
    storage_obj, _ = open_storage(storage)
    try:
        study = optuna.load_study(study_name=name, storage=storage_obj)
    except KeyError:
        return st
    S = optuna.trial.TrialState
    trials = st.trials = study.get_trials(deepcopy=False)
    st.finished = sum(t.state in (S.COMPLETE, S.PRUNED) for t in trials)
    st.seconds = sum((t.datetime_complete - t.datetime_start).total_seconds() for t in trials
                     if t.datetime_complete and t.datetime_start)
    if st.finished >= st.n_trials:
        try:
            st.best_trial = study.best_trial
        except ValueError:
            st.best_trial = None   # every trial pruned or failed: nothing to train
        if st.best_trial is not None and not lp.spec.tuning.rescore:
            st.chosen = st.best_trial
    return st


# ---------------------------------------------------------------------------------------------
# cells
# ---------------------------------------------------------------------------------------------
def final_overrides(lp: LoadedProtocol, seed: int) -> list[str]:
    """What the final runs add to a replayed trial: the preset's (or the declared) epoch budget,
    every epoch of it (a truncated trial stopped early), and the seed (later overrides win over
    the trial's own ``train.epochs`` and ``train.stop_after_epochs``)."""
    epochs = final_epochs(lp)
    out = budget_overrides(lp) + list(lp.spec.final.overrides)
    if epochs:
        out.append(f"train.epochs={epochs}")
    if lp.spec.tuning.schedule == "truncated":
        out.append("train.stop_after_epochs=null")
    return out + [f"train.seed={seed}"]


def tuned_cell(lp: LoadedProtocol, st: StudyState, loss: str, seed: int, part: str):
    """A run of the study's chosen configuration (``st.chosen``: its best trial, or the rescored
    choice), with the tuning tags; the rescored choice is tagged ``tuning.chosen_trial``,
    ``tuning.rescored_value`` and ``tuning.rescored_candidates``."""
    c = trial_cell(lp, st, st.chosen or st.best_trial, loss, seed, part)
    if st.rescored and st.chosen is not None:
        c.tags.update({"tuning.chosen_trial": str(st.chosen.number),
                       "tuning.rescored_value": f"{st.rescored[st.chosen.number]:.6g}",
                       # every candidate's mean, best first: "t2:0.44,t1:0.41,t0:0.3"
                       "tuning.rescored_candidates": ",".join(
                           f"t{n}:{v:.4g}" for n, v in sorted(st.rescored.items(), key=lambda kv: (-kv[1], kv[0])))})
    return c


def trial_cell(lp: LoadedProtocol, st: StudyState, trial, loss: str, seed: int, part: str,
               extra: tuple[str, ...] = ()):
    """A run of ``trial``'s exact configuration on the finals' schedule (``extra`` overrides win)."""
    from benchmark.run.run_args import validate_names
    from benchmark.campaigns.suite import Cell
    from benchmark.campaigns.search_space import config_from_overrides, replay_overrides
    meta = study_meta(lp, st.arch, st.offset)
    overrides = replay_overrides(trial, meta) + final_overrides(lp, seed) + list(extra)
    cfg = config_from_overrides({**meta, "loss": loss}, overrides)
    validate_names(cfg)
    t = lp.spec.tuning
    epochs = {"truncated": f"first {t.epochs} of {final_epochs(lp)} epochs",
              "full": f"{final_epochs(lp)} epochs"}.get(t.schedule, f"{t.epochs} epochs")
    pruner = t.pruner if t.pruner != "successive_halving" else \
        f"successive halving (min {t.min_epochs} epochs, factor {t.reduction_factor})"
    budget = f"{t.n_trials} trials x {epochs}, {pruner} pruner" + \
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
    # the default row is the default recipe trained as the tuned rows are: the data budget, and
    # under v7's full schedule the finals' epochs too (the preset's 20 would make "gain from
    # tuning" partly a gain from 10 more epochs; up to 2026-12-07 cpu v7's first two default runs
    # trained 20). v6 (truncated schedule) trains its finals at the preset's epochs: unchanged.
    overrides = budget_overrides(lp)
    if lp.spec.tuning.schedule == "full":
        overrides = overrides + [f"train.epochs={final_epochs(lp)}"]
    cells = plan_cells(lp.spec.preset, lp.spec.architectures, [lp.spec.tuning.loss], d.seeds, overrides, d.references)
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
    ranked = sorted((states[a] for a in candidates), key=lambda s: (-s.value, s.arch))
    return fixed + ([ranked[0].arch] if ranked else [])


def loss_cells(lp: LoadedProtocol, states: dict[str, StudyState], archs: list[str]) -> list:
    ls = lp.spec.loss_study
    return [tuned_cell(lp, states[a], loss, seed, "loss")
            for seed in range(ls.seeds) for a in archs for loss in ls.losses]


def final_cells(lp: LoadedProtocol, st: StudyState) -> list:
    """The final runs of a complete study (its best trial x ``final.seeds``); none, with a note why,
    while it is unfinished or has no completed trial."""
    if st.best_trial is None:
        if st.finished >= st.n_trials:
            print(f"protocol: study {st.name} has no completed trial; {st.arch} gets no tuned runs", file=sys.stderr)
        else:
            print(f"protocol: study {st.name} holds {st.finished}/{st.n_trials} trials; {st.arch} gets its "
                  f"final runs once it is complete (rerun the command)", file=sys.stderr)
        return []
    if st.chosen is None:
        print(f"protocol: study {st.name} waits for its rescoring runs before its finals (rerun the command)",
              file=sys.stderr)
        return []
    return [tuned_cell(lp, st, lp.spec.tuning.loss, seed, "final") for seed in range(lp.spec.final.seeds)]

