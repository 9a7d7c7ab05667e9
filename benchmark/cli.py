"""The ``bench`` command line.

    bench run --arch transfuse [--loss dice_bce] [--preset cpu] [train.epochs=5 optim.lr=3e-4 ...]
    bench run --resume RUN_ID
    bench archs | bench losses | bench data ... | bench baseline | bench ui | bench sync FILE
    bench tune ... | bench suite ... | bench leaderboard ... | bench search bixnas ...

Every user-caused problem ends as one line on stderr and a non-zero exit code (see
``benchmark.errors``), never a traceback. ``LIDC_BENCH_DEBUG=1`` shows tracebacks.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings

# Library deprecation chatter (torch.jit via MONAI/timm, pkg_resources via pylidc) is not for
# the user of a command line: keep stderr for our own one-line messages.
for _cat in (FutureWarning, DeprecationWarning, UserWarning):
    warnings.filterwarnings("ignore", category=_cat)

from .errors import BenchError, UsageError
from .run_args import add_config_arguments, resolve_config

#: modules that add their own sub-commands with ``register(subparsers)``
COMMAND_MODULES = ["benchmark.data.cli", "benchmark.tune", "benchmark.suite", "benchmark.leaderboard",
                   "benchmark.nas", "benchmark.protocol", "benchmark.export"]


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (and exit code 2)."""

    def error(self, message):
        raise UsageError(f"{self.prog}: {message}")


# ------------------------------------------------------------------------------------------
def cmd_run(args):
    from .train import run_experiment
    if args.resume:
        if args.arch or args.overrides or args.config or args.params_from:
            raise UsageError("--resume takes no other config: the run's own config is used")
        result = run_experiment(None, resume_run_id=args.resume, show_progress=not args.no_progress)
    else:
        tags = {}
        if args.params_from:
            from .tune import best_params_overrides
            extra, tags, meta = best_params_overrides(args.params_from, args.storage)
            args.overrides = extra + list(args.overrides)
            args.arch = args.arch or meta.get("arch")
            args.loss = args.loss or meta.get("loss")
            args.preset = args.preset or meta.get("preset")
        if not args.arch and not args.config:
            raise UsageError("bench run needs --arch NAME (see `bench archs`) or --config FILE")
        cfg = resolve_config(args)
        if args.name:
            cfg.name = args.name
        result = run_experiment(cfg, tags=tags, show_progress=not args.no_progress)
    t = result.test_summary
    line = f"run {result.run_id}: best val Dice {result.best_val_dice:.4f} (epoch {result.best_epoch})"
    if t:
        line += f"; test Dice {t['dice_mean']:.4f}, HD95 {t['hd95_mm_mean']:.2f} mm ({t['n']} nodules)"
    print(line)


def cmd_archs(args):
    from .archs_table import print_table
    print_table(args)


def cmd_losses(args):
    from .losses import LOSSES
    for name in LOSSES.names():
        e = LOSSES.entry(name)
        print(f"{name:18s} {e.family:10s} {e.paper}")


def cmd_ui(args):
    import subprocess
    from .tracking import load_settings
    s = load_settings()
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", s.tracking_uri,
           "--host", args.host, "--port", str(args.port)]
    if s.artifact_location:
        cmd += ["--default-artifact-root", s.artifact_location]
    print(" ".join(cmd), file=sys.stderr)
    raise SystemExit(subprocess.call(cmd))


def cmd_sync(args):
    from .tracking import sync_offline
    n = sync_offline(args.path)
    print(f"replayed {n} buffered records into MLflow")


