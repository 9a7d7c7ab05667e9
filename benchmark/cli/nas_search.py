"""``bench nas``: BiX-NAS's evolutionary phase two, its rank check, and the random-search controls.

    bench nas bixnas-evolve --preset cpu [--candidate-epochs 3] [--tolerance 0.02] [--seed 0] [--out PATH]
    bench nas bixnas-rank --record PATH [--top 5] [--epochs 20]
    bench nas random dints|bixnas --n 5 --seed 0 [--target X] [--band B] [--out-dir DIR]
    bench nas train-control dints|bixnas --sample K|searched [--preset cpu] [--seed 0] [key=value ...]
    bench nas controls dints|bixnas [--preset cpu] [--seeds 3] [--experiment NAME]   # all of them, restartable

(``bench search bixnas|dints`` is the older command: the NSGA-II phase two and the DiNTS search.)
The commands and their cost at the cpu preset: docs/nas.md.
"""
from __future__ import annotations

import sys
from pathlib import Path

from benchmark.core.errors import UsageError


def register(sub) -> None:
    p = sub.add_parser("nas", help="architecture search: BiX-NAS evolutionary phase two, its rank check, and the "
                                   "random-search controls (docs/nas.md)")
    nas = p.add_subparsers(dest="nas_cmd", metavar="{bixnas-evolve,bixnas-rank,random,train-control,controls}")
    e = nas.add_parser("bixnas-evolve", help="BiX-NAS phase one + progressive evolutionary phase two; resumable")
    e.add_argument("--preset", default="cpu", help="smoke or cpu")
    e.add_argument("--phase1-epochs", type=int, default=6)
    e.add_argument("--candidate-epochs", type=int, default=3, help="training epochs of each phase-two candidate")
    e.add_argument("--samples", type=int, default=15, help="children drawn per retained genotype and stage")
    e.add_argument("--keep", type=int, default=2, help="genotypes retained after each stage")
    e.add_argument("--tolerance", type=float, default=0.02, help="validation Dice a candidate may lose vs the start")
    e.add_argument("--sparsity", type=float, help="weight of phase one's sparsity term (default 0.01)")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--start", help="a genotype JSON to start phase two from (skips phase one)")
    e.add_argument("--out", help="genotype path (default architectures/bixnas_genotype.json; required at smoke)")
    e.add_argument("--no-progress", action="store_true")
    e.add_argument("overrides", nargs="*", metavar="key=value")
    e.set_defaults(func=_evolve)
    r = nas.add_parser("bixnas-rank", help="train the top candidates of an evolution record to the final length; "
                                           "Spearman's rho between the two Dice rankings")
    r.add_argument("--record", required=True, help="the search record (runs/nas/bixnas-evolve-*.json)")
    r.add_argument("--top", type=int, default=5)
    r.add_argument("--epochs", type=int, default=20)
    r.add_argument("--no-progress", action="store_true")
    r.set_defaults(func=_rank)
    s = nas.add_parser("random", help="draw random architectures of a search space at its resource target")
    s.add_argument("space", help="dints or bixnas")
    s.add_argument("--n", type=int, default=5)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--target", type=float, help="dints: the highest memory ratio accepted (default: 1.25 x the "
                                                "searched topology's cost ratio); bixnas: skips kept (default: the "
                                                "searched genotype's)")
    s.add_argument("--band", type=float, help="accepted below the target: dints 0.5 x the searched cost ratio "
                                              "(0.1 with --target), bixnas 3 (skips)")
    s.add_argument("--within", help="bixnas: the phase-one genotype whose inputs are drawn (default: the search's)")
    s.add_argument("--preset", default="cpu", help="preset whose patch sizes the costs")
    s.add_argument("--out-dir", help="default architectures/searches/random/<space>/")
    s.set_defaults(func=_random)
    t = nas.add_parser("train-control", help="train one random sample (or the searched genotype) like a normal run, "
                                             "tagged nas.space / nas.kind / nas.sample")
    t.add_argument("space", help="dints or bixnas")
    t.add_argument("--sample", required=True, help="sample number, or 'searched'")
    t.add_argument("--preset", default="cpu")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--folder", help="where the samples are (default architectures/searches/random/<space>/)")
    t.add_argument("--no-progress", action="store_true")
    t.add_argument("overrides", nargs="*", metavar="key=value")
    t.set_defaults(func=_train_control)
    c = nas.add_parser("controls", help="train the searched network and every random sample of a space for each "
                                        "seed; restartable (finished runs are skipped, an interrupted one resumes)")
    c.add_argument("space", help="dints or bixnas")
    c.add_argument("--preset", default="cpu")
    c.add_argument("--seeds", type=int, default=3)
    c.add_argument("--folder", help="where the samples are (default architectures/searches/random/<space>/)")
    c.add_argument("--experiment", help="MLflow experiment (default: mlflow.yaml's)")
    c.add_argument("--no-progress", action="store_true")
    c.add_argument("overrides", nargs="*", metavar="key=value")
    c.set_defaults(func=_controls)
    p.set_defaults(func=lambda args: (p.print_help(), None)[1])


def _evolve(args) -> None:
    from benchmark.campaigns.bixnas_evolve import run_evolution
    if args.preset == "smoke" and not args.out:
        raise UsageError("a smoke-preset BiX-NAS search would replace the registered genotype; give --out")
    run_evolution(args.preset, args.overrides, args.phase1_epochs, args.candidate_epochs, args.samples, args.keep,
                  args.tolerance, args.seed, args.sparsity, args.start, Path(args.out) if args.out else None,
                  show_progress=not args.no_progress)


def _rank(args) -> None:
    from benchmark.campaigns.bixnas_evolve import rank_agreement
    rank_agreement(args.record, args.top, args.epochs, show_progress=not args.no_progress)


def _random(args) -> None:
    from benchmark.campaigns.nas_control import SPACES, sample_bixnas, sample_dints
    if args.space not in SPACES:
        raise UsageError(f"unknown search space {args.space!r} (choose from {', '.join(SPACES)})")
    if args.n < 5:
        print(f"note: {args.n} random architectures; the control needs at least 5 to say much", file=sys.stderr)
    out = Path(args.out_dir) if args.out_dir else None
    if args.space == "dints":
        paths = sample_dints(args.n, args.seed, args.target, args.band, args.preset, out)
    else:
        paths = sample_bixnas(args.n, args.seed, args.within, None if args.target is None else int(args.target),
                              3 if args.band is None else int(args.band), args.preset, out)
    for p in paths:
        print(p)


def _controls(args) -> None:
    from benchmark.campaigns.nas_control import run_controls
    from benchmark.campaigns.suite import SuiteFailed
    r = run_controls(args.space, args.preset, args.seeds, args.overrides, Path(args.folder) if args.folder else None,
                     args.experiment, show_progress=not args.no_progress)
    print(f"control {args.space}: {len(r.planned)} runs: {len(r.ran)} ran, {len(r.resumed)} resumed, "
          f"{len(r.skipped)} already done, {len(r.elsewhere)} with another process, {len(r.failed)} failed")
    if r.failed:
        raise SuiteFailed("; ".join(f"{label}: {msg}" for label, msg in r.failed))


def _train_control(args) -> None:
    from benchmark.campaigns.nas_control import train_control
    res = train_control(args.space, args.sample, args.preset, args.seed, args.overrides,
                        Path(args.folder) if args.folder else None, show_progress=not args.no_progress)
    t = res.test_summary
    print(f"run {res.run_id}: best val Dice {res.best_val_dice:.4f}"
          + (f"; test Dice {t['dice_mean']:.4f}" if t else ""))
