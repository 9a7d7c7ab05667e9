"""Top-k re-scoring (``tuning.rescore``): which configuration of a study the finals train.

A study's best trial is the maximum of ``n_trials`` noisy values, so it is biased upwards and
partly chosen by the luck of its one seed. After the study, its ``top_k`` complete trials each
train ``seeds`` more times with new seeds (``RESCORE_SEED`` + i) on the full schedule, on the
validation split only (validation-only cells, tag ``protocol.part=rescore``: they choose a
configuration, so they never see the test split). The configuration with the best mean of its
trial value and those runs' values is chosen; the finals train it and carry the tags
``tuning.chosen_trial`` and ``tuning.rescored_value``. The runs are cells like any other, so a
stopped protocol skips the finished ones by their config fingerprint.
"""
from __future__ import annotations

from typing import Optional

from benchmark.campaigns.protocol.spec import LoadedProtocol, final_epochs

#: the seeds of the rescoring runs start here, clear of the finals' 0, 1, 2, ...
RESCORE_SEED = 1000


def top_trials(lp: LoadedProtocol, st) -> list:
    """The study's ``top_k`` complete trials, best first (ties: the earlier trial)."""
    import optuna
    rs = lp.spec.tuning.rescore
    complete = [t for t in st.trials if t.state == optuna.trial.TrialState.COMPLETE and t.value is not None]
    return sorted(complete, key=lambda t: (-t.value, t.number))[:rs.top_k] if rs else []


def rescore_cells(lp: LoadedProtocol, st) -> list:
    """Every rescoring run of a complete study: its top trials x ``rescore.seeds`` seeds."""
    from benchmark.campaigns.protocol.plan import trial_cell
    rs = lp.spec.tuning.rescore
    if not rs or st.best_trial is None:
        return []
    cells = []
    for trial in top_trials(lp, st):
        for i in range(rs.seeds):
            c = trial_cell(lp, st, trial, lp.spec.tuning.loss, RESCORE_SEED + i, "rescore")
            c.evaluate_test = False
            c.tags["optuna.trial"] = str(trial.number)     # (suite tags it evaluation=validation_only)
            cells.append(c)
    return cells


def run_value(cl, run, metric: str) -> Optional[float]:
    """A finished run's best validation value of ``metric`` over its epochs (a trial's value)."""
    if metric == "val_dice" and "best_val_dice" in run.data.metrics:
        return float(run.data.metrics["best_val_dice"])
    history = cl.get_metric_history(run.info.run_id, metric)
    return max((m.value for m in history), default=None)


def choose(lp: LoadedProtocol, st, experiment: Optional[str] = None) -> bool:
    """Decide the study's chosen trial (``st.chosen``) and every candidate's mean
    (``st.rescored``: trial number -> mean) from the finished rescoring runs; without
    ``tuning.rescore`` the best trial is chosen. False while a rescoring run is missing."""
    if st.best_trial is None:
        return False
    if not lp.spec.tuning.rescore:
        st.chosen = st.best_trial
        return True
    from benchmark.campaigns.suite import run_cells
    from benchmark.core.tracking import client, load_settings
    cells = rescore_cells(lp, st)
    res = run_cells(cells, "", experiment, show_progress=False, dry_run=True)
    if len(res.skipped) < len(cells):
        return False
    cl = client(load_settings())
    values: dict[int, list[float]] = {t.number: [t.value] for t in top_trials(lp, st)}
    for c, (_, run_id) in zip(cells, res.skipped):
        v = run_value(cl, cl.get_run(run_id), lp.spec.tuning.metric)
        if v is not None:
            values[int(c.tags["optuna.trial"])].append(v)
    st.rescored = {n: sum(v) / len(v) for n, v in values.items()}
    best = min(st.rescored, key=lambda n: (-st.rescored[n], n))
    st.chosen = next(t for t in st.trials if t.number == best)
    return True


def rescore_epochs(lp: LoadedProtocol) -> int:
    """Epochs of one rescoring run (the finals' schedule)."""
    return final_epochs(lp)
