"""``bench search bixnas``: BiX-NAS's two phases, run as one multi-objective Optuna study.

    bench search bixnas --trials 24 --preset cpu [--phase1-epochs 6] [--epochs 3] [--population 8]
    bench search bixnas --choose --study NAME [--trade-off knee|dice|macs]   # writes the genotype

Phase one (``bixnas_phase1.run_phase_one``): the BiX-NAS super-network (``architectures._bixnas_supernet.BiXSuperNet``)
holds every bi-directional skip; its selection logits train jointly with its weights on the
training split, and from half-way through it is pruned progressively (one input per block and
pruning step) down to ``keep`` inputs per block. Its pruned genotype is stored on the study
(``phase1_genotype``) and is the space of phase two. Phase one runs once per study; a resumed
search reuses it.

Phase two (``run_search_worker``): Optuna's NSGA-II (the multi-objective evolutionary sampler)
draws, for every phase-one input of every block, whether to keep it; each candidate trains from
scratch for ``--epochs`` epochs at the preset's fidelity and is scored on validation Dice (up)
and MACs per patch (down; ``benchmark/run/cost.py``, fused inputs included). BiX-NAS's phase two
trains each stage's candidates with shared weights; training each from scratch costs more per
candidate but keeps workers independent.

Only the train and val splits are read: candidates run with ``evaluate_test=False`` and phase one
uses the engine's Trainer, which loads those two splits (``tests/test_nas.py`` patches the crop
store to fail on any test-split access).

The Pareto front is Optuna's ``study.best_trials``. Budget: every phase records its process CPU
time (on a GPU, its wall time) and epochs; the search prints the total in CPU (or GPU) hours and
as a count of full trainings at the preset's schedule, the unit a tuning budget is counted in.

Tracking: one MLflow parent run per study, a child run for phase one (its logits, pruning steps
and genotype) and one per candidate (tags ``optuna.trial``, ``optuna.state``), and on the parent
the Pareto front as CSV/markdown, a Dice-vs-MACs plot and the budget. ``--choose`` writes
``architectures/bixnas_genotype.json`` recording the study, its storage, the parent run id, the
trial, the trade-off and the budget, and beside it ``architectures/searches/<study>/``: the same
front files and ``study.json``, every trial of the study (``benchmark.results.study_export``), so the
choice can be checked without the MLflow store.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import socket
import sys
import tempfile
from pathlib import Path
from typing import Optional

from benchmark.campaigns.bixnas_phase1 import Meter, device_kind, run_phase_one
from benchmark.core.errors import UsageError

SEARCHERS = ("bixnas", "dints")
MIN_FRONT = 5  # the front a search should reach before its choice is worth committing


def _meta(preset: str, epochs: int, phase1_epochs: int = 6) -> dict:
    return {"arch": "bixnas", "loss": "dice_bce", "preset": preset, "kind": "nas", "epochs": str(epochs),
            "phase1_epochs": str(phase1_epochs)}


def _sampler(population: int, seed: Optional[int] = None):
    import optuna
    return optuna.samplers.NSGAIISampler(population_size=max(2, population), seed=seed)


def _study(name: str, storage: Optional[str], workers: int, meta: Optional[dict], create: bool = True,
           population: int = 8, seed: Optional[int] = None):
    import optuna
    from benchmark.core.optuna_storage import open_storage
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    st, label = open_storage(storage, workers)
    if create:
        study = optuna.create_study(storage=st, study_name=name, directions=["maximize", "minimize"],
                                    sampler=_sampler(population, seed), load_if_exists=True)
    else:
        try:
            study = optuna.load_study(study_name=name, storage=st, sampler=_sampler(population, seed))
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
# the Pareto front (Optuna's) and its knee
# ---------------------------------------------------------------------------------------------
def front(study) -> list:
    """Optuna's Pareto-optimal completed trials (``study.best_trials``), cheapest first."""
    return sorted(study.best_trials, key=lambda t: t.values[1])


