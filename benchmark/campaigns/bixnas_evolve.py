"""BiX-NAS phase two as the paper runs it: a progressive evolutionary search that removes skips.

    bench nas bixnas-evolve --preset cpu [--phase1-epochs 6] [--candidate-epochs 3] [--samples 15]
                            [--keep 2] [--tolerance 0.02] [--seed 0] [--out PATH]
    bench nas bixnas-rank --record PATH [--top 5] [--epochs 20]

Phase one (``bixnas_phase1.train_supernet``: differentiable selection with a sparsity pressure)
gives the starting genotype. Phase two (:func:`evolve`) walks the stages backwards, from the last
decoder to the first searchable encoder, as BiX-NAS does. At each stage it draws up to
``samples`` children of every retained genotype by dropping a random non-empty subset of that
stage's inputs (a block keeps at least one; the last decoder stage always keeps its sequential
input), scores every new genotype (validation Dice after ``candidate_epochs`` epochs from scratch
at the preset; MACs per patch), and keeps the ``keep`` cheapest genotypes whose validation Dice is
within ``tolerance`` of the starting genotype's (ties: better Dice). The tolerance is measured
against the start, not the parent, so the loss can never accumulate past it. The result is the
cheapest kept genotype after the first searchable stage.

What differs from BiX-NAS: candidates train from scratch, each for a configurable budget
(``--candidate-epochs``), instead of together with shared weights; acceptance is the declared
tolerance on Dice instead of a Pareto front cut to the top-k by IoU. Whether a short candidate
budget ranks candidates as the final length would is measured by :func:`rank_agreement` (the
top 5 trained to 20 epochs; Spearman's rho between the two Dice rankings).

Deterministic from the seed: the draws come from one ``numpy`` generator, and scores are cached
by genotype in the search record (``runs/nas/bixnas-evolve-<key>.json``, written atomically after
every candidate), so a stopped search rerun with the same command continues where it stopped and
takes the same decisions. The finished record is copied beside the genotype
(``<its folder>/searches/<record name>/evolution.json``, named in the genotype's ``record``). Only the train and val splits are read (``evaluate_test=False``).
"""
from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from benchmark.core.errors import UsageError
from benchmark.core.json_file import read_json


def genotype_key(g) -> str:
    """A genotype's identity without its meta (sorted JSON of its blocks)."""
    d = g.to_dict()
    return json.dumps([d["iterations"], d["levels"], d["encoder"], d["decoder"]])


@dataclass
class Scored:
    genotype: object
    val_dice: float
    macs: float
    stage: Optional[int] = None     # the stage whose inputs were cut to make it (None: the start)


@dataclass
class Evolution:
    start: Scored
    best: Scored
    floor: float                    # the start's Dice minus the tolerance
    retained: dict                  # stage -> keys kept after it
    scored: list                    # every genotype scored, in order


def stage_children(g, stage: int, n: int, rng: np.random.Generator) -> list:
    """Up to ``n`` distinct genotypes made from ``g`` by dropping a random non-empty subset of one
    stage's droppable inputs; a live block keeps at least one input (its first, if all drawn)."""
    from architectures.bixnas import prune, stage_of
    from architectures._bixnas_supernet import removable_inputs
    g = prune(g)
    path, t = stage_of(stage)
    droppable = removable_inputs(g, path, t)
    out, seen = [], {genotype_key(g)}
    if not droppable:
        return out
    for _ in range(4 * n):
        if len(out) == n:
            break
        drop = rng.random(len(droppable)) < 0.5
        if not drop.any():
            drop[rng.integers(len(droppable))] = True
        gone = {droppable[i][2:] for i in np.flatnonzero(drop)}       # (level, input)
        row = []
        for level in range(g.levels):
            ins = g.inputs(path, t, level)
            kept = tuple(k for k in ins if (level, k) not in gone)
            row.append(kept if kept or not ins else ins[:1])
        child = prune(g.replace_stage(stage, tuple(row)))
        if genotype_key(child) not in seen:
            seen.add(genotype_key(child))
            out.append(child)
    return out


