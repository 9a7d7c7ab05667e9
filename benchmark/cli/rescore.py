"""``bench rescore RUN_ID [--log]``: score a finished run again from its stored test predictions
(:mod:`benchmark.run.rescore`)."""
from __future__ import annotations

import sys

from benchmark.core.errors import UsageError
from benchmark.core.tracking import RESCORED_PER_NODULE_ARTIFACT
from benchmark.run.rescore import compare_with_logged, log_rescore, rescore_run


def register(sub) -> None:
    p = sub.add_parser("rescore", help="score a finished run again from its stored test predictions "
                                       "(a new metric for old runs, without retraining)")
    p.add_argument("run_id", metavar="RUN_ID", help="MLflow run id of a finished run")
    p.add_argument("--log", action="store_true",
                   help="log the aggregates the run lacks and evaluation/per_nodule_rescored.csv (default: print only)")
    p.add_argument("--accept-unverified", action="store_true",
                   help="with --log: accept a run evaluated before prediction digests were recorded "
                        "(its stored predictions cannot be checked)")
    p.set_defaults(func=_cmd)


def _cmd(args) -> None:
    if args.accept_unverified and not args.log:
        raise UsageError("--accept-unverified applies to --log only")
    df, flat, logged = rescore_run(args.run_id, require_digest=args.log and not args.accept_unverified)
    new, changed = compare_with_logged(flat, logged)
    print(f"run {args.run_id}: {len(df)} test nodules rescored; {len(flat)} aggregates, "
          f"{len(flat) - len(new) - len(changed)} equal to the logged ones, {len(changed)} different, {len(new)} new")
    for k, (old, v) in sorted(changed.items()):
        print(f"  changed {k}: logged {old:.6g}, now {v:.6g}")
    for k, v in sorted(new.items()):
        print(f"  new     {k}: {v:.6g}")
    if args.log:
        log_rescore(args.run_id, df, new)
        print(f"logged {len(new)} new aggregates and {RESCORED_PER_NODULE_ARTIFACT}"
              + ("; differing values were left as logged" if changed else ""), file=sys.stderr)
