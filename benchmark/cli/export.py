"""``bench import EXPORT``: load a run export (a leaderboard's ``.runs`` folder, a protocol's
progress) into this tracking store and Optuna storage (:mod:`benchmark.results.run_export`)."""
from __future__ import annotations

from pathlib import Path

from benchmark.results.run_export import ORIGINAL_ID_TAG, import_export


def register(sub) -> None:
    p = sub.add_parser("import", help="load an exported leaderboard's runs into your MLflow store (for bench ui)")
    p.add_argument("path", help="an export folder, e.g. leaderboards/lidc-phantom-cpu.runs")
    p.add_argument("--experiment", help="MLflow experiment to import into (default: mlflow.yaml's)")
    p.add_argument("--storage", help="Optuna storage URL or journal path to recreate the export's studies in "
                                     "(default: runs/optuna/journal.log)")
    p.set_defaults(func=_cmd)


def _cmd(args) -> None:
    done = import_export(Path(args.path), args.experiment, args.storage)
    print(f"{len(done.runs)} runs from {args.path} are in the tracking store (original ids in tag "
          f"{ORIGINAL_ID_TAG}); see them with `bench ui`")
    for name, outcome in sorted(done.studies.items()):
        what = {"created": "recreated", "present": "already there", "completed": "completed"}[outcome]
        storage = f" --storage {args.storage}" if args.storage else ""
        print(f"Optuna study {name}: {what}; see it with `bench tune --report {name}{storage}`")