def evolve(start, score: Callable, cost: Callable, tolerance: float, seed: int, samples: int = 15,
           keep: int = 2) -> Evolution:
    """BiX-NAS's progressive search over the stages, last first (module docstring). ``score(g)``
    is a genotype's validation Dice, ``cost(g)`` its MACs; both are asked once per genotype."""
    from architectures.bixnas import prune, search_stages
    if tolerance < 0 or samples < 1 or keep < 1:
        raise UsageError("bixnas evolution: --tolerance must be >= 0, --samples and --keep >= 1")
    rng = np.random.default_rng(seed)
    cache: dict[str, Scored] = {}

    def judge(g, stage):
        k = genotype_key(g)
        if k not in cache:
            cache[k] = Scored(g, float(score(g)), float(cost(g)), stage)
        return cache[k]

    first = judge(prune(start), None)
    floor = first.val_dice - tolerance
    retained, history = [first], {}
    for stage in search_stages(start.iterations):
        pool = {genotype_key(r.genotype): r for r in retained}
        for parent in retained:
            for child in stage_children(parent.genotype, stage, samples, rng):
                pool.setdefault(genotype_key(child), judge(child, stage))
        ok = [(k, c) for k, c in pool.items() if c.val_dice >= floor]
        ok.sort(key=lambda kc: (kc[1].macs, -kc[1].val_dice, kc[0]))
        retained = [c for _, c in ok[:keep]]
        history[stage] = [k for k, _ in ok[:keep]]
    return Evolution(first, retained[0], floor, history, list(cache.values()))


# ---------------------------------------------------------------------------------------------
# the search on data: a record that makes it resumable
# ---------------------------------------------------------------------------------------------
def record_path(settings: dict) -> Path:
    from benchmark.core.paths import runs_dir
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    return runs_dir() / "nas" / f"bixnas-evolve-{settings['preset']}-{key}.json"


def _save(record: dict, path: Path) -> None:
    from benchmark.core.checkpoint import atomic_write_bytes
    atomic_write_bytes(path, lambda f: f.write((json.dumps(record, indent=1, sort_keys=True) + "\n").encode()))


def load_record(path) -> dict:
    path = Path(path)
    record = read_json(path, "search record")
    if not isinstance(record, dict) or record.get("format") != "lidc-bench/bixnas-evolve/1":
        raise UsageError(f"{path} is not a bixnas-evolve search record")
    return record


def _train_candidate(g, settings: dict, overrides: list[str], epochs: int, parent: Optional[str], tags: dict) -> dict:
    """Train a genotype from scratch on train, score it on val: Dice, seconds, epochs, run id."""
    from benchmark.campaigns.bixnas_phase1 import Meter, device_kind
    from benchmark.run.config import build_config
    from benchmark.run.train import run_experiment
    cfg = build_config(settings["preset"], [f"train.epochs={epochs}", f"train.seed={settings['seed']}", *overrides],
                       **{"model.arch": "bixnas", "loss.name": settings["loss"]})
    cfg.model.kwargs = {**cfg.model.kwargs, "genotype": g.to_dict()}
    kind = "cuda" if (cfg.train.device != "cpu" and device_kind() == "cuda") else "cpu"
    with Meter(kind) as meter:
        res = run_experiment(cfg, parent_run_id=parent, evaluate_test=False, show_progress=False,
                             discard_checkpoints=True, tags={"nas.searcher": "bixnas-evolve", **tags})
    return {"val_dice": res.best_val_dice, "budget_s": meter.seconds, "epochs": res.epochs_completed,
            "mlflow_run_id": res.run_id}


def _cached_scorer(record: dict, path: Path, overrides: list[str], parent: str, show_progress: bool):
    """score(g) and cost(g) for :func:`evolve`, answered from the record when it has them."""
    from benchmark.campaigns.search_cost import macs_at_preset
    settings = record["settings"]
    cands = record.setdefault("candidates", {})

    def entry(g):
        k = genotype_key(g)
        if k not in cands:
            macs = macs_at_preset(settings["preset"], "bixnas", genotype=g.to_dict())
            trained = _train_candidate(g, settings, overrides, settings["candidate_epochs"], parent,
                                       {"nas.phase": "2", "nas.candidate": str(len(cands))})
            cands[k] = {"genotype": g.to_dict(), "macs": macs, **trained}
            _save(record, path)
            if show_progress:
                print(f"candidate {len(cands)}: val Dice {trained['val_dice']:.4f}, {macs / 1e9:.3f} GMACs",
                      file=sys.stderr)
        return cands[k]
    return (lambda g: entry(g)["val_dice"]), (lambda g: entry(g)["macs"])


