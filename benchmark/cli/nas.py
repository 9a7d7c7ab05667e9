"""``bench search bixnas|dints``: the command line of the architecture searches
(:mod:`benchmark.campaigns.nas`, :mod:`benchmark.campaigns.dints_search`)."""
from __future__ import annotations

import argparse
import difflib
from pathlib import Path

from benchmark.campaigns.dints_search import run_dints_search
from benchmark.campaigns.nas import SEARCHERS, _meta, choose, run_search_worker, search
from benchmark.core.errors import UsageError
from benchmark.run.config import PRESETS


def register(sub) -> None:
    p = sub.add_parser("search", help="architecture search: bixnas (BiX-NAS's two phases as a multi-objective "
                                      "Optuna study) or dints (MONAI's DiNTS topology search)")
    p.add_argument("searcher", help="what to search: bixnas or dints")
    p.add_argument("--trials", type=int, default=24, help="phase-two candidates in total")
    p.add_argument("--preset", default="cpu", help="fidelity: smoke or cpu (default cpu)")
    p.add_argument("--epochs", type=int, help="bixnas: training epochs per phase-two candidate (default 3); "
                                              "dints: search epochs after the warm-up (default 20)")
    p.add_argument("--warmup-epochs", type=int, default=10, help="dints: weight-only warm-up epochs")
    p.add_argument("--ram-target", type=float, default=0.4, help="dints: memory ratio the decoded topology meets")
    p.add_argument("--phase1-epochs", type=int, default=6, help="training epochs of the phase-one super-network")
    p.add_argument("--population", type=int, default=8, help="NSGA-II population size (phase two)")
    p.add_argument("--study", help="study name (default: bixnas-<preset>)")
    p.add_argument("--storage", help="Optuna storage URL or journal path (default: runs/optuna/journal.log)")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # a phase-two process of `--workers K`
    p.add_argument("--choose", action="store_true", help="write the chosen genotype from a finished search")
    p.add_argument("--trade-off", default="knee", help="knee (default), dice or macs")
    p.add_argument("--out", help="genotype path for bixnas --choose and for dints (default "
                                 "architectures/<searcher>_genotype.json)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.set_defaults(func=_dispatch)


def _dispatch(args):
    if args.searcher not in SEARCHERS:
        close = difflib.get_close_matches(args.searcher, SEARCHERS, n=1)
        raise UsageError(f"unknown searcher {args.searcher!r}" + (f"; did you mean {close[0]}?" if close else "")
                         + f" (available: {', '.join(SEARCHERS)})")
    if args.preset not in PRESETS:
        raise UsageError(f"unknown preset {args.preset!r} (choose from {', '.join(PRESETS)})")
    if args.searcher == "dints":
        if args.preset == "smoke" and not args.out:
            raise UsageError("a smoke-preset DiNTS search would replace the registered topology; give --out")
        run_dints_search(args.preset, args.warmup_epochs, 20 if args.epochs is None else args.epochs, args.overrides,
                         Path(args.out) if args.out else None, ram_target=args.ram_target, show_progress=not args.no_progress)
        return
    args.epochs = 3 if args.epochs is None else args.epochs
    study = args.study or f"bixnas-{args.preset}"
    if args.choose:
        choose(study, args.storage, args.trade_off, args.out)
        return
    if min(args.trials, args.workers, args.epochs, args.phase1_epochs, args.population) < 1:
        raise UsageError("--trials, --workers, --epochs, --phase1-epochs and --population must be >= 1")
    meta = _meta(args.preset, args.epochs, args.phase1_epochs)
    if args.worker:
        run_search_worker(study, args.storage, args.trials, meta, args.overrides, False, args.population)
        return
    search(study, args.storage, args.trials, meta, args.overrides, args.workers, args.population,
           show_progress=not args.no_progress)
