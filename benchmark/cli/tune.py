"""``bench tune``: the command line of the Optuna studies (:mod:`benchmark.campaigns.tune`)."""
from __future__ import annotations

from benchmark.campaigns.tune import DEFAULT_MAX_FAILURES, tune_study
from benchmark.campaigns.tune_report import report_study
from benchmark.core.errors import UsageError
from benchmark.run.run_args import add_config_arguments, resolve_config


def register(sub) -> None:
    p = sub.add_parser("tune", help="Optuna study over an architecture's search space (validation split only)")
    add_config_arguments(p)
    p.add_argument("--trials", type=int, default=20, help="finished (complete or pruned) trials the study should hold")
    p.add_argument("--study", help="study name (rerun the same command to resume it)")
    p.add_argument("--storage", help="Optuna storage URL or journal path (default: runs/optuna/journal.log)")
    p.add_argument("--workers", type=int, default=1, help="worker processes on this machine")
    p.add_argument("--pruner", default="median", choices=["median", "hyperband", "successive_halving", "none"],
                   help="stop weak trials early (default median); successive_halving: rungs after --min-epochs "
                        "epochs, each keeping 1/--reduction-factor (multi-fidelity, as protocol v7 tunes)")
    p.add_argument("--min-epochs", type=int, default=1, metavar="N",
                   help="successive_halving: epochs before the first rung (default 1)")
    p.add_argument("--reduction-factor", type=int, default=3, metavar="F",
                   help="successive_halving: a rung keeps 1/F of the trials (default 3)")
    p.add_argument("--fix", action="append", metavar="NAME=VALUE", help="pin a search parameter")
    p.add_argument("--narrow", action="append", metavar="NAME=LOW:HIGH", help="shrink a search range")
    p.add_argument("--max-failures", type=int, default=DEFAULT_MAX_FAILURES, metavar="N",
                   help=f"stop a worker after N trials in a row failed (default {DEFAULT_MAX_FAILURES})")
    p.add_argument("--report", metavar="STUDY", help="print and log the study's best trial, importances, plots")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_dispatch)


def pruner_name(args) -> str:
    """The pruner as ``benchmark.campaigns.tune.make_pruner`` names it."""
    if args.pruner != "successive_halving":
        return args.pruner
    if args.min_epochs < 1 or args.reduction_factor < 2:
        raise UsageError("successive_halving needs --min-epochs >= 1 and --reduction-factor >= 2")
    return f"successive_halving:{args.min_epochs}:{args.reduction_factor}"


def _dispatch(args):
    if args.report:
        return report_study(args.report, args.storage)
    if not args.study:
        raise UsageError("bench tune needs --study NAME (or --report STUDY)")
    if not args.arch:
        raise UsageError("bench tune needs --arch NAME (see `bench archs`)")
    cfg = resolve_config(args)
    meta = {"arch": cfg.model.arch, "loss": cfg.loss.name, "preset": cfg.preset}
    if args.trials < 1:
        raise UsageError("--trials must be >= 1")
    if args.workers < 1:
        raise UsageError("--workers must be >= 1")
    if args.max_failures < 1:
        raise UsageError("--max-failures must be >= 1")
    return tune_study(args.study, args.storage, meta, args.trials, args.overrides, args.fix or [], args.narrow or [],
                      pruner=pruner_name(args), workers=args.workers, max_failures=args.max_failures,
                      show_progress=not args.no_progress)
