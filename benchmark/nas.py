"""``bench search bixnas``: a BiX-NAS-style architecture search run as an Optuna study.

    bench search bixnas --trials 24 --preset cpu [--study NAME] [--storage URL] [--workers K]
    bench search bixnas --choose --study NAME [--trade-off knee|dice|macs]   # writes the genotype

What is searched (``architectures/bixnas.py``): for every block of the unrolled bi-directional
U-Net, which outputs of the opposite path feed it (skips fused by averaging at fixed widths).
Objectives: validation Dice (up) and MACs per patch (down), in one multi-objective Optuna study
(TPE, the Optuna 5 default for several objectives). Candidates are low-fidelity: the chosen
preset (smoke or cpu) and a few epochs (``train.epochs``, default 3).

Stage by stage, as BiX-NAS does: the trial budget is split over the searchable stages, last
stage first. Trials of stage ``s`` draw only that stage's skips; the other stages come from the
*base* genotype, which starts as the full bi-directional network and after each stage becomes
the knee of that stage's Pareto front. (BiX-NAS trains each stage's candidates with shared
weights; here each candidate trains from scratch for a few epochs, which is simpler and
independent across parallel workers, at a higher cost per candidate.)

Tracking: one MLflow parent run per study, a child run per candidate (tags ``nas.stage``,
``optuna.trial``, ``optuna.state``), and on the parent the Pareto front as a CSV/markdown table
and a Dice-vs-MACs plot. ``--choose`` writes ``architectures/bixnas_genotype.json`` recording the
study, its storage, the parent run id, the trial and the trade-off chosen.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

from .errors import UsageError

SEARCHERS = ("bixnas",)


def _meta(preset: str, epochs: int) -> dict:
    return {"arch": "bixnas", "loss": "dice_bce", "preset": preset, "kind": "nas", "epochs": str(epochs)}


def _study(name: str, storage: Optional[str], workers: int, meta: Optional[dict], create: bool = True):
    import optuna
    from .tune import open_storage
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    st, label = open_storage(storage, workers)
    if create:
        study = optuna.create_study(storage=st, study_name=name, directions=["maximize", "minimize"],
                                    load_if_exists=True)
    else:
        try:
            study = optuna.load_study(study_name=name, storage=st)
        except KeyError:
            raise UsageError(f"no search study {name!r} in {label}") from None
    if len(study.directions) != 2:
        raise UsageError(f"study {name!r} is not a NAS study (it has {len(study.directions)} objective(s))")
    if meta:
        old = study.user_attrs.get("meta")
        if old is None:
            study.set_user_attr("meta", meta)
        elif old != meta:
            k = next(k for k in meta if old.get(k) != meta[k])
            raise UsageError(f"study {name!r} was created with {k}={old.get(k)}, this command asks {meta[k]}")
    return study, label


# ---------------------------------------------------------------------------------------------
# stages and the Pareto knee
# ---------------------------------------------------------------------------------------------
def stage_plan(n_trials: int, iterations: int = 3) -> list[tuple[int, int]]:
    """[(stage, trials)] in search order (last stage first), ``n_trials`` split as evenly as possible."""
    from architectures.bixnas import search_stages
    stages = search_stages(iterations)
    per, extra = divmod(n_trials, len(stages))
    return [(s, per + (1 if i < extra else 0)) for i, s in enumerate(stages) if per + (1 if i < extra else 0) > 0]


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of points not dominated (higher Dice, lower MACs)."""
    front = []
    for i, (d, m) in enumerate(points):
        if not any((d2 >= d and m2 <= m) and (d2 > d or m2 < m) for d2, m2 in points):
            front.append(i)
    return front


def knee(points: list[tuple[float, float]], front: list[int]) -> int:
    """The front point closest to the ideal (best Dice, least MACs) after min-max scaling."""
    ds = [points[i][0] for i in front]
    ms = [math.log(points[i][1]) for i in front]
    dspan, mspan = (max(ds) - min(ds)) or 1.0, (max(ms) - min(ms)) or 1.0
    best = min(front, key=lambda i: ((max(ds) - points[i][0]) / dspan) ** 2 + ((math.log(points[i][1]) - min(ms)) / mspan) ** 2)
    return best


