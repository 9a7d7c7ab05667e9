"""The leaderboard pipeline: collect the runs, build each table, write (and log) its files.

    bench leaderboard [--preset cpu] [--ranking aggregate|rank] [--out DIR] [--export | --from EXPORT]

Every MLflow call goes through ``benchmark.core.tracking``; ``--from`` reads a run export
(``benchmark.results.run_export``) instead and touches no tracking store.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from benchmark.core.errors import UsageError
from benchmark.results.leaderboard.collect import collect_runs, group_runs, mixed_groups_message, mlflow_filter, records_from_export
from benchmark.results.leaderboard.plots import make_plots
from benchmark.results.leaderboard.render import render_csv, render_html, render_markdown, table_cells, title
from benchmark.results.leaderboard.sections import build_sections, exported_runs, page_runs
from benchmark.results.leaderboard.statistics import RANKINGS, Leaderboard


def write_leaderboard(lb: Leaderboard, out_dir: Path, tracking_url: str = "") -> list[Path]:
    """The page's files; ``tracking_url``: the MLflow server its run ids link to (plain ids without)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    base = out_dir / lb.key.name
    files = [(base.with_suffix(".md"), render_markdown(lb, tracking_url)), (base.with_suffix(".csv"), render_csv(lb)),
             (base.with_suffix(".html"), render_html(lb, make_plots(lb), tracking_url))]
    for path, text in files:
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    return [p for p, _ in files]



@dataclass
class Generated:
    leaderboard: Leaderboard
    files: list[Path]
    markdown: str


def generate(preset: Optional[str] = None, ranking: str = "aggregate", out_dir: Optional[Path] = None,
             experiment: Optional[str] = None, source: Optional[str] = None, ground_truth: Optional[str] = None,
             split_hash: Optional[str] = None, data_hash: Optional[str] = None, run_filter: Optional[str] = None,
             n_boot: int = 2000, boot_seed: int = 0, log_to_mlflow: bool = True,
             from_export: Optional[Path] = None, export: bool = False,
             register_top: bool = False, study_storage: Optional[str] = None,
             tracking_url: str = "") -> list[Generated]:
    """Build, write (and log) one leaderboard per output name; refuse ambiguous groups.

    ``from_export``: read the runs from a run export (``benchmark.results.run_export``) instead of MLflow;
    nothing is logged then. ``export``: write ``<name>.runs/`` (the runs of each table and the
    Optuna studies they were tuned by, read from ``study_storage``, default the project's journal)
    beside it, so the page can be recomputed, byte for byte, from the repository alone.
    ``register_top``: put each table's top model in the MLflow model registry (see
    ``register_top_model``). ``tracking_url``: the MLflow UI's address, for links from each run id
    to its run page (e.g. ``http://127.0.0.1:5000``); without it the ids are plain text."""
    from benchmark.core.paths import home
    from benchmark.core.tracking import Tracker, client, load_settings
    if ranking not in RANKINGS:
        raise UsageError(f"unknown ranking {ranking!r} (choose from {', '.join(RANKINGS)})")
    if n_boot < 100:
        raise UsageError("--n-boot must be at least 100")
    if study_storage and not export:
        raise UsageError("--storage names where the studies to export are: it applies to --export only")
    if from_export is not None:
        if run_filter or experiment or export or register_top:
            raise UsageError("--from reads a run export: --filter, --experiment, --export and --register do not apply")
        runs, exp_name = records_from_export(Path(from_export), preset, source, ground_truth, split_hash, data_hash)
        log_to_mlflow, flt = False, ""
        if not runs:
            raise UsageError(f"the run export {from_export} holds no finished, test-evaluated runs for these filters")
    else:
        settings = load_settings()
        exp_name = experiment or settings.experiment
        cl = client(settings)
        exp = cl.get_experiment_by_name(exp_name)
        if exp is None:
            raise UsageError(f"no MLflow experiment {exp_name!r} in {settings.tracking_uri}; run `bench suite` first")
        flt = mlflow_filter(preset, source, ground_truth, split_hash, data_hash, run_filter)
        runs = collect_runs(cl, [exp.experiment_id], flt)
        if not runs:
            what = f" for preset {preset!r}" if preset else ""
            raise UsageError(f"no finished, test-evaluated runs{what} in experiment {exp_name!r}; "
                             f"run `bench suite --preset {preset or 'cpu'}` first")
    by_name = group_runs(runs)
    mixed = {n: g for n, g in by_name.items() if len(g) > 1}
    if mixed:
        raise UsageError("\n".join(mixed_groups_message(n, g) for n, g in mixed.items()))
    out_dir = Path(out_dir) if out_dir else home() / "leaderboards"
    results = []
    for name, [(key, group)] in by_name.items():
        if all(r.reference for r in group):
            print(f"note: {name} has only reference runs", file=sys.stderr)
        lb = build_sections(key, group, ranking, n_boot, boot_seed)
        lb.experiment = exp_name
        lb.n_source_runs = len({x.run_id for x in page_runs(lb)})
        files = write_leaderboard(lb, out_dir, tracking_url)
        if export:
            from benchmark.results.run_export import export_runs
            from benchmark.results.study_export import export_studies
            runs_of_table = exported_runs(lb)
            studies = export_studies({x.tags["optuna.study"] for x in runs_of_table if x.tags.get("optuna.study")},
                                     study_storage)
            files.append(export_runs(cl, {x.local_id for x in runs_of_table}, out_dir / f"{lb.key.name}.runs",
                                     exp_name, studies))
        results.append(Generated(lb, files, files[0].read_text(encoding="utf-8")))
        if register_top:
            register_top_model(lb)
    if log_to_mlflow:
        label = results[0].leaderboard.key.name if len(results) == 1 else "all"
        tracker = Tracker.start(f"leaderboard-{label}", {"kind": "leaderboard", "leaderboard.ranking": ranking},
                                experiment=exp_name)
        status = "FAILED"
        try:
            tracker.log_params({"ranking": ranking, "n_boot": n_boot, "boot_seed": boot_seed,
                                "filter": flt})
            for g in results:
                tracker.set_tags({f"leaderboard.{g.leaderboard.key.name}.runs":
                                  str(g.leaderboard.n_source_runs)})
                for f in g.files:
                    if f.is_file():     # not the run export folder: those runs are in this store already
                        tracker.log_artifact(f, "leaderboards")
            status = "FINISHED"
        finally:
            tracker.finish(status)
    return results


def register_top_model(lb: Leaderboard):
    """Register the top-ranked model of a table in the MLflow model registry, under the table's
    name (e.g. ``lidc-phantom-cpu``): of its seeds, the run with the best test Dice (the model a
    user would deploy); the version's description is the table's header and that row."""
    from benchmark.core.tracking import register_model
    top = next((r for r in lb.rows if not r.reference), None)
    if top is None:
        print(f"note: {lb.key.name} has no model row to register", file=sys.stderr)
        return None
    best = max(top.runs, key=lambda x: x.metrics.get("test_dice", float("-inf")))
    header, body = table_cells(lb)
    row = [str(c) for c in body[lb.rows.index(top)]]
    description = (f"{title(lb)}: top row, seed {best.seed} (test Dice {best.metrics.get('test_dice', float('nan')):.4f})"
                   f"\n\n| {' | '.join(header)} |\n|{'|'.join('---' for _ in header)}|\n| {' | '.join(row)} |")
    version = register_model(best.local_id, lb.key.name, description)
    print(f"registered {top.label} (run {best.run_id}) as {lb.key.name} version {version.version}", file=sys.stderr)
    return version
