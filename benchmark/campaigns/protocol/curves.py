"""Learning curves that set a protocol's final schedule (``bench protocol curves``).

A final run is a fair sample of an architecture only if its schedule is long enough for it to
converge; v6's finals peaked at epochs 15-20 of 20 (issue 37). The learning rate follows a cosine
over ``train.epochs``, so "how many epochs are enough" cannot be read off one long run's first
epochs (that run's rate is still high there): each schedule length is trained as its own run.

    bench protocol curves protocols/cpu-v7.yaml --archs unet3d unetr transfuse_l \\
        --epochs 20 40 60 --seeds 2

trains each architecture's default recipe (the protocol's data budget and tuning loss) for each
schedule length and seed, on the validation split only (``evaluate_test=False``: choosing the
schedule must not look at test), in the MLflow experiment ``curves`` (not the leaderboard's), tagged
``protocol.part=curves`` and ``curves.epochs``. Restartable like ``bench suite``: a finished cell is
skipped by its fingerprint, an interrupted one resumes; two processes running the same command
share the cells (one takes each). The summary (``summarize_curves``) gives, per architecture and
schedule length, each seed's best validation Dice, its best epoch and whether it was still
improving at the end (:mod:`benchmark.results.convergence`), written as JSON and as a figure.
"""
from __future__ import annotations

import io
import json
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from benchmark.campaigns.protocol.plan import budget_overrides
from benchmark.campaigns.protocol.spec import LoadedProtocol, load_protocol
from benchmark.core.errors import UsageError

#: MLflow experiment of the curve runs (kept apart from the leaderboard's experiment)
EXPERIMENT = "curves"
PART = "curves"
FORMAT = "lidc-bench/learning-curves/1"


def curve_cells(lp: LoadedProtocol, archs: list[str], schedules: list[int], seeds: int) -> list:
    """One validation-only cell per (schedule length, seed, architecture): the default recipe
    under the protocol's data budget and tuning loss, with ``train.epochs`` set to the length."""
    from benchmark.campaigns.suite import plan_cells
    if not archs:
        raise UsageError("give at least one architecture (--archs)")
    bad = [e for e in schedules if e < 2]
    if not schedules or bad:
        raise UsageError(f"--epochs needs schedule lengths of at least 2 epochs, got {schedules}")
    cells = []
    for epochs in sorted(set(schedules)):
        for c in plan_cells(lp.spec.preset, archs, [lp.spec.tuning.loss], seeds,
                            budget_overrides(lp) + [f"train.epochs={epochs}"], references=False):
            c.tags = {**lp.tags, "protocol.part": PART, "curves.epochs": str(epochs)}
            c.evaluate_test = False
            cells.append(c)
    return cells


def run_curves(file: str | Path, archs: list[str], schedules: list[int], seeds: int,
               experiment: Optional[str] = None, show_progress: bool = True):
    """Train (or skip, or resume) every curve cell; returns the suite result."""
    from benchmark.campaigns.suite import run_cells
    lp = load_protocol(file)
    cells = curve_cells(lp, archs, schedules, seeds)
    return run_cells(cells, f"curves {lp.spec.name}-v{lp.spec.version}", experiment=experiment or EXPERIMENT,
                     show_progress=show_progress)


@dataclass(frozen=True)
class CurveRun:
    arch: str
    epochs: int            # the schedule length
    seed: int
    run_id: str
    val_dice: list         # [(epoch, value)] in epoch order
    seconds: float         # training seconds (the run's train_seconds metric)
    protocol_sha: str = ""  # the protocol file's sha when the run was trained


def collect_curves(lp: LoadedProtocol, experiment: Optional[str] = None) -> list[CurveRun]:
    """The finished curve runs of this protocol (name and version) in the tracking store. Not
    matched by the file's sha: the curves are measured to edit that file (its final schedule),
    and a cell's identity is its config fingerprint, which that edit leaves alone."""
    from benchmark.core.tracking import client, load_settings, metric_history, search_all_runs
    cl = client(load_settings())
    exp = cl.get_experiment_by_name(experiment or EXPERIMENT)
    if exp is None:
        return []
    flt = (f"tags.`protocol.part` = '{PART}' and tags.`protocol.name` = '{lp.spec.name}' "
           f"and tags.`protocol.version` = '{lp.spec.version}' and attributes.status = 'FINISHED'")
    out = []
    for r in search_all_runs(cl, [exp.experiment_id], flt):
        t = r.data.tags
        out.append(CurveRun(t["arch"], int(t["curves.epochs"]), int(t["seed"]), r.info.run_id,
                            metric_history(cl, r.info.run_id, "val_dice"),
                            float(r.data.metrics.get("train_seconds", float("nan"))), t.get("protocol.sha", "")))
    return sorted(out, key=lambda c: (c.arch, c.epochs, c.seed))


