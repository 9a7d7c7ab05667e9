"""``bench protocol run|status|export``: the command line of a declared protocol
(:mod:`benchmark.campaigns.protocol`)."""
from __future__ import annotations

import contextlib

from benchmark.campaigns.protocol import export_protocol, load_protocol, protocol_status, run_protocol
from benchmark.campaigns.protocol.runner import WAIT_SECONDS, listed, run_protocol_waiting
from benchmark.campaigns.suite import SuiteFailed
from benchmark.core.errors import UsageError


def register(sub) -> None:
    p = sub.add_parser("protocol", help="run or inspect a declared, tuned benchmark protocol (protocols/*.yaml)")
    verbs = p.add_subparsers(dest="verb", required=True, metavar="{run,status,export,curves}")
    for verb, help_ in (("run", "tune every architecture, train the tuned seeds, defaults and the loss study; "
                                "restartable"),
                        ("status", "what is done, what is left, and its estimated cost"),
                        ("export", "write what is finished as a run export, to resume on another machine after "
                                   "`bench import` there")):
        v = verbs.add_parser(verb, help=help_)
        v.add_argument("file", help="protocol file, e.g. protocols/cpu.yaml")
        v.add_argument("--experiment", help="MLflow experiment (default: mlflow.yaml's)")
        v.add_argument("--storage", help="Optuna storage URL or journal path (default: runs/optuna/journal.log)")
        if verb == "run":
            v.add_argument("--no-progress", action="store_true", help="hide the progress bars")
            v.add_argument("--scheduler", metavar="ADDRESS",
                           help="run the studies and cells on a Dask cluster: tcp://HOST:PORT of a running "
                                "scheduler, or local:N for N worker processes here (default: this process)")
            v.add_argument("--hours", type=float, metavar="H",
                           help="start no trial or run that would not end within H hours (by this machine's "
                                "measured seconds per epoch, else the protocol's seconds_per_epoch), then "
                                "stop; rerun to continue")
            v.add_argument("--pause-runs", action="store_true",
                           help="with --hours: start a run if its next epoch fits, and pause it after the last "
                                "epoch that does (KILLED, checkpoint kept); the next protocol run resumes it. "
                                "For a machine whose runs/ folder stays")
            v.add_argument("--wait", action="store_true",
                           help="with --hours: while another process on this host holds part of what is left "
                                f"(a study it tunes, a run it trains), look again every {WAIT_SECONDS / 60:g} "
                                "minutes until the time limit instead of ending, and take up what it unlocks (two workers side "
                                "by side: tools/protocol-session)")
        if verb == "export":
            v.add_argument("--out", help="export folder (default: protocols/progress/<name>-v<version>.runs "
                                         "beside the protocol file)")
        v.set_defaults(func=_cmd)
    _register_curves(verbs)


def _register_curves(verbs) -> None:
    v = verbs.add_parser("curves", help="learning curves that set the final schedule: each architecture's default "
                                        "recipe for several schedule lengths, validation only; restartable")
    v.add_argument("file", help="protocol file, e.g. protocols/cpu-v7.yaml (its preset, data budget and loss)")
    v.add_argument("--archs", nargs="+", default=[], help="architectures to measure")
    v.add_argument("--epochs", nargs="+", type=int, default=[], metavar="N",
                   help="schedule lengths, each trained as its own run (the cosine spans the whole run)")
    v.add_argument("--seeds", type=int, default=2, help="seeds per cell (default 2)")
    v.add_argument("--experiment", help="MLflow experiment (default: curves)")
    v.add_argument("--out", help="write the summary JSON here and the figure beside it (.png), from the finished "
                                 "runs, instead of training")
    v.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    v.set_defaults(func=_cmd_curves)


def _cmd_curves(args) -> None:
    from benchmark.campaigns.protocol.curves import run_curves, write_curves
    if args.out:
        out, png, table = write_curves(args.file, args.out, args.experiment)
        for arch, cells in sorted(table.items()):
            for n, cell in sorted(cells.items(), key=lambda kv: int(kv[0])):
                print(f"{arch:14s} {int(n):4d} epochs: best val Dice {cell['mean_best_val_dice']:.3f} "
                      f"(sd {cell['sd_best_val_dice']}), best epoch {cell['mean_best_epoch']}, "
                      f"{cell['still_improving']}/{len(cell['runs'])} still improving")
        print(f"wrote {out} and {png}")
        return
    r = run_curves(args.file, args.archs, args.epochs, args.seeds, args.experiment, not args.no_progress)
    print(f"curves: {len(r.planned)} runs: {len(r.ran)} ran, {len(r.resumed)} resumed, {len(r.skipped)} already "
          f"done, {len(r.elsewhere)} with another process, {len(r.failed)} failed")
    if r.failed:
        raise SuiteFailed("; ".join(f"{label}: {msg}" for label, msg in r.failed))


def _cmd(args) -> None:
    if args.verb == "status":
        print(protocol_status(args.file, args.experiment, args.storage))
        return
    if args.verb == "export":
        done = export_protocol(args.file, args.out, args.experiment, args.storage)
        trials = ", ".join(f"{name} {n}" for name, n in sorted(done.trials.items())) or "none"
        print(f"{done.runs} finished runs and the studies' finished trials ({trials}) are in {done.path}; "
              f"elsewhere: bench import {done.path}, then bench protocol run {args.file}")
        return
    if args.wait and (args.hours is None or args.scheduler):
        raise UsageError("--wait needs --hours (how long to wait at most) and runs in this process, not with "
                         "--scheduler")
    with contextlib.ExitStack() as stack:
        executor = None
        if args.scheduler:
            from benchmark.campaigns.cluster import DaskExecutor
            executor = stack.enter_context(DaskExecutor.connect(args.scheduler))
        if args.wait:
            passes = run_protocol_waiting(args.file, args.hours, experiment=args.experiment, storage=args.storage,
                                          show_progress=not args.no_progress, pause_runs=args.pause_runs)
        else:
            passes = [run_protocol(args.file, args.experiment, args.storage, show_progress=not args.no_progress,
                                   executor=executor, hours=args.hours, pause_runs=args.pause_runs)]
    failed = []
    for res in passes:
        for stage, r in res.suites:
            if not (r.ran or r.resumed or r.failed or r.paused) and len(passes) > 1:
                continue            # a later pass's stages that found everything done or held elsewhere
            print(f"{stage}: {len(r.planned)} runs: {len(r.ran)} ran, {len(r.resumed)} resumed, "
                  f"{len(r.skipped)} already done, {len(r.failed)} failed"
                  + (f", {len(r.elsewhere)} with another process" if r.elsewhere else "")
                  + (f", {len(r.paused)} paused" if r.paused else "")
                  + (f", {len(r.deferred)} left for the next run" if r.deferred else ""))
            failed += [f"{stage} {label}: {msg}" for label, msg in r.failed]
    if failed:
        raise SuiteFailed(f"{len(failed)} protocol runs failed ({'; '.join(failed)}); rerun the same command to "
                          f"retry them")
    res = passes[-1]
    if res.stopped:
        print(f"stopped at the time limit: {res.stopped}; rerun the same command to continue")
        return
    if res.elsewhere:
        # not finished: what is left is another process's, and what waits for it has not run
        print(f"another process on this host holds {listed(res.elsewhere)}: rerun the same command once it "
              f"ends (or add --wait with --hours)")
        return
    print(f"next: bench leaderboard --preset {load_protocol(args.file).spec.preset}")