def _finished(study, stage: Optional[int] = None):
    import optuna
    S = optuna.trial.TrialState
    ts = study.get_trials(deepcopy=False, states=(S.COMPLETE,))
    return [t for t in ts if stage is None or t.user_attrs.get("nas.stage") == stage]


def base_for_stage(study, plan: list[tuple[int, int]], index: int):
    """Genotype the trials of ``plan[index]`` build on: knees of all earlier stages applied in order."""
    from architectures.bixnas import Genotype
    g = Genotype.full()
    for stage, _ in plan[:index]:
        trials = _finished(study, stage)
        if not trials:
            continue
        pts = [(t.values[0], t.values[1]) for t in trials]
        g = Genotype.from_dict(trials[knee(pts, pareto_front(pts))].user_attrs["genotype"])
    return g


# ---------------------------------------------------------------------------------------------
# the worker
# ---------------------------------------------------------------------------------------------
def _candidate(study, trial, stage: int, base, meta: dict, overrides: list[str], parent: str) -> tuple[float, float]:
    from architectures.bixnas import prune, sample_genotype
    from .config import build_config
    from .cost import count_macs
    from .train import build_model, run_experiment
    g = prune(sample_genotype(trial, stages=[stage], base=base))
    trial.set_user_attr("nas.stage", stage)
    trial.set_user_attr("genotype", g.to_dict())
    cfg = build_config(meta["preset"], [f"train.epochs={meta['epochs']}", *overrides],
                       **{"model.arch": "bixnas", "loss.name": meta["loss"]})
    cfg.model.kwargs = {**cfg.model.kwargs, "genotype": g.to_dict()}
    cfg.name = f"{study.study_name}-t{trial.number:03d}"
    macs = float(count_macs(build_model(cfg).eval(), (1, 1, *cfg.data.patch_zyx)))
    trial.set_user_attr("macs", macs)
    res = run_experiment(cfg, parent_run_id=parent, evaluate_test=False, show_progress=False, discard_checkpoints=True,
                         on_run_start=lambda rid: trial.set_user_attr("mlflow_run_id", rid),
                         tags={"optuna.study": study.study_name, "optuna.trial": str(trial.number),
                               "nas.stage": str(stage), "nas.macs": str(int(macs))})
    return res.best_val_dice, macs


def _stamp(client, trial, state: str):
    rid = trial.user_attrs.get("mlflow_run_id")
    if rid:
        with contextlib.suppress(Exception):
            client.set_tag(rid, "optuna.state", state)
            if state == "FAIL":
                client.set_terminated(rid, "FAILED")


def run_search_worker(study_name: str, storage: Optional[str], n_trials: int, meta: dict, overrides: list[str],
                      show_progress: bool = True) -> None:
    import optuna
    from tqdm.auto import tqdm
    from .tracking import client
    from .tune import ask_lock, ensure_parent_run, fail_dead_local_trials
    S = optuna.trial.TrialState
    study, label = _study(study_name, storage, 2, meta)
    parent = ensure_parent_run(study, meta)
    cl = client()
    plan = stage_plan(n_trials)
    bounds = [sum(n for _, n in plan[:i + 1]) for i in range(len(plan))]
    bar = tqdm(total=n_trials, desc=f"search {study_name}", unit="candidate", disable=not show_progress)
    while True:
        with ask_lock(label):
            fail_dead_local_trials(study)
            alive = study.get_trials(deepcopy=False, states=(S.COMPLETE, S.RUNNING))
            if len(alive) >= n_trials:
                break
            index = next(i for i, b in enumerate(bounds) if len(alive) < b)
            # a stage builds on the previous stages' results: wait until they are finished
            earlier_running = [t for t in alive if t.state == S.RUNNING and t.user_attrs.get("nas.index", 0) < index]
            if earlier_running:
                wait = True
            else:
                wait = False
                trial = study.ask()
                trial.set_user_attr("worker_pid", os.getpid())
                trial.set_user_attr("worker_host", socket.gethostname())
                trial.set_user_attr("nas.index", index)
        if wait:
            time.sleep(2)
            continue
        stage = plan[index][0]
        try:
            values = _candidate(study, trial, stage, base_for_stage(study, plan, index), meta, overrides, parent)
            frozen = study.tell(trial, list(values))
            state = "COMPLETE"
        except Exception as e:  # noqa: BLE001 - one failed candidate must not end the search
            print(f"candidate {trial.number} failed: {type(e).__name__}: {str(e)[:200]}", file=sys.stderr)
            frozen = study.tell(trial, state=S.FAIL)
            state = "FAIL"
        _stamp(cl, study.get_trials(deepcopy=False)[frozen.number], state)
        bar.n = len(_finished(study))
        bar.refresh()
    bar.close()
    log_front(study)


