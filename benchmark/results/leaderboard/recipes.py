"""Recipes across architectures: the recipe swap, and tuned rows that pool two tuning studies.

A swap run (tag ``protocol.part=swap``) is architecture X trained with the recipe (optimiser and
schedule settings) that Y's tuning study chose (tag ``recipe.source=Y``), one seed per cell. The
matrix shows, for each architecture (row) and recipe source (column), the run's mean test Dice;
the diagonal is the architecture with its own recipe, read from the tuned table (its mean over
seeds). A row whose Dice holds across columns is robust to the recipe; a column that lifts every
row is a recipe better than the others' own, which tuning should have found.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from benchmark.results.leaderboard.collect import RunRecord


@dataclass
class SwapMatrix:
    archs: list[str]                       # rows
    sources: list[str]                     # columns: the architecture whose recipe was used
    dice: dict = field(default_factory=dict)      # (arch, source) -> mean test Dice of the swap run(s)
    runs: dict = field(default_factory=dict)      # (arch, source) -> the runs behind the cell
    own: dict = field(default_factory=dict)       # arch -> tuned row's mean Dice (the diagonal)

    def cell(self, arch: str, source: str) -> str:
        if arch == source:
            v = self.own.get(arch, float("nan"))
            return "–" if math.isnan(v) else f"{v:.3f} (own)"
        v = self.dice.get((arch, source))
        return "–" if v is None else f"{v:.3f}"


def pooled_study_finals(variants: list[list[RunRecord]]) -> list[RunRecord]:
    """The runs of one row when the variants are the final runs of several tuning studies of the
    same architecture (each variant one study's configuration, each study a different one): the
    tuned row answers "this architecture, tuned", so every study's finals count, and the bootstrap
    resamples the studies too (``Row.studies``). [] when the variants are anything else."""
    if len(variants) < 2 or any(r.tags.get("protocol.part") != "final" for v in variants for r in v):
        return []
    studies = [{r.tags.get("optuna.study", "") for r in v} for v in variants]
    if any(len(s) != 1 or "" in s for s in studies) or len(set().union(*studies)) != len(variants):
        return []
    return [r for v in variants for r in v]


def _latest_per_seed(runs: list[RunRecord]) -> list[RunRecord]:
    latest: dict[tuple, RunRecord] = {}
    for r in runs:
        key = (r.arch, r.tags.get("recipe.source", ""), r.seed)
        if key not in latest or (r.end_time, r.run_id) > (latest[key].end_time, latest[key].run_id):
            latest[key] = r
    return list(latest.values())


def swap_matrix(lb, runs: list[RunRecord]):
    """The matrix of ``runs`` (swap runs), its diagonal from ``lb``'s tuned rows; None without runs."""
    runs = [r for r in _latest_per_seed(runs) if r.tags.get("recipe.source")]
    if not runs:
        return None
    cells: dict[tuple, list[RunRecord]] = {}
    for r in runs:
        cells.setdefault((r.arch, r.tags["recipe.source"]), []).append(r)
    own = {}
    if lb.section == "tuned":
        for row in lb.rows:
            if not row.reference:
                own.setdefault(row.arch, row.stats["dice_mean"])
    archs = sorted({a for a, _ in cells} | ({s for _, s in cells} & set(own)))
    sources = sorted({s for _, s in cells} | ({a for a, _ in cells} & set(own)))
    dice = {k: float(np.mean([float(x.per_nodule["dice"].astype(float).mean()) for x in v])) for k, v in cells.items()}
    return SwapMatrix(archs, sources, dice, cells, own)


def swap_cells(m: SwapMatrix) -> tuple[list[str], list[list[str]]]:
    """Header and cells of the matrix, as the page shows them."""
    header = ["Architecture \\ recipe of", *m.sources]
    return header, [[a, *(m.cell(a, s) for s in m.sources)] for a in m.archs]


def swap_csv_rows(m: SwapMatrix) -> list[dict]:
    """One CSV line per off-diagonal cell (section ``swap``): the architecture, its recipe's source,
    the seeds and the mean test Dice."""
    out = []
    for (arch, source), runs in sorted(m.runs.items()):
        out.append({"section": "swap", "row": f"{arch} [recipe of {source}]", "arch": arch,
                    "loss": runs[0].loss, "n_seeds": len(runs), "seeds": ";".join(r.seed for r in runs),
                    "dice_mean": m.dice[(arch, source)], "run_ids": ";".join(r.run_id for r in runs),
                    "recipe_source": source})
    return out