def distinct_points(trials) -> int:
    return len({(round(t.values[0], 6), int(t.values[1])) for t in trials})


def best_dice(trials) -> "object":
    """The trial with the best validation Dice (the fewer MACs on ties)."""
    return max(trials, key=lambda t: (t.values[0], -t.values[1]))


def knee(trials) -> "object":
    """The front trial closest to the ideal (best Dice, least MACs) after min-max scaling (log MACs).

    A front of one or two points has no knee: min-max scaling puts both ends at the same
    distance from the ideal, whatever their gaps (bixnas-cpu's first 24 candidates gave
    Dice 0.233 at 0.172 GMACs and 0.300 at 0.174). There the trial with the best Dice is taken."""
    if len(trials) < 3:
        return best_dice(trials)
    ds = [t.values[0] for t in trials]
    ms = [math.log(t.values[1]) for t in trials]
    dspan, mspan = (max(ds) - min(ds)) or 1.0, (max(ms) - min(ms)) or 1.0
    return min(trials, key=lambda t: ((max(ds) - t.values[0]) / dspan) ** 2
               + ((math.log(t.values[1]) - min(ms)) / mspan) ** 2)


def _finished(study):
    import optuna
    return study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))


# ---------------------------------------------------------------------------------------------
# budget
# ---------------------------------------------------------------------------------------------
def budget(study) -> dict:
    """What the search has spent: seconds, hours and epochs by phase, and full-training equivalents."""
    from benchmark.run.config import build_config
    meta = study.user_attrs.get("meta", {})
    p1 = study.user_attrs.get("phase1", {})
    trials = [t for t in study.get_trials(deepcopy=False) if "budget_s" in t.user_attrs]
    s2 = sum(t.user_attrs["budget_s"] for t in trials)
    e2 = sum(t.user_attrs.get("budget_epochs", 0) for t in trials)
    kind = p1.get("device_kind") or (trials[0].user_attrs.get("device_kind") if trials else device_kind())
    full_epochs = build_config(meta.get("preset", "cpu"), []).train.epochs
    total_s = p1.get("budget_s", 0.0) + s2
    epochs = p1.get("epochs", 0) + e2
    return {"device_kind": kind, "phase1_s": p1.get("budget_s", 0.0), "phase2_s": s2, "total_s": total_s,
            "hours": total_s / 3600, "epochs": epochs, "preset_epochs": full_epochs,
            "full_trainings": epochs / full_epochs, "candidates": len(trials)}


def budget_line(b: dict) -> str:
    unit = "GPU" if b["device_kind"] == "cuda" else "CPU"
    return (f"search budget: {b['hours']:.2f} {unit} hours (phase one {b['phase1_s'] / 3600:.2f}, phase two "
            f"{b['phase2_s'] / 3600:.2f} over {b['candidates']} candidates); {b['epochs']} epochs = "
            f"{b['full_trainings']:.1f} full trainings at the preset's {b['preset_epochs']} epochs (a tuning "
            f"study of N trials costs up to N)")


