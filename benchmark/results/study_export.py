"""Optuna studies in a run export: a study as one JSON document, and the document back as a study.

A tuned leaderboard row names the study it was tuned by (tag ``optuna.study``), but the Optuna
journal that holds the study (``runs/optuna/journal.log``) is git-ignored like the MLflow store.
``bench leaderboard --export`` therefore writes each such study beside the exported runs
(``benchmark.results.run_export``), and ``bench import`` recreates it in the user's Optuna storage, so that
``bench tune --report STUDY`` works on a fresh clone.

A study document (``study_document``)::

    {"study_name": ..., "directions": ["MAXIMIZE"], "user_attrs": {...},
     "trials": [{"number": 0, "state": "COMPLETE", "values": [0.61] | null,
                 "params": {name: {"value": ..., "distribution": <distribution_to_json, parsed>}},
                 "intermediate_values": [[step, value], ...], "user_attrs": {...},
                 "datetime_start": ISO 8601 | null, "datetime_complete": ISO 8601 | null}, ...]}

Left out: Optuna's internal system attributes and the sampler and pruner (they steer new trials,
not the record of the old ones). Imported trials keep their numbers, states, parameters with
their distributions, values, intermediate values, user attributes and times. The study's user
attributes are copied as they are, so ``mlflow_parent_run_id`` names the exporting machine's run;
``bench tune`` makes a new parent run when that one is not in the user's store.
"""
from __future__ import annotations

import datetime
import json
import sys
from typing import Iterable, Optional

from benchmark.core.errors import UsageError


def _iso(moment: Optional[datetime.datetime]) -> Optional[str]:
    return moment.isoformat() if moment else None


def _from_iso(text: Optional[str]) -> Optional[datetime.datetime]:
    return datetime.datetime.fromisoformat(text) if text else None


def trial_document(trial) -> dict:
    """One Optuna ``FrozenTrial`` as plain JSON data."""
    from optuna.distributions import distribution_to_json
    return {
        "number": trial.number,
        "state": trial.state.name,
        "values": list(trial.values) if trial.values is not None else None,
        "params": {name: {"value": trial.params[name],
                          "distribution": json.loads(distribution_to_json(trial.distributions[name]))}
                   for name in sorted(trial.params)},
        "intermediate_values": [[int(step), float(v)] for step, v in sorted(trial.intermediate_values.items())],
        "user_attrs": dict(trial.user_attrs),
        "datetime_start": _iso(trial.datetime_start),
        "datetime_complete": _iso(trial.datetime_complete),
    }


def study_document(study) -> dict:
    """A whole study (every trial, in number order) as plain JSON data."""
    return {"study_name": study.study_name, "directions": [d.name for d in study.directions],
            "user_attrs": dict(study.user_attrs),
            "trials": [trial_document(t) for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)]}


def frozen_trials(doc: dict) -> list:
    """The trials of a study document as Optuna ``FrozenTrial``s, ready for ``Study.add_trials``."""
    import optuna
    from optuna.distributions import json_to_distribution
    trials = []
    for t in doc["trials"]:
        trial = optuna.trial.create_trial(
            state=optuna.trial.TrialState[t["state"]],
            values=t["values"],
            params={name: p["value"] for name, p in t["params"].items()},
            distributions={name: json_to_distribution(json.dumps(p["distribution"])) for name, p in t["params"].items()},
            user_attrs=t["user_attrs"],
            intermediate_values={int(step): v for step, v in t["intermediate_values"]})
        # create_trial stamps the current time; the record keeps the trial's own
        trial.datetime_start = _from_iso(t["datetime_start"])
        trial.datetime_complete = _from_iso(t["datetime_complete"])
        trials.append(trial)
    return trials


def _warn(msg: str) -> None:
    print(f"warning: {msg}", file=sys.stderr)


def _open(storage_url: Optional[str]):
    from benchmark.core.optuna_storage import open_storage
    return open_storage(storage_url)


def export_studies(names: Iterable[str], storage_url: Optional[str] = None, warn=_warn) -> list[dict]:
    """The documents of these studies, read from ``storage_url`` (default: the project's journal).
    A missing default journal or a study that is gone is a warning (the export then lacks it),
    not an error: the runs themselves are still worth exporting."""
    import optuna
    from benchmark.core.optuna_storage import default_storage_path
    names = sorted(set(names))
    if not names:
        return []
    if not storage_url and not default_storage_path().is_file():
        warn(f"no Optuna journal at {default_storage_path()}; the export holds no tuning studies "
             f"(wanted: {', '.join(names)})")
        return []
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage, label = _open(storage_url)
    docs = []
    for name in names:
        try:
            study = optuna.load_study(study_name=name, storage=storage)
        except KeyError:
            warn(f"Optuna study {name!r} (tag optuna.study of exported runs) is not in {label}; "
                 f"its trials are not exported")
            continue
        docs.append(study_document(study))
    return docs


def _trials_text(trials: list[dict]) -> str:
    # compared as text: NaN intermediate values are equal to themselves there
    return json.dumps(trials, sort_keys=True)


def import_studies(docs: list[dict], storage_url: Optional[str] = None) -> dict[str, str]:
    """Recreate each study in ``storage_url`` (default: the project's journal); returns
    {study name: "created" | "present" | "completed"}.

    A study of the same name that already holds exactly these trials is left alone (importing
    twice changes nothing); one holding the first of them only (an import that was cut short)
    gets the rest ("completed"). Any other study of that name is refused with a ``UsageError``
    before anything is written, so a user's own study is never mixed with an imported one."""
    import optuna
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage, label = _open(storage_url)
    plan = []
    for doc in docs:
        name = doc["study_name"]
        try:
            existing = optuna.load_study(study_name=name, storage=storage)
        except KeyError:
            plan.append((doc, None, 0))
            continue
        have = study_document(existing)
        n_have = len(have["trials"])
        same_start = _trials_text(have["trials"]) == _trials_text(doc["trials"][:n_have])
        if have["directions"] != doc["directions"] or not same_start:
            raise UsageError(f"Optuna study {name!r} in {label} already holds other trials ({n_have} there, "
                             f"{len(doc['trials'])} in the export); import into another storage with --storage")
        plan.append((doc, existing, n_have))
    outcome = {}
    for doc, existing, n_have in plan:
        study = existing if existing is not None else \
            optuna.create_study(storage=storage, study_name=doc["study_name"],
                                directions=[optuna.study.StudyDirection[d] for d in doc["directions"]])
        for key, value in doc["user_attrs"].items():
            if key not in study.user_attrs:     # only what a cut-short import did not get to
                study.set_user_attr(key, value)
        remaining = frozen_trials(doc)[n_have:]
        if remaining:
            study.add_trials(remaining)
        outcome[doc["study_name"]] = "created" if existing is None else ("completed" if remaining else "present")
    return outcome
