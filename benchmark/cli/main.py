"""The ``bench`` command line.

    bench run --arch transfuse [--loss dice_bce] [--preset cpu] [train.epochs=5 optim.lr=3e-4 ...]
    bench run --resume RUN_ID
    bench archs | bench losses | bench data ... | bench baseline | bench ui | bench sync FILE
    bench tune ... | bench suite ... | bench leaderboard ... | bench search bixnas ...

Every user-caused problem ends as one line on stderr and a non-zero exit code (see
``benchmark.core.errors``), never a traceback. ``LIDC_BENCH_DEBUG=1`` shows tracebacks.
"""
from __future__ import annotations

import argparse
import importlib
import os
import re
import sys
import warnings

# Library deprecation chatter (torch.jit via MONAI/timm, pkg_resources via pylidc) is not for
# the user of a command line: keep stderr for our own one-line messages.
for _cat in (FutureWarning, DeprecationWarning, UserWarning):
    warnings.filterwarnings("ignore", category=_cat)

from benchmark.core.errors import BenchError, UsageError
from benchmark.core.interrupts import Terminated, install_handlers, restore_handlers
from benchmark.run.run_args import add_config_arguments, alias_tags, resolve_config

#: modules that add their own sub-commands with ``register(subparsers)``
COMMAND_MODULES = ["benchmark.cli.data", "benchmark.cli.tune", "benchmark.cli.suite", "benchmark.cli.leaderboard",
                   "benchmark.cli.nas", "benchmark.cli.nas_search", "benchmark.cli.protocol", "benchmark.cli.export",
                   "benchmark.cli.predict", "benchmark.cli.rescore"]