# ---------------------------------------------------------------------------------------------
# phase two: the worker
# ---------------------------------------------------------------------------------------------
def _candidate(study, trial, within, meta: dict, overrides: list[str], parent: str) -> tuple[float, float]:
    from architectures.bixnas import prune, sample_genotype
    from benchmark.run.config import build_config
    from benchmark.run.cost import count_macs
    from benchmark.run.train import build_model, run_experiment
    g = prune(sample_genotype(trial, within.iterations, within.levels, within=within))
    trial.set_user_attr("genotype", g.to_dict())
    cfg = build_config(meta["preset"], [f"train.epochs={meta['epochs']}", *overrides],
                       **{"model.arch": "bixnas", "loss.name": meta["loss"]})
    cfg.model.kwargs = {**cfg.model.kwargs, "genotype": g.to_dict()}
    cfg.name = f"{study.study_name}-t{trial.number:03d}"
    macs = float(count_macs(build_model(cfg).eval(), (1, 1, *cfg.data.patch_zyx)))
    trial.set_user_attr("macs", macs)
    kind = "cuda" if (cfg.train.device != "cpu" and device_kind() == "cuda") else "cpu"
    with Meter(kind) as meter:
        res = run_experiment(cfg, parent_run_id=parent, evaluate_test=False, show_progress=False,
                             discard_checkpoints=True, on_run_start=lambda rid: trial.set_user_attr("mlflow_run_id", rid),
                             tags={"optuna.study": study.study_name, "optuna.trial": str(trial.number),
                                   "nas.phase": "2", "nas.macs": str(int(macs))})
    trial.set_user_attr("budget_s", meter.seconds)
    trial.set_user_attr("budget_epochs", res.epochs_completed)
    trial.set_user_attr("device_kind", kind)
    return res.best_val_dice, macs


def _stamp(client, trial, state: str):
    rid = trial.user_attrs.get("mlflow_run_id")
    if rid:
        with contextlib.suppress(Exception):
            client.set_tag(rid, "optuna.state", state)
            if state == "FAIL":
                client.set_terminated(rid, "FAILED")


def run_search_worker(study_name: str, storage: Optional[str], n_trials: int, meta: dict, overrides: list[str],
                      show_progress: bool = True, population: int = 8) -> None:
    import optuna
    from architectures.bixnas import Genotype
    from benchmark.core.progress import progress_bar
    from benchmark.core.tracking import client
    from benchmark.campaigns.tune import ask_lock, ensure_parent_run, fail_dead_local_trials
    S = optuna.trial.TrialState
    study, label = _study(study_name, storage, 2, meta, population=population)
    parent = ensure_parent_run(study, meta)
    if "phase1_genotype" not in study.user_attrs:
        raise UsageError(f"study {study_name!r} has no phase-one result; run `bench search bixnas` (one worker "
                         "runs phase one first)")
    within = Genotype.from_dict(study.user_attrs["phase1_genotype"])
    cl = client()
    bar = progress_bar(total=n_trials, desc=f"search {study_name}", unit="candidate", disable=not show_progress)
    while True:
        with ask_lock(label):
            fail_dead_local_trials(study)
            if len(study.get_trials(deepcopy=False, states=(S.COMPLETE, S.RUNNING))) >= n_trials:
                break
            trial = study.ask()
            trial.set_user_attr("worker_pid", os.getpid())
            trial.set_user_attr("worker_host", socket.gethostname())
        try:
            values = _candidate(study, trial, within, meta, overrides, parent)
            frozen = study.tell(trial, list(values))
            state = "COMPLETE"
        except Exception as e:  # noqa: BLE001 - one failed candidate must not end the search
            print(f"candidate {trial.number} failed: {type(e).__name__}: {str(e)[:200]}", file=sys.stderr)
            frozen = study.tell(trial, state=S.FAIL)
            state = "FAIL"
        _stamp(cl, study.get_trials(deepcopy=False)[frozen.number], state)
        bar.update(len(_finished(study)) - bar.n)
    bar.close()


TRADE_OFFS = ("knee", "dice", "macs")


def pick(best: list, trade_off: str):
    """The front trial a trade-off chooses: ``knee`` (see :func:`knee`), ``dice`` (the best
    validation Dice, fewer MACs on ties) or ``macs`` (the fewest MACs)."""
    if trade_off == "knee":
        return knee(best)
    if trade_off == "dice":
        return best_dice(best)
    if trade_off == "macs":
        return min(best, key=lambda x: x.values[1])
    raise UsageError(f"unknown trade-off {trade_off!r} ({', '.join(TRADE_OFFS)})")


