"""``bench leaderboard``: the command's arguments; the work is ``results.leaderboard.generate``."""
from __future__ import annotations

import sys
from pathlib import Path

from benchmark.results.leaderboard.generate import generate
from benchmark.results.leaderboard.statistics import RANKINGS


def register(sub) -> None:
    p = sub.add_parser("leaderboard", help="write leaderboards/<dataset>-<preset>.{md,csv,html} from MLflow runs")
    p.add_argument("--preset", help="only runs of this preset (default: every preset found, one table each)")
    p.add_argument("--ranking", default="aggregate", choices=RANKINGS,
                   help="aggregate-then-rank (default) or rank-then-aggregate over test nodules")
    p.add_argument("--out", help="output folder (default: leaderboards/ in the project home; with --from, the "
                                 "export's own folder, where the page it was exported with lives)")
    p.add_argument("--experiment", help="MLflow experiment (default: mlflow.yaml's)")
    p.add_argument("--source", help="only this data source (phantom | dicom)")
    p.add_argument("--ground-truth", help="only this ground truth (staple | consensus)")
    p.add_argument("--split-hash", help="only runs on this split (tag data.split_hash)")
    p.add_argument("--data-hash", help="only runs on this crop data (a prefix of tag data.content_hash)")
    p.add_argument("--filter", dest="run_filter", help="extra MLflow filter string, e.g. \"tags.arch != 'x'\"")
    p.add_argument("--n-boot", type=int, default=2000, help="bootstrap resamples (default 2000)")
    p.add_argument("--boot-seed", type=int, default=0, help="bootstrap seed (default 0)")
    p.add_argument("--no-log", action="store_true", help="do not log the files to an MLflow run")
    p.add_argument("--export", action="store_true",
                   help="also write <name>.runs/: every run behind each table (params, tags, metric histories, "
                        "config, per-nodule CSV) and the Optuna studies of its tuned rows, so `--from` can "
                        "recompute it without MLflow and `bench import` can load it elsewhere")
    p.add_argument("--storage", help="with --export: Optuna storage URL or journal path holding the studies "
                                     "(default: runs/optuna/journal.log)")
    p.add_argument("--register", action="store_true",
                   help="put each table's top model (its best seed) in the MLflow model registry, named after the table")
    p.add_argument("--from", dest="from_export", metavar="EXPORT",
                   help="recompute from a run export folder (e.g. leaderboards/lidc-phantom-cpu.runs) instead of MLflow")
    p.add_argument("--tracking-url", default="", metavar="URL",
                   help="the MLflow UI's address (e.g. http://127.0.0.1:5000): each run id on the page links to its "
                        "run there (default: plain ids)")
    p.set_defaults(func=_cmd)


def _cmd(args) -> None:
    # a page recomputed from its export goes back beside that export: recomputing
    # leaderboards/nas-control/x.runs must not overwrite the main leaderboards/x.md of the same name
    out = args.out or (str(Path(args.from_export).parent) if args.from_export else None)
    results = generate(preset=args.preset, ranking=args.ranking, out_dir=out, experiment=args.experiment,
                       source=args.source, ground_truth=args.ground_truth, split_hash=args.split_hash,
                       data_hash=args.data_hash, run_filter=args.run_filter, n_boot=args.n_boot,
                       boot_seed=args.boot_seed, log_to_mlflow=not args.no_log,
                       from_export=args.from_export, export=args.export, register_top=args.register,
                       study_storage=args.storage, tracking_url=args.tracking_url)
    for g in results:
        print(g.markdown)
        print("wrote " + ", ".join(str(f) for f in g.files), file=sys.stderr)
