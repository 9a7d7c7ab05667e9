"""What the page says about how far its numbers can be trusted, beside the nodule-level tests.

  * Convergence (every page whose runs logged a validation Dice per epoch): each row's mean best
    epoch and how many of its seeds were still improving in the last 20% of their epochs
    (``benchmark.results.convergence``); a row with an improving seed is flagged, since more epochs
    would have moved it.
  * Seed-level test (v7 pages): Welch's t-test over the per-seed mean Dice of each model against
    the declared comparator (``resampling.seed_level_p``), beside the nodule-level Wilcoxon.
  * Dice by study (v7 pages): a tuned row that pools the finals of two tuning studies of one
    architecture shows each study's mean Dice, how far the tuning itself moves the row.
  * The tuning signal (v7 pages): per protocol, the Spearman rank correlation between each tuned
    row's tuning score (``tuning.rescored_value``, else ``tuning.best_value``) and its final runs'
    mean validation Dice (``best_val_dice``, never a test number), with the number of rows.

A page is "v7" (``is_extended``) when its runs carry a part or a tag that protocol v7 introduced;
older pages keep their columns (their committed files regenerate byte for byte).
"""
from __future__ import annotations

import math

import numpy as np

from benchmark.results.leaderboard.collect import RunRecord
from benchmark.results.leaderboard.statistics import Leaderboard, Row

#: the tags protocol v7 introduced; one on any run makes the page a v7 page
V7_TAGS = ("tuning.rescored_value", "tuning.chosen_trial", "budget.samples_seen", "recipe.source")
#: the protocol parts protocol v7 introduced
V7_PARTS = ("shared", "swap", "rescore")
#: the Spearman correlation above which the tuning score is taken to rank architectures as their
#: final validation does (issue 37)
SIGNAL_THRESHOLD = 0.8
#: CSV columns this module adds, in order; ``render.render_csv`` keeps them after every older column
COLUMNS = ("best_epoch_mean", "seeds_improving", "seeds_with_history", "p_seeds_vs_reference", "dice_by_study",
           "recipe_source")


def is_extended(runs: list[RunRecord]) -> bool:
    """Whether the runs come from a protocol with v7's parts or tags."""
    return any(r.tags.get("protocol.part") in V7_PARTS or any(t in r.tags for t in V7_TAGS) for r in runs)


def seed_means(row: Row) -> list[float]:
    """Each run's mean Dice over the test nodules (the unit of the seed-level test)."""
    return [float(r.per_nodule["dice"].astype(float).mean()) for r in row.runs]


def dice_by_study(row: Row) -> str:
    """"0.651 / 0.640": each study's mean over its seeds of the per-seed mean Dice, studies in name
    order; "" for a row of one study."""
    studies = sorted(set(row.studies))
    if len(studies) < 2:
        return ""
    means = seed_means(row)
    return " / ".join(f"{np.mean([m for m, s in zip(means, row.studies) if s == study]):.3f}" for study in studies)


def _tuning_score(row: Row) -> float:
    """The row's tuning score: the mean over its runs of the value its configuration was chosen by."""
    vals = []
    for r in row.runs:
        v = r.tags.get("tuning.rescored_value") or r.tags.get("tuning.best_value")
        try:
            vals.append(float(v))
        except (TypeError, ValueError):
            return float("nan")
    return float(np.mean(vals)) if vals else float("nan")


def tuning_signal(rows: list[Row]) -> dict[str, tuple[float, int]]:
    """protocol ("name vN") -> (Spearman rho, n rows) between the tuned rows' tuning scores and their
    finals' mean validation Dice; rows without either are left out; rho is NaN below 3 rows."""
    from scipy.stats import spearmanr
    by_protocol: dict[str, list[tuple[float, float]]] = {}
    for row in rows:
        if row.reference or not row.tag("protocol.name"):
            continue
        score = _tuning_score(row)
        val = [r.metrics["best_val_dice"] for r in row.runs if "best_val_dice" in r.metrics]
        if math.isnan(score) or len(val) != len(row.runs):
            continue
        name = f"{row.tag('protocol.name')} v{row.tag('protocol.version')}"
        by_protocol.setdefault(name, []).append((score, float(np.mean(val))))
    out = {}
    for name, pairs in sorted(by_protocol.items()):
        x, y = zip(*pairs)
        rho = float(spearmanr(x, y).statistic) if len(pairs) >= 3 and len(set(x)) > 1 and len(set(y)) > 1 \
            else float("nan")
        # Spearman's rho over n rows is a ratio of small integers (1 - 6 sum d^2 / (n^3 - n) without ties);
        # scipy computes it as a Pearson correlation of ranks, which lands an exact 0.8 at 0.7999999999999999
        # and would read "below 0.8". Rounding to 12 places removes only that float noise.
        rho = round(rho, 12)                  # NaN stays NaN
        out[name] = (rho, len(pairs))
    return out