def cmd_baseline(args):
    from .baseline_run import run_threshold_baseline
    cfg = resolve_config(args)
    run_id, summary = run_threshold_baseline(cfg)
    print(f"run {run_id}: threshold baseline test Dice {summary['dice_mean']:.4f}, HD95 {summary['hd95_mm_mean']:.2f} mm")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="bench", description="lidc-bench: fair, tracked 3D nodule-segmentation benchmarks")
    sub = p.add_subparsers(dest="command", parser_class=_Parser)

    r = sub.add_parser("run", help="train an architecture on the fixed split and evaluate it on test")
    add_config_arguments(r)
    r.add_argument("--name", help="MLflow run name")
    r.add_argument("--resume", metavar="RUN_ID", help="continue an interrupted run from its last completed epoch")
    r.add_argument("--params-from", metavar="STUDY", help="train with the best parameters of an Optuna study")
    r.add_argument("--storage", help="Optuna storage URL for --params-from (default: the project journal)")
    r.add_argument("--no-progress", action="store_true", help="hide progress bars")
    r.set_defaults(func=cmd_run)

    a = sub.add_parser("archs", help="list registered architectures with parameters, MACs and latency")
    a.add_argument("--preset", help="patch size to measure at (default: cpu)")
    a.add_argument("--no-cost", action="store_true", help="skip building models (names only)")
    a.add_argument("--filter", default="*", help="glob over names")
    a.set_defaults(func=cmd_archs)

    lo = sub.add_parser("losses", help="list registered losses")
    lo.set_defaults(func=cmd_losses)

    b = sub.add_parser("baseline", help="evaluate the non-learned threshold baseline on test (an MLflow run)")
    add_config_arguments(b)
    b.set_defaults(func=cmd_baseline)

    u = sub.add_parser("ui", help="serve the MLflow UI on the configured store")
    u.add_argument("--host", default="127.0.0.1")
    u.add_argument("--port", type=int, default=5000)
    u.set_defaults(func=cmd_ui)

    s = sub.add_parser("sync", help="replay metrics buffered while the tracking server was away")
    s.add_argument("path", help="runs/offline/<run_id>.jsonl")
    s.set_defaults(func=cmd_sync)

    for mod in COMMAND_MODULES:
        try:
            m = importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name == mod:  # feature not present in this build
                continue
            raise
        m.register(sub)
    return p


class Terminated(KeyboardInterrupt):
    """SIGTERM (kill, a scheduler's time limit, torchrun stopping its workers) handled like
    Ctrl-C, so a run is closed as KILLED with its last checkpoint instead of left RUNNING."""


def _raise_terminated(signum, frame):
    raise Terminated()


def main(argv=None) -> int:
    import logging
    import signal
    import threading
    debug = os.environ.get("LIDC_BENCH_DEBUG") == "1"
    # Put back whatever handler was there before on return: a caller that runs main() in its
    # own process (tests, a notebook) must not keep a handler that raises into its code.
    previous_sigterm = None
    if threading.current_thread() is threading.main_thread():
        previous_sigterm = signal.signal(signal.SIGTERM, _raise_terminated)
    logging.getLogger("mlflow").setLevel(logging.WARNING)  # schema-creation chatter is not for users
    try:
        parser = build_parser()
        # `key=value` overrides may come after options (`bench search bixnas --trials 3 train.epochs=2`)
        args, extra = parser.parse_known_args(argv)
        if extra:
            if hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
                args.overrides = list(args.overrides or []) + extra
            else:
                parser.error(f"unrecognized arguments: {' '.join(extra)}")
        if not getattr(args, "func", None):
            parser.print_help()
            return 2
        args.func(args)
        return 0
    except BenchError as e:
        if debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt as e:
        print("terminated" if isinstance(e, Terminated) else "interrupted", file=sys.stderr)
        return 143 if isinstance(e, Terminated) else 130
    except OSError as e:
        # a path the user gave that cannot be read or written (not a folder, no space, no permission)
        if debug:
            raise
        where = f": {e.filename}" if getattr(e, "filename", None) else ""
        print(f"error: {e.strerror or e}{where}", file=sys.stderr)
        return 1
    finally:
        if previous_sigterm is not None:
            signal.signal(signal.SIGTERM, previous_sigterm)


if __name__ == "__main__":
    sys.exit(main())