class _HelpWithDefaults(argparse.HelpFormatter):
    """Every option's help ends with its default, unless it has none or already says it."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if (action.option_strings and "%(default)" not in text and "default" not in text.lower()
                and default not in (None, False, argparse.SUPPRESS) and not isinstance(default, list)):
            text += " (default: %(default)s)"
        return text


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (and exit code 2), and help shows defaults."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _HelpWithDefaults)
        super().__init__(*args, **kwargs)

    def error(self, message):
        raise UsageError(f"{self.prog}: {message}")


# ------------------------------------------------------------------------------------------
def cmd_run(args):
    # the training code (torch, MLflow, MONAI: seconds to import) only once the arguments are
    # known to be good: a mistyped option is answered at once
    if args.resume:
        if args.arch or args.overrides or args.config or args.params_from:
            raise UsageError("--resume takes no other config: the run's own config is used")
        from benchmark.run.train import run_experiment
        result = run_experiment(None, resume_run_id=args.resume, show_progress=not args.no_progress)
    else:
        tags = {}
        if args.params_from:
            from benchmark.campaigns.tune import best_params_overrides
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
        tags = {**tags, **alias_tags(args.arch)}
        from benchmark.run.train import run_experiment
        result = run_experiment(cfg, tags=tags, show_progress=not args.no_progress)
    t = result.test_summary
    line = f"run {result.run_id}: best val Dice {result.best_val_dice:.4f} (epoch {result.best_epoch})"
    if t:
        line += f"; test Dice {t['dice_mean']:.4f}, HD95 {t['hd95_mm_mean']:.2f} mm ({t['n']} nodules)"
    print(line)
    if result.run_id:
        print(where_the_run_went(result.run_id, smoke=(getattr(args, "preset", None) == "smoke")), file=sys.stderr)


def where_the_run_went(run_id: str, smoke: bool = False) -> str:
    """The closing lines of `bench run`: where its files went and what to run next."""
    from benchmark.core.paths import checkpoints_dir
    from benchmark.core.tracking import client, load_settings
    s = load_settings()
    try:
        run = client(s).get_run(run_id)
        artifacts, model = run.info.artifact_uri, run.data.tags.get("model_uri") or "(no MLflow model logged)"
    except Exception:  # noqa: BLE001 - the server went away at the very end; the rest still helps
        artifacts, model = "(see the run in the MLflow UI)", "(see the run's model_uri tag)"
    lines = []
    if smoke:
        lines.append("note: the smoke preset checks the plumbing (data, training, tracking, evaluation) on 26 "
                     "nodules at 4 mm for 2 epochs; it is not expected to learn, so a test Dice near 0 is normal. "
                     "Use --preset cpu for a model that segments.")
    lines += [f"  MLflow run   {run_id} in {s.tracking_uri} (experiment {s.experiment})",
              f"  checkpoints  {checkpoints_dir(run_id)}",
              f"  artifacts    {artifacts}  (config.yaml, evaluation/, plots/, checkpoints/)",
              f"  model        {model}  (mlflow.pytorch.load_model; trusted runs only: it unpickles)",
              "next:",
              "  bench ui                                              # the runs table, sorted by test Dice",
              f"  bench predict --run {run_id} --ct scan.nii.gz --at X,Y,Z --out pred/   # segment a nodule",
              f"  bench predict --run {run_id} --split test --out pred/    # test nodules as NIfTI for a viewer"]
    return "\n".join(lines)


def cmd_archs(args):
    from benchmark.run.archs_table import print_table
    print_table(args)


def cmd_losses(args):
    from benchmark.run.archs_table import format_table
    from benchmark.losses import LOSSES
    rows = [{"name": n, "aliases": ",".join(sorted(a for a, t in LOSSES.aliases().items() if t == n)),
             "family": LOSSES.entry(n).family, "paper": LOSSES.entry(n).paper} for n in LOSSES.names()]
    for line in format_table(rows):
        print(line)


def cmd_ui(args):
    from benchmark.cli.ui import serve
    serve(args.host, args.port, args.workers)


def cmd_sync(args):
    from benchmark.core.tracking import sync_offline
    n = sync_offline(args.path)
    print(f"replayed {n} buffered records into MLflow")


def cmd_baseline(args):
    from benchmark.run.threshold_baseline import run_threshold_baseline
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
    r.add_argument("--no-progress", action="store_true", help="hide progress bars (default: shown)")
    r.set_defaults(func=cmd_run)

    a = sub.add_parser("archs", help="list registered architectures with parameters and MACs (latency on request)")
    a.add_argument("--preset", help="size every architecture as this preset builds it and count at its patch "
                                    "(default: cpu)")
    a.add_argument("--latency", action="store_true", help="also time a CPU forward pass (slow; default: off)")
    a.add_argument("--no-cost", action="store_true", help="skip building models: names and papers only (default: off)")
    a.add_argument("--filter", default="*", help="glob over names")
    a.set_defaults(func=cmd_archs)

    lo = sub.add_parser("losses", help="list registered losses")
    lo.set_defaults(func=cmd_losses)

    b = sub.add_parser("baseline", help="evaluate the non-learned threshold baseline on test (an MLflow run)")
    add_config_arguments(b)
    b.set_defaults(func=cmd_baseline)

    u = sub.add_parser("ui", help="serve the MLflow UI on the configured store")
    u.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    u.add_argument("--port", type=int, default=5000,
                   help="port to listen on; when another server holds it, a free one (said in one line)")
    u.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
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


#: options whose value is a coordinate list that may start with a minus sign ("-52.1,-180,-125")
COORDINATE_OPTIONS = ("--at",)


def _attach_coordinates(argv: list[str]) -> list[str]:
    """``--at -52,-180,-125`` -> ``--at=-52,-180,-125``: argparse would take the value for an option."""
    out = []
    i = 0
    while i < len(argv):
        if argv[i] in COORDINATE_OPTIONS and i + 1 < len(argv) and re.match(r"-\.?\d", argv[i + 1]):
            out.append(f"{argv[i]}={argv[i + 1]}")
            i += 2
            continue
        out.append(argv[i])
        i += 1
    return out


def main(argv=None) -> int:
    debug = os.environ.get("LIDC_BENCH_DEBUG") == "1"
    # SIGTERM raises Terminated, and neither it nor Ctrl-C lands inside a checkpoint or MLflow
    # write (benchmark.core.interrupts); the previous handlers come back on return
    previous_handlers = install_handlers()
    from benchmark.core.tracking import quiet_mlflow_logging
    quiet_mlflow_logging()  # schema-creation and model-logging chatter is not for users
    try:
        parser = build_parser()
        # `key=value` overrides may come after options (`bench search bixnas --trials 3 train.epochs=2`)
        args, extra = parser.parse_known_args(_attach_coordinates(sys.argv[1:] if argv is None else list(argv)))
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
        restore_handlers(previous_handlers)


if __name__ == "__main__":
    sys.exit(main())