def write_front(study, folder: Path, trade_off: str = "knee") -> tuple[list, list[str], dict]:
    """The Pareto front (Optuna's best_trials) and the budget as files in ``folder``:
    ``pareto_front.{md,csv,png}`` and ``budget.json``, with the trial ``trade_off`` chooses
    marked. Returns (front, markdown lines, budget)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import ScalarFormatter
    trials = _finished(study)
    best = front(study)
    chosen = pick(best, trade_off)
    lines = [f"| trial | val Dice | GMACs | chosen ({trade_off}) | MLflow run |", "| --- | --- | --- | --- | --- |"]
    csv = ["trial,val_dice,macs,chosen,mlflow_run_id"]
    for t in best:
        lines.append(f"| {t.number} | {t.values[0]:.4f} | {t.values[1] / 1e9:.3f} | {'yes' if t is chosen else ''} | "
                     f"{t.user_attrs.get('mlflow_run_id', '')} |")
        csv.append(f"{t.number},{t.values[0]:.6f},{int(t.values[1])},{int(t is chosen)},{t.user_attrs.get('mlflow_run_id', '')}")
    b = budget(study)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "pareto_front.md").write_text("\n".join(lines) + "\n\n" + budget_line(b) + "\n")
    (folder / "pareto_front.csv").write_text("\n".join(csv) + "\n")
    (folder / "budget.json").write_text(json.dumps(b, indent=1) + "\n")
    with plt.style.context("default"):
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.scatter([t.values[1] / 1e9 for t in trials], [t.values[0] for t in trials], s=14, c="0.6", label="candidates")
        ax.plot([t.values[1] / 1e9 for t in best], [t.values[0] for t in best], "o-", c="C3", label="Pareto front")
        ax.scatter([chosen.values[1] / 1e9], [chosen.values[0]], s=120, facecolors="none", edgecolors="k",
                   label=f"chosen ({trade_off})")
        ax.set_xlabel("GMACs per patch"); ax.set_ylabel("validation Dice")
        macs = [t.values[1] for t in trials]
        if max(macs) > 3 * min(macs):   # a log axis only where the costs span a factor of 3 or more
            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(ScalarFormatter()); ax.xaxis.set_minor_formatter(ScalarFormatter())
        ax.set_title(f"BiX-NAS search {study.study_name}"); ax.legend(fontsize=8); ax.grid(alpha=.3)
        fig.tight_layout(); fig.savefig(folder / "pareto_front.png", dpi=100); plt.close(fig)
    return best, lines, b


FRONT_FILES = ("pareto_front.md", "pareto_front.csv", "pareto_front.png", "budget.json")


def log_front(study) -> list:
    """Pareto front as CSV/markdown, a plot and the budget, on the study's MLflow parent run."""
    from benchmark.core.tracking import Tracker, client, load_settings
    trials = _finished(study)
    if not trials:
        return []
    settings = load_settings()
    tr = Tracker(client(settings), study.user_attrs["mlflow_parent_run_id"], settings)
    with tempfile.TemporaryDirectory() as d:
        best, lines, b = write_front(study, Path(d))
        tr.log_metrics({"nas.budget_hours": b["hours"], "nas.full_trainings": b["full_trainings"],
                        "nas.pareto_points": distinct_points(best), "nas.candidates": len(trials)})
        for name in FRONT_FILES:
            tr.log_artifact(Path(d) / name, "nas")
    print("\n".join(lines))
    print(budget_line(b))
    n = distinct_points(best)
    if n < MIN_FRONT:
        print(f"warning: the Pareto front has {n} distinct point(s), fewer than {MIN_FRONT}; run more candidates "
              "(--trials) or longer ones (--epochs) before choosing a genotype", file=sys.stderr)
    return best


def search_record_dir(genotype_path: Path, study_name: str) -> Path:
    """Where ``--choose`` writes the search behind a genotype: ``<its folder>/searches/<study>/``."""
    return genotype_path.parent / "searches" / study_name