def _open_record(settings: dict) -> tuple[dict, Path]:
    path = record_path(settings)
    if path.exists():
        record = load_record(path)
        print(f"bixnas evolution: resuming {path} ({len(record.get('candidates', {}))} candidates scored)",
              file=sys.stderr)
        return record, path
    return {"format": "lidc-bench/bixnas-evolve/1", "settings": settings, "candidates": {}}, path


def _phase_one(record: dict, path: Path, start: Optional[str], parent: str, show_progress: bool):
    """The starting genotype: the record's, a given file's, or a phase-one run (then recorded)."""
    from architectures.bixnas import Genotype, load_genotype
    from benchmark.campaigns.bixnas_phase1 import train_supernet
    if "phase1" not in record:
        s = record["settings"]
        if start:
            g, info = load_genotype(start), {"budget_s": 0.0, "epochs": 0, "start_file": Path(start).name}
        else:
            g, info = train_supernet(s["preset"], s["loss"], s["phase1_epochs"], s["overrides"],
                                     f"bixnas-evolve-{s['preset']}-phase1", {"nas.searcher": "bixnas-evolve"},
                                     parent, s["sparsity"], show_progress)
        record["phase1"] = {"genotype": g.to_dict(), **info}
        _save(record, path)
    return Genotype.from_dict(record["phase1"]["genotype"])


def run_evolution(preset: str, overrides: list[str], phase1_epochs: int = 6, candidate_epochs: int = 3,
                  samples: int = 15, keep: int = 2, tolerance: float = 0.02, seed: int = 0,
                  sparsity: Optional[float] = None, start: Optional[str] = None, out: Optional[Path] = None,
                  show_progress: bool = True) -> Path:
    """Phase one (or ``start``), then :func:`evolve` on data; writes the genotype, returns its path."""
    from architectures.bixnas import GENOTYPE_PATH, save_genotype
    from benchmark.campaigns.bixnas_phase1 import SPARSITY
    from benchmark.core.tracking import Tracker
    if min(phase1_epochs, candidate_epochs) < 1:
        raise UsageError("--phase1-epochs and --candidate-epochs must be >= 1")
    settings = {"preset": preset, "loss": "dice_bce", "overrides": list(overrides), "phase1_epochs": phase1_epochs,
                "candidate_epochs": candidate_epochs, "samples": samples, "keep": keep, "tolerance": tolerance,
                "seed": seed, "sparsity": SPARSITY if sparsity is None else sparsity,
                "start": Path(start).name if start else None}
    record, path = _open_record(settings)
    if record.get("mlflow_parent_run_id"):
        tracker = Tracker.resume(record["mlflow_parent_run_id"])
    else:
        tracker = Tracker.start(f"bixnas-evolve-{preset}", {"nas.searcher": "bixnas-evolve", "nas.space": "bixnas",
                                                            "kind": "nas", "preset": preset, "arch": "bixnas"})
        tracker.log_params({f"search.{k}": v for k, v in settings.items()})
        record["mlflow_parent_run_id"] = tracker.run_id
        _save(record, path)
    status = "FAILED"
    try:
        g0 = _phase_one(record, path, start, tracker.run_id, show_progress)
        score, cost = _cached_scorer(record, path, overrides, tracker.run_id, show_progress)
        ev = evolve(g0, score, cost, tolerance, seed, samples, keep)
        meta = {**_result_meta(record, ev, tracker.run_id), "record": f"searches/{path.stem}/evolution.json"}
        record["result"] = meta
        _save(record, path)
        written = save_genotype(ev.best.genotype, out or GENOTYPE_PATH, meta=meta)
        # the search beside the genotype, so the choice can be checked from the repository
        _save(record, Path(written).parent / meta["record"])
        tracker.log_artifact(path, "nas")
        tracker.log_artifact(written, "nas")
        tracker.log_metrics({"nas.budget_hours": meta["budget_hours"], "nas.skips_kept": meta["skips_kept"],
                             "nas.macs_per_patch": meta["macs_per_patch"], "nas.val_dice": meta["val_dice"],
                             "nas.candidates": meta["candidates"]})
        status = "FINISHED"
        print(f"BiX-NAS evolution -> {written}: {meta['kept']}; val Dice {meta['val_dice']:.4f} "
              f"(start {meta['start_val_dice']:.4f}, floor {meta['floor']:.4f}); {meta['macs_per_patch'] / 1e9:.3f} "
              f"GMACs (bionet {meta['bionet_macs_per_patch'] / 1e9:.3f}); {meta['budget_hours']:.2f} "
              f"{meta['budget_device']} hours; record {path}")
        return written
    except KeyboardInterrupt:
        status = "KILLED"
        print(f"bixnas evolution interrupted; rerun the same command to resume ({path})", file=sys.stderr)
        raise
    finally:
        tracker.finish(status)


