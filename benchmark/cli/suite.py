"""``bench suite``: the command line of the benchmark matrix (:mod:`benchmark.campaigns.suite`).

Kept apart from the matrix itself because it picks where the cells run: in this process, or on
a Dask cluster (:mod:`benchmark.campaigns.cluster`, whose workers run :func:`benchmark.campaigns.suite.run_cell`).
"""
from __future__ import annotations

import contextlib
import sys

from benchmark.campaigns.suite import SuiteFailed, run_suite


def register(sub) -> None:
    p = sub.add_parser("suite", help="run the matrix architectures x losses x seeds (+ reference runs); restartable")
    p.add_argument("--preset", help="smoke | cpu | paper (default: paper with CUDA, else cpu)")
    p.add_argument("--archs", nargs="+", metavar="ARCH", help="architectures (default: every registered one)")
    p.add_argument("--losses", nargs="+", metavar="LOSS", help="losses (default: dice_bce)")
    p.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 per cell (default 3)")
    p.add_argument("--experiment", help="MLflow experiment (default: mlflow.yaml's)")
    p.add_argument("--no-references", action="store_true", help="skip the reference runs (threshold baseline, inter-reader, phantom ceiling)")
    p.add_argument("--dry-run", action="store_true", help="list what would run and what is already done")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument("--scheduler", metavar="ADDRESS",
                   help="run the cells on a Dask cluster: tcp://HOST:PORT of a running scheduler, or local:N "
                        "to start N worker processes here (see docs/scaling.md)")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="config overrides for every cell; ARCH:key=value for one architecture")
    p.set_defaults(func=_cmd)


def _cmd(args) -> None:
    from benchmark.run.config import default_preset
    preset = args.preset
    if preset is None:
        preset, why = default_preset()
        print(f"preset: {preset} ({why}); choose with --preset", file=sys.stderr)
    # `--archs a b key=value` hands the overrides to --archs: give them back
    overrides = list(args.overrides)
    for attr in ("archs", "losses"):
        names = getattr(args, attr) or []
        overrides += [n for n in names if "=" in n]
        setattr(args, attr, [n for n in names if "=" not in n] or None)
    with contextlib.ExitStack() as stack:
        executor = None
        if args.scheduler and not args.dry_run:
            from benchmark.campaigns.cluster import DaskExecutor
            executor = stack.enter_context(DaskExecutor.connect(args.scheduler))
        res = run_suite(preset, args.archs, args.losses, args.seeds, overrides, experiment=args.experiment,
                        references=not args.no_references, show_progress=not args.no_progress,
                        dry_run=args.dry_run, executor=executor)
    if args.dry_run:
        for label, rid in res.skipped:
            print(f"done     {label:40s} {rid}")
        for label, rid in res.elsewhere:
            print(f"running  {label:40s} {rid}")
        for label, rid in res.resumed:
            print(f"resume   {label:40s} {rid}")
        for label, _ in res.ran:
            print(f"to run   {label}")
        return
    n = len(res.planned)
    print(f"suite [{preset}]: {n} runs planned: {len(res.ran)} ran, {len(res.resumed)} resumed, "
          f"{len(res.skipped)} already done, {len(res.failed)} failed ({res.seconds / 60:.1f} min)")
    if res.elsewhere:
        print(f"left alone, running in another live process: "
              f"{', '.join(f'{label} ({rid[:8]})' for label, rid in res.elsewhere)}")
    if res.failed:
        listing = "; ".join(f"{label}: {msg}" for label, msg in res.failed)
        raise SuiteFailed(f"{len(res.failed)} of {n} suite runs failed ({listing}); rerun the same command to "
                          f"retry them")
    print(f"next: bench leaderboard --preset {preset}")