def choose(study_name: str, storage: Optional[str], trade_off: str, out: Optional[str]) -> Path:
    """Write the chosen genotype (with its provenance and budget) for the registered ``bixnas``."""
    from architectures.bixnas import GENOTYPE_PATH, Genotype, save_genotype
    study, label = _study(study_name, storage, 1, None, create=False)
    if not _finished(study):
        raise UsageError(f"study {study_name!r} has no completed candidate")
    best = front(study)
    t = pick(best, trade_off)
    meta = study.user_attrs.get("meta", {})
    b = budget(study)
    path = Path(out) if out else GENOTYPE_PATH
    save_genotype(Genotype.from_dict(t.user_attrs["genotype"]), path, meta={
        "source": "bench search bixnas", "study": study_name, "storage": label if "://" in label else Path(label).name,
        "mlflow_parent_run_id": study.user_attrs.get("mlflow_parent_run_id"),
        "mlflow_phase1_run_id": study.user_attrs.get("phase1", {}).get("mlflow_run_id"),
        "mlflow_run_id": t.user_attrs.get("mlflow_run_id"), "trial": t.number,
        "trade_off": trade_off + " of the Pareto front (validation Dice up, MACs down)",
        "val_dice": round(t.values[0], 4), "macs_per_patch": int(t.values[1]), "preset": meta.get("preset"),
        "phase1_epochs": meta.get("phase1_epochs"), "epochs_per_candidate": meta.get("epochs"),
        "candidates": len(_finished(study)), "pareto_size": distinct_points(best),
        "budget_seconds": round(b["hours"] * 3600, 1), "budget_hours": round(b["hours"], 4), "budget_device": b["device_kind"],
        "budget_full_trainings": round(b["full_trainings"], 2)})
    # the search itself beside it, so the choice can be checked from the repository: the front,
    # its plot, the budget and every trial (parameters, objectives, genotypes, MLflow run ids)
    from benchmark.results.study_export import study_document
    record = search_record_dir(path, study_name)
    write_front(study, record, trade_off)
    (record / "study.json").write_text(json.dumps(study_document(study), indent=1, sort_keys=True) + "\n")
    print(f"trial {t.number}: val Dice {t.values[0]:.4f}, {t.values[1] / 1e9:.3f} GMACs -> {path} "
          f"(search record in {record})")
    return path


# ---------------------------------------------------------------------------------------------
def search(study_name: str, storage: Optional[str], n_trials: int, meta: dict, overrides: list[str],
           workers: int = 1, population: int = 8, show_progress: bool = True) -> list:
    """Phase one (once per study), phase two over ``workers`` processes, then the front; returns it."""
    import subprocess
    from benchmark.campaigns.tune import close_parent_run, ensure_parent_run
    s, label = _study(study_name, storage, workers, meta, population=population)
    parent = ensure_parent_run(s, meta)
    print(f"search study {study_name} in {label}; MLflow parent run {parent}", file=sys.stderr)
    run_phase_one(s, meta, overrides, parent, show_progress)
    if workers == 1:
        run_search_worker(study_name, storage, n_trials, meta, overrides, show_progress, population)
    else:
        cmd = [sys.executable, "-m", "benchmark.cli.main", "search", "bixnas", "--worker", "--trials", str(n_trials),
               "--preset", meta["preset"], "--epochs", meta["epochs"], "--phase1-epochs", meta["phase1_epochs"],
               "--population", str(population), "--study", study_name, "--no-progress", *overrides]
        if storage:
            cmd += ["--storage", storage]
        codes = [p.wait() for p in [subprocess.Popen(cmd) for _ in range(workers)]]
        if any(codes):
            print(f"warning: worker exit codes {codes}; rerun the command to complete the search", file=sys.stderr)
    best = log_front(_study(study_name, storage, 1, None, create=False)[0])
    close_parent_run(parent)
    return best
