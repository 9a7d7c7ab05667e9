"""``bench tune --report STUDY``: a study's summary, parameter importances and plots (the plots
and its best trial logged to the study's MLflow parent run)."""
from __future__ import annotations

import contextlib
import json
import sys
import tempfile
from pathlib import Path
from typing import Optional

from benchmark.campaigns.tune import open_study, print_summary
from benchmark.core.errors import UsageError


def report_study(study_name: str, storage: Optional[str]) -> None:
    """Print the study's summary and parameter importances, and log its plots and best trial to
    its MLflow parent run (when this tracking store holds it)."""
    import optuna
    study, _ = open_study(study_name, storage, 1, None, "median", create=False)
    print_summary(study)
    completed = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not completed:
        raise UsageError(f"study {study_name!r} has no completed trial to report on")
    importances = {}
    if len(completed) >= 2:
        with contextlib.suppress(Exception):
            importances = optuna.importance.get_param_importances(study)
    if importances:
        print("parameter importances:")
        for k, v in importances.items():
            print(f"  {k:32s} {v:.3f}")
    parent = study.user_attrs.get("mlflow_parent_run_id")
    if parent:
        _log_to_parent_run(study, parent, importances)


def _log_to_parent_run(study, parent: str, importances: dict) -> None:
    from benchmark.core.tracking import Tracker, client, load_settings
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
        t.log_text(json.dumps({"best_trial": b.number, "value": b.value, "params": b.params,
                               "importances": importances}, indent=2), "optuna/best.json")
    print(f"plots logged to MLflow parent run {parent}")