def signal_reached(rho: float) -> bool:
    """Whether a tuning-signal correlation meets the issue's bar (False for NaN)."""
    return rho >= SIGNAL_THRESHOLD


def signal_line(name: str, rho: float, n: int) -> str:
    """The page's sentence on one protocol's tuning signal."""
    if math.isnan(rho):
        return f"{name}: too few tuned rows with a tuning score and a validation Dice (n = {n}) for a rank correlation."
    reach = (f"it reaches {SIGNAL_THRESHOLD:g}: the tuning score orders the architectures as their final "
             "validation does" if signal_reached(rho) else
             f"below {SIGNAL_THRESHOLD:g}: the tuning score orders the architectures only loosely as their "
             "final validation does, so a tuned ranking partly reflects which tuning run got lucky")
    return (f"{name}: Spearman rank correlation {rho:.2f} (n = {n} tuned rows) between each row's tuning score "
            f"and its final runs' mean validation Dice; {reach}.")


def add_diagnostics(lb: Leaderboard, runs: list[RunRecord]) -> None:
    """Fill every section's rows and CSV table with the numbers this module's docstring lists."""
    lb.extended = is_extended(runs)
    sections = [lb] + lb.sections
    has_history = any(x.val_dice for sec in sections for r in sec.rows for x in r.runs)
    for sec in sections:
        sec.extended = lb.extended
        ref = next((r for r in sec.rows if sec.reference_arch and r.label == sec.reference_arch), None)
        for row in sec.rows:
            s = row.stats
            if has_history and not row.reference:
                from benchmark.results.convergence import row_convergence
                s["best_epoch_mean"], s["seeds_improving"], s["seeds_with_history"] = \
                    row_convergence([x.val_dice for x in row.runs])
            if lb.extended and ref is not None and not row.reference and row is not ref:
                from benchmark.results.resampling import seed_level_p
                s["p_seeds_vs_reference"] = seed_level_p(seed_means(row), seed_means(ref))
            if lb.extended:
                s["dice_by_study"] = dice_by_study(row)
                s["recipe_source"] = row.tag("recipe.source")
        _add_columns(sec, has_history)
    if lb.extended:
        lb.tuning_signal = tuning_signal([r for r in lb.rows if not r.reference] if lb.section == "tuned" else [])


def _add_columns(sec: Leaderboard, has_history: bool) -> None:
    def col(key, default=float("nan")):
        return [r.stats.get(key, default) for r in sec.rows]
    if has_history:
        sec.table["best_epoch_mean"] = col("best_epoch_mean")
        sec.table["seeds_improving"] = col("seeds_improving", "")
        sec.table["seeds_with_history"] = col("seeds_with_history", "")
    if sec.extended:
        if sec.reference_arch:
            sec.table["p_seeds_vs_reference"] = col("p_seeds_vs_reference")
        if any(r.stats.get("dice_by_study") for r in sec.rows):
            sec.table["dice_by_study"] = col("dice_by_study", "")
        if sec.section == "shared":
            sec.table["recipe_source"] = col("recipe_source", "")


def convergence_cell(s: dict) -> str:
    """"⚠ 2/3 improving" for a row with seeds still improving at the end, "0/3" otherwise, "–" without
    a history."""
    n = s.get("seeds_with_history", 0)
    if not n:
        return "–"
    k = s["seeds_improving"]
    return f"⚠ {k}/{n} improving" if k else f"0/{n}"