def _result_meta(record: dict, ev: Evolution, parent: str) -> dict:
    """What the genotype file records: the search, its choice, its cost beside BiO-Net's, the budget."""
    from architectures._bixnas_supernet import describe_search, skip_count
    from benchmark.campaigns.bixnas_phase1 import device_kind
    from benchmark.campaigns.search_cost import macs_at_preset
    from benchmark.run.config import build_config
    s, cands = record["settings"], record["candidates"]
    best = cands[genotype_key(ev.best.genotype)]
    seconds = record["phase1"].get("budget_s", 0.0) + sum(c["budget_s"] for c in cands.values())
    epochs = record["phase1"].get("epochs", 0) + sum(c["epochs"] for c in cands.values())
    full_epochs = build_config(s["preset"], []).train.epochs
    return {"source": "bench nas bixnas-evolve", "preset": s["preset"], "seed": s["seed"],
            "mlflow_parent_run_id": parent, "mlflow_phase1_run_id": record["phase1"].get("mlflow_run_id"),
            "mlflow_run_id": best["mlflow_run_id"], "tolerance": s["tolerance"], "samples": s["samples"],
            "keep": s["keep"], "phase1_epochs": s["phase1_epochs"], "epochs_per_candidate": s["candidate_epochs"],
            "sparsity": s["sparsity"], "candidates": len(cands), "val_dice": round(ev.best.val_dice, 4),
            "start_val_dice": round(ev.start.val_dice, 4), "floor": round(ev.floor, 4),
            "kept": describe_search(ev.best.genotype), "skips_kept": skip_count(ev.best.genotype),
            "skips_phase1": skip_count(ev.start.genotype), "macs_per_patch": int(ev.best.macs),
            # the space phase two searched, for the random control (``nas_control.sample_bixnas``)
            "phase1_genotype": {k: v for k, v in record["phase1"]["genotype"].items() if k != "meta"},
            "bionet_macs_per_patch": macs_at_preset(s["preset"], "bionet"),
            "budget_seconds": round(seconds, 1), "budget_hours": round(seconds / 3600, 4),
            "budget_device": device_kind(), "budget_full_trainings": round(epochs / full_epochs, 2)}


def rank_agreement(path, top: int = 5, epochs: int = 20, show_progress: bool = True) -> dict:
    """Train the ``top`` candidates of a search record (by their candidate-budget Dice) for
    ``epochs`` and report Spearman's rho between the two Dice rankings; resumable (each final
    training is recorded as it ends)."""
    from scipy.stats import spearmanr
    from architectures.bixnas import Genotype
    path = Path(path)
    record = load_record(path)
    cands = record.get("candidates", {})
    if top < 2 or len(cands) < top:
        raise UsageError(f"rank agreement needs --top >= 2 and that many candidates; the record has {len(cands)}")
    chosen = sorted(cands, key=lambda k: (-cands[k]["val_dice"], k))[:top]
    s = record["settings"]
    finals = record.setdefault("rank_check", {}).setdefault(str(epochs), {})
    for i, k in enumerate(chosen):
        if k not in finals:
            finals[k] = _train_candidate(Genotype.from_dict(cands[k]["genotype"]), s, s["overrides"], epochs,
                                         record.get("mlflow_parent_run_id"), {"nas.phase": "rank", "nas.rank": str(i)})
            _save(record, path)
            if show_progress:
                print(f"rank check {i + 1}/{top}: {s['candidate_epochs']}-epoch Dice {cands[k]['val_dice']:.4f}, "
                      f"{epochs}-epoch Dice {finals[k]['val_dice']:.4f}", file=sys.stderr)
    short = [cands[k]["val_dice"] for k in chosen]
    long = [finals[k]["val_dice"] for k in chosen]
    rho = float(spearmanr(short, long)[0])
    result = {"top": top, "epochs": epochs, "candidate_epochs": s["candidate_epochs"], "spearman_rho": rho,
              "candidate_dice": short, "final_dice": long}
    record["rank_agreement"] = result
    _save(record, path)
    print(f"rank agreement of the top {top} candidates, {s['candidate_epochs']} vs {epochs} epochs: "
          f"Spearman rho {rho:+.3f}")
    return result