def log_front(study) -> Path | None:
    """Pareto front of all completed candidates: CSV + markdown table and a plot on the parent run."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from .tracking import Tracker, client, load_settings
    trials = _finished(study)
    if not trials:
        return None
    pts = [(t.values[0], t.values[1]) for t in trials]
    front = pareto_front(pts)
    k = knee(pts, front)
    rows = sorted(((trials[i], i == k) for i in front), key=lambda x: x[0].values[1])
    lines = ["| trial | stage | val Dice | GMACs | knee | MLflow run |", "| --- | --- | --- | --- | --- | --- |"]
    csv = ["trial,stage,val_dice,macs,knee,mlflow_run_id"]
    for t, is_knee in rows:
        lines.append(f"| {t.number} | {t.user_attrs.get('nas.stage')} | {t.values[0]:.4f} | {t.values[1] / 1e9:.3f} | "
                     f"{'yes' if is_knee else ''} | {t.user_attrs.get('mlflow_run_id', '')} |")
        csv.append(f"{t.number},{t.user_attrs.get('nas.stage')},{t.values[0]:.6f},{int(t.values[1])},{int(is_knee)},"
                   f"{t.user_attrs.get('mlflow_run_id', '')}")
    settings = load_settings()
    tr = Tracker(client(settings), study.user_attrs["mlflow_parent_run_id"], settings)
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "pareto_front.md").write_text("\n".join(lines) + "\n")
        (Path(d) / "pareto_front.csv").write_text("\n".join(csv) + "\n")
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.scatter([p[1] / 1e9 for p in pts], [p[0] for p in pts], s=14, c="0.6", label="candidates")
        fp = sorted((pts[i] for i in front), key=lambda p: p[1])
        ax.plot([p[1] / 1e9 for p in fp], [p[0] for p in fp], "o-", c="C3", label="Pareto front")
        ax.scatter([pts[k][1] / 1e9], [pts[k][0]], s=120, facecolors="none", edgecolors="k", label="knee")
        ax.set_xlabel("GMACs per patch"); ax.set_ylabel("validation Dice"); ax.set_xscale("log")
        ax.set_title(f"BiX-NAS search {study.study_name}"); ax.legend(fontsize=8); ax.grid(alpha=.3)
        fig.tight_layout(); fig.savefig(Path(d) / "pareto_front.png", dpi=100); plt.close(fig)
        for name in ("pareto_front.md", "pareto_front.csv", "pareto_front.png"):
            tr.log_artifact(Path(d) / name, "nas")
    print("\n".join(lines))
    return None


def choose(study_name: str, storage: Optional[str], trade_off: str, out: Optional[str]) -> Path:
    """Write the chosen genotype (with its provenance) for the registered ``bixnas``."""
    from architectures.bixnas import GENOTYPE_PATH, Genotype, save_genotype
    study, label = _study(study_name, storage, 1, None, create=False)
    trials = _finished(study)
    if not trials:
        raise UsageError(f"study {study_name!r} has no completed candidate")
    pts = [(t.values[0], t.values[1]) for t in trials]
    front = pareto_front(pts)
    if trade_off == "knee":
        i = knee(pts, front)
    elif trade_off == "dice":
        i = max(front, key=lambda j: pts[j][0])
    elif trade_off == "macs":
        i = min(front, key=lambda j: pts[j][1])
    else:
        raise UsageError(f"unknown trade-off {trade_off!r} (knee, dice, macs)")
    t = trials[i]
    meta = study.user_attrs.get("meta", {})
    path = Path(out) if out else GENOTYPE_PATH
    save_genotype(Genotype.from_dict(t.user_attrs["genotype"]), path, meta={
        "source": "bench search bixnas", "study": study_name, "storage": label if "://" in label else Path(label).name,
        "mlflow_parent_run_id": study.user_attrs.get("mlflow_parent_run_id"),
        "mlflow_run_id": t.user_attrs.get("mlflow_run_id"), "trial": t.number,
        "trade_off": trade_off + " of the Pareto front (validation Dice up, MACs down)",
        "val_dice": round(t.values[0], 4), "macs_per_patch": int(t.values[1]), "preset": meta.get("preset"),
        "epochs_per_candidate": meta.get("epochs"), "candidates": len(trials), "pareto_size": len(front)})
    print(f"trial {t.number}: val Dice {t.values[0]:.4f}, {t.values[1] / 1e9:.3f} GMACs -> {path}")
    return path


# ---------------------------------------------------------------------------------------------
def register(sub) -> None:
    p = sub.add_parser("search", help="architecture search (BiX-NAS style) as a multi-objective Optuna study")
    p.add_argument("searcher", help="what to search: bixnas")
    p.add_argument("--trials", type=int, default=24, help="candidates in total (split over the stages)")
    p.add_argument("--preset", default="cpu", help="fidelity of a candidate: smoke or cpu (default cpu)")
    p.add_argument("--epochs", type=int, default=3, help="training epochs per candidate")
    p.add_argument("--study", help="study name (default: bixnas-<preset>)")
    p.add_argument("--storage", help="Optuna storage URL or journal path (default: runs/optuna/journal.log)")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--choose", action="store_true", help="write the chosen genotype from a finished search")
    p.add_argument("--trade-off", default="knee", help="knee (default), dice or macs")
    p.add_argument("--out", help="genotype path for --choose (default architectures/bixnas_genotype.json)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.set_defaults(func=_dispatch)


def _dispatch(args):
    import subprocess
    if args.searcher not in SEARCHERS:
        import difflib
        close = difflib.get_close_matches(args.searcher, SEARCHERS, n=1)
        raise UsageError(f"unknown searcher {args.searcher!r}" + (f"; did you mean {close[0]}?" if close else "")
                         + f" (available: {', '.join(SEARCHERS)})")
    from .config import PRESETS
    if args.preset not in PRESETS:
        raise UsageError(f"unknown preset {args.preset!r} (choose from {', '.join(PRESETS)})")
    study = args.study or f"bixnas-{args.preset}"
    if args.choose:
        choose(study, args.storage, args.trade_off, args.out)
        return
    if args.trials < 1 or args.workers < 1 or args.epochs < 1:
        raise UsageError("--trials, --workers and --epochs must be >= 1")
    meta = _meta(args.preset, args.epochs)
    s, label = _study(study, args.storage, args.workers, meta)
    from .tune import ensure_parent_run
    parent = ensure_parent_run(s, meta)
    print(f"search study {study} in {label}; MLflow parent run {parent}", file=sys.stderr)
    from .tune import close_parent_run
    if args.workers == 1:
        run_search_worker(study, args.storage, args.trials, meta, args.overrides, show_progress=not args.no_progress)
        close_parent_run(parent)
        return
    cmd = [sys.executable, "-m", "benchmark.cli", "search", args.searcher, "--trials", str(args.trials), "--preset",
           args.preset, "--epochs", str(args.epochs), "--study", study, "--workers", "1", "--no-progress",
           *args.overrides]
    if args.storage:
        cmd += ["--storage", args.storage]
    codes = [p.wait() for p in [subprocess.Popen(cmd) for _ in range(args.workers)]]
    close_parent_run(parent)
    if any(codes):
        print(f"warning: worker exit codes {codes}; rerun the command to complete the search", file=sys.stderr)
