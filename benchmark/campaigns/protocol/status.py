"""``bench protocol status``: what a protocol has done, what is left and what that costs, read
from the tracking store and the Optuna journal (it trains nothing and builds no crop cache)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from benchmark.campaigns.protocol.budget import (cells_cost, declared_cost, loss_study_affordable, loss_study_hours,
                                                 measured_seconds_per_epoch, trial_batch_factor, trial_epochs)
from benchmark.campaigns.protocol.estimate import part_table
from benchmark.campaigns.protocol.plan import (StudyState, default_cells, loss_cells, loss_study_archs, study_state,
                                               tuned_cell, waiting_for_search)
from benchmark.campaigns.protocol.spec import BEST, LoadedProtocol, final_epochs, load_protocol


def protocol_status(path: str | Path, experiment: Optional[str] = None, storage: Optional[str] = None) -> str:
    """What is done, what is left, and the estimated two-core cost of what is left (from the
    protocol's measured seconds per epoch; pruning makes the tuning figure an upper bound)."""
    lp = load_protocol(path)
    s = lp.spec
    runs = finished_protocol_runs(lp, experiment)
    report = _StatusReport(lp, experiment, spent_seconds(runs))
    report.lines.append(f"protocol {s.name} v{s.version} (sha {lp.sha}), preset {s.preset}, "
                        f"{len(s.architectures)} architectures")
    report.lines.append(f"{'architecture':16s} {'tuning':>10s} {'final':>7s} {'default':>8s}  {'spent (h)':>9s}  "
                        f"{'cost left (h)':>13s}  s/epoch declared, here")
    waiting = waiting_for_search(lp)
    states = {arch: report.arch_row(_with_choice(lp, study_state(lp, arch, storage), experiment), arch in waiting)
              for arch in s.architectures}
    if s.loss_study:
        report.loss_study_lines(states)
    # v7's runs beside the rows' (their time counts in "spent so far")
    report.spent_by.update({f"{part} {arch}": sec for (arch, part), sec in report.spent.items()
                            if part in ("rescore", "shared", "swap")})
    report.closing_lines(waiting)
    if _has_v7_parts(lp):
        from benchmark.campaigns.protocol.status_v7 import control_lines
        report.lines += control_lines(lp, states, storage, experiment)
        report.lines += part_table(lp)
    note = runs_on_other_data(lp, experiment, runs)
    if note:
        report.lines.append(note)
    return "\n".join(report.lines)


def _with_choice(lp: LoadedProtocol, st: StudyState, experiment: Optional[str]) -> StudyState:
    """The study with its chosen trial, where its rescoring runs are all finished."""
    from benchmark.campaigns.protocol.rescore import choose
    if st.finished >= st.n_trials:
        choose(lp, st, experiment)
    return st


def _has_v7_parts(lp: LoadedProtocol) -> bool:
    """Whether the protocol uses a part up to v6 did not have (v6's status reads as it did)."""
    s = lp.spec
    return bool(s.budget or s.recipe_control or s.tuning.rescore or s.tuning.second_sampler
                or s.tuning.pruner == "successive_halving")


@dataclass
class _StatusReport:
    """The status's lines, and the cost left and time spent they add up."""
    lp: LoadedProtocol
    experiment: Optional[str]
    spent: dict                                     # spent_seconds of the protocol's finished runs
    lines: list = field(default_factory=list)
    left_total: float = 0.0
    unknown: list = field(default_factory=list)     # rows without a seconds_per_epoch figure
    spent_by: dict = field(default_factory=dict)    # what each row and loss-study line has cost so far, in seconds

    def add(self, what: str, seconds: Optional[float]) -> None:
        if seconds is None:
            self.unknown.append(what)
        else:
            self.left_total += seconds

    def dry_run(self, cells: list):
        from benchmark.campaigns.suite import run_cells
        return run_cells(cells, "", self.experiment, show_progress=False, dry_run=True)

    def arch_row(self, st: StudyState, waits: bool) -> StudyState:
        """An architecture's row: its trials, final and default runs done, time spent and cost left."""
        lp, s, arch = self.lp, self.lp.spec, st.arch
        trials_left = max(0, st.n_trials - st.finished)
        left = declared_cost(lp, arch, trials_left * trial_epochs(lp), trial_batch_factor(lp))
        if st.done:
            cells = [tuned_cell(lp, st, s.tuning.loss, seed, "final") for seed in range(s.final.seeds)]
            res = self.dry_run(cells)
            fin_done = len(res.skipped)
            c = cells_cost(lp, cells, res)
        else:       # the tuned batch is not known yet: the preset's
            fin_done, fin_left = 0, s.final.seeds
            c = declared_cost(lp, arch, fin_left * final_epochs(lp))
        left = None if left is None or c is None else left + c
        d_done = 0
        if s.defaults.seeds:
            # the cells the runner trains (with v7's data budget), so that a done one is found
            cells = [c for c in default_cells(lp) if c.arch == arch and not c.reference]
            res = self.dry_run(cells)
            d_done = len(res.skipped)
            c = cells_cost(lp, cells, res)
            left = None if left is None or c is None else left + c
        self.add(arch, left)
        spent = self.spent
        self.spent_by[arch] = st.seconds + spent.get((arch, "final"), 0.0) + spent.get((arch, "default"), 0.0)
        if (arch, "loss") in spent:
            self.spent_by[f"loss study {arch}"] = spent[(arch, "loss")]
        # the costs above go by the declared figure (what the protocol declares must not depend on
        # the machine); beside it, the one measured on the runs an export carries (not the trials,
        # which it does not), so that the status reads the same after `bench import`
        declared = s.seconds_per_epoch.get(arch)
        here = measured_seconds_per_epoch(lp, arch, self.experiment, trials=False)
        speed = f"{'?' if declared is None else f'{declared:.1f}':>8s}, {'-' if here is None else f'{here:.1f}'}"
        self.lines.append(f"{arch:16s} {st.finished:>4d}/{st.n_trials:<5d} {fin_done:>3d}/{s.final.seeds:<3d} "
                          f"{d_done:>4d}/{s.defaults.seeds:<3d}  {self.spent_by[arch] / 3600:>9.2f}  "
                          f"{'?' if left is None else f'{left / 3600:.2f}':>13s}  "
                          f"{speed}" + ("  (waits for its search)" if waits else ""))
        return st

    def loss_study_line(self, states: dict[str, StudyState], a: str) -> None:
        s = self.lp.spec
        cells = loss_cells(self.lp, states, [a])
        res = self.dry_run(cells)
        # its cells of the tuning loss are the final runs, costed on the architecture's row
        self.add(f"loss study {a}", cells_cost(self.lp, [c for c in cells if c.loss != s.tuning.loss], res))
        self.lines.append(f"loss study {a}: {len(res.skipped)} done, "
                          f"{len(res.ran) + len(res.resumed) + len(res.elsewhere)} left, "
                          f"{self.spent_by.get(f'loss study {a}', 0.0) / 3600:.2f} h spent")

    def loss_study_lines(self, states: dict[str, StudyState]) -> None:
        lp, s, ls = self.lp, self.lp.spec, self.lp.spec.loss_study
        archs = loss_study_archs(lp, states)
        if archs is not None:
            for a in archs:
                self.loss_study_line(states, a)
            return
        n_other = len([x for x in ls.losses if x != s.tuning.loss])
        named = [a for a in ls.archs if a != BEST]
        self.lines.append(f"loss study: waiting for tuning to pick '{BEST}'; {len(ls.losses)} losses x {ls.seeds} "
                          f"seeds on {', '.join(named + [BEST])}")
        for a in named:     # a named architecture's loss cells run once its own study is done
            if a in states and states[a].done:
                self.loss_study_line(states, a)
            else:
                self.add(f"loss study {a}", declared_cost(lp, a, n_other * ls.seeds * final_epochs(lp)))
        hours = {a: loss_study_hours(lp, a) for a in s.architectures if a not in named}
        costs = [h for a, h in hours.items() if h is not None and loss_study_affordable(lp, a)]
        if costs:
            self.lines.append(f"  '{BEST}' adds {min(costs):.2f} to {max(costs):.2f} h, depending on which "
                              f"architecture wins")
        capped = [a for a in hours if not loss_study_affordable(lp, a)]
        if capped:
            self.lines.append(f"  not eligible for '{BEST}' (loss study over best_max_hours={ls.best_max_hours:g} h): "
                              + ", ".join(f"{a} ({hours[a]:.1f} h)" for a in capped))

    def closing_lines(self, waiting: dict[str, str]) -> None:
        s = self.lp.spec
        self.lines.append("s/epoch: at the preset's batch; 'here' is the median of this store's finished final, "
                          "default and loss runs of the preset ('-': none yet)")
        total = sum(self.spent_by.values())
        if total:
            top = max(self.spent_by, key=self.spent_by.get)
            self.lines.append(f"spent so far: {total / 3600:.1f} h on the machines that ran it (its trials' wall time "
                              f"and its finished runs' training time; data building and evaluation not counted), "
                              f"{top} {self.spent_by[top] / 3600:.1f} h of it ({100 * self.spent_by[top] / total:.0f} %)")
        self.lines.append(f"estimated cost left: {self.left_total / 3600:.1f} h on the machine the figures come from"
                          + (f" ({s.seconds_per_epoch_source})" if s.seconds_per_epoch_source else "")
                          + "; tuning counted without pruning (an upper bound)"
                          + ("; trials, finals, defaults and loss study only (every part: the table below)"
                             if _has_v7_parts(self.lp) else ""))
        if self.unknown:
            self.lines.append(f"no seconds_per_epoch for: {', '.join(self.unknown)} (not counted)")
        for arch, why in waiting.items():
            self.lines.append(f"{arch} waits for its search: {why}")


# ---------------------------------------------------------------------------------------------
# the protocol's runs in the tracking store
# ---------------------------------------------------------------------------------------------
def finished_protocol_runs(lp: LoadedProtocol, experiment: Optional[str] = None) -> list:
    """The store's FINISHED runs tagged with this protocol's name and version (every part)."""
    from benchmark.core.tracking import client, experiment_id, load_settings, search_all_runs
    settings = load_settings()
    cl = client(settings)
    where = (f"attributes.status = 'FINISHED' and tags.`protocol.name` = '{lp.spec.name}' "
             f"and tags.`protocol.version` = '{lp.spec.version}'")
    return search_all_runs(cl, [experiment_id(cl, settings, experiment)], where)


def spent_seconds(runs: list) -> dict[tuple[str, str], float]:
    """Training seconds of a protocol's finished runs (``finished_protocol_runs``), summed by
    architecture and part (``final``, ``default``, ``loss``; v7's ``rescore``, ``shared``, ``swap``): what the protocol has cost so far
    beside its trials (whose wall time is ``StudyState.seconds``). Only what a protocol export
    carries is counted, so the figure reads the same after ``bench import``."""
    from collections import defaultdict
    spent: dict[tuple[str, str], float] = defaultdict(float)
    for r in runs:
        part = r.data.tags.get("protocol.part")
        if part in ("final", "default", "loss", "rescore", "shared", "swap"):
            spent[(r.data.tags.get("arch", ""), part)] += r.data.metrics.get("train_seconds", 0.0)
    return dict(spent)


def runs_on_other_data(lp: LoadedProtocol, experiment: Optional[str] = None,
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