def summarize_curves(runs: list[CurveRun]) -> dict:
    """Per architecture and schedule length: each seed's best validation Dice, best epoch and
    convergence flag, their mean, and the seconds per epoch."""
    from benchmark.results.convergence import convergence
    table: dict = {}
    for r in runs:
        if not r.val_dice:
            continue
        c = convergence(r.val_dice)
        cell = table.setdefault(r.arch, {}).setdefault(str(r.epochs), {"runs": []})
        cell["runs"].append({"seed": r.seed, "run_id": r.run_id, "best_val_dice": round(c.best, 4),
                             "best_epoch": c.best_epoch, "still_improving": c.still_improving,
                             "seconds_per_epoch": round(r.seconds / max(1, c.epochs), 2)})
    for arch in table.values():
        for cell in arch.values():
            best = [x["best_val_dice"] for x in cell["runs"]]
            cell["mean_best_val_dice"] = round(statistics.fmean(best), 4)
            cell["sd_best_val_dice"] = round(statistics.stdev(best), 4) if len(best) > 1 else None
            cell["still_improving"] = sum(x["still_improving"] for x in cell["runs"])
            cell["mean_best_epoch"] = round(statistics.fmean(x["best_epoch"] for x in cell["runs"]), 1)
    return table


def curves_figure(runs: list[CurveRun]) -> bytes:
    """Validation Dice per epoch, one panel per architecture, one colour per schedule length
    (thin: each seed; thick: the mean over seeds), as PNG bytes."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    archs = sorted({r.arch for r in runs})
    lengths = sorted({r.epochs for r in runs})
    if not archs:
        raise UsageError("no finished curve runs to draw")
    fig, axes = plt.subplots(1, len(archs), figsize=(4.2 * len(archs), 3.4), sharey=True, squeeze=False)
    colours = plt.get_cmap("viridis")
    for ax, arch in zip(axes[0], archs):
        for i, n in enumerate(lengths):
            colour = colours(i / max(1, len(lengths) - 1) * 0.85)
            mine = [r for r in runs if r.arch == arch and r.epochs == n and r.val_dice]
            for r in mine:
                ax.plot([e for e, _ in r.val_dice], [v for _, v in r.val_dice], color=colour, lw=0.6, alpha=0.5)
            if mine:
                steps = sorted({e for r in mine for e, _ in r.val_dice})
                mean = [statistics.fmean(v for r in mine for e, v in r.val_dice if e == s) for s in steps]
                ax.plot(steps, mean, color=colour, lw=2, label=f"{n} epochs ({len(mine)} seed{'s' if len(mine) > 1 else ''})")
        ax.set_title(arch)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    axes[0][0].set_ylabel("validation Dice")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def write_curves(file: str | Path, out: str | Path, experiment: Optional[str] = None) -> tuple[Path, Path, dict]:
    """The summary JSON at ``out`` and the figure beside it (same name, ``.png``)."""
    lp = load_protocol(file)
    runs = collect_curves(lp, experiment)
    if not runs:
        raise UsageError(f"no finished curve runs of {lp.path} ({lp.spec.name} v{lp.spec.version}) in the experiment "
                         f"{experiment or EXPERIMENT}; run `bench protocol curves {lp.path} ...` first")
    table = summarize_curves(runs)
    doc = {"format": FORMAT, "protocol": {"file": lp.path.name, "name": lp.spec.name,
                                          "version": lp.spec.version, "sha": lp.sha,
                                          "runs_trained_under_sha": sorted({r.protocol_sha for r in runs})},
           "what": "default recipe per architecture, trained for each schedule length (cosine over the "
                   "whole schedule), validation split only; best_val_dice is the run's best epoch",
           "curves": table}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
    png = out.with_suffix(".png")
    png.write_bytes(curves_figure(runs))
    return out, png, table
