"""Seed-aware statistics for leaderboards: pure functions on (seeds x nodules) score matrices.

Every model's result is a matrix ``scores[s, j]``: the metric of seed ``s`` on test nodule
``j``, nodules in one order shared by all models. Two sources of chance hide in it: which
nodules happened to be in the test split, and which seed trained the model. A bootstrap that
resamples only nodules of the seed-averaged scores (``nodule_bootstrap``) sees the first and
hides the second: a model whose seeds disagree wildly gets a narrow interval. The two-level
bootstrap here resamples both:

  * nodules, with one draw per resample shared by all models (so comparisons are paired:
    every model is scored on the same resampled test set);
  * seeds, within each model, independently (seed k of one model has nothing to do with seed k
    of another), with the model's own number of seeds.

A resample's value for a model is the mean over its resampled seeds of the mean over the
resampled nodules. Intervals are percentile intervals of these values; P(best) is the share
of resamples in which a model comes first.

Tests between models are paired over nodules on the per-nodule mean over seeds (two-sided
Wilcoxon signed-rank), with Holm's correction over one declared family.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

import numpy as np

__all__ = ["Resamples", "draw_resamples", "two_level_bootstrap", "nodule_bootstrap", "percentile_interval",
           "p_best", "rank_p_best", "wilcoxon_p", "holm", "empty_count", "seed_median", "difference_interval",
           "pvalues_against", "seed_level_p"]


@dataclass
class Resamples:
    """The index draws of one bootstrap: nodules shared by all models, seeds per model."""
    nodules: np.ndarray                 # (n_boot, n_nodules)
    seeds: dict[str, np.ndarray]        # model label -> (n_boot, n_seeds of that model)
    seed: int

    @property
    def n_boot(self) -> int:
        return self.nodules.shape[0]


def draw_resamples(n_seeds: Mapping[str, int], n_nodules: int, n_boot: int = 2000, seed: int = 0,
                   groups: Optional[Mapping[str, Sequence]] = None) -> Resamples:
    """Draw the nodule resamples once and each model's seed resamples from its own stream
    (seeded by the bootstrap seed and the model's label), so adding a model to a table does
    not change the draws of the others.

    ``groups`` (label -> a group id per seed, e.g. the Optuna study each seed's configuration
    came from) adds the tuning's own chance as a third level: a model whose seeds come from more
    than one group has its groups resampled first, then each seed slot is filled from a drawn
    group's seeds. A model with one group (or none given) gets exactly the two-level draws."""
    if n_nodules < 1:
        raise ValueError("no nodules to resample")
    nod = np.random.default_rng(seed).integers(0, n_nodules, size=(n_boot, n_nodules))
    seeds = {}
    for label, k in n_seeds.items():
        if k < 1:
            raise ValueError(f"{label}: no seeds")
        rng = np.random.default_rng([seed, zlib.crc32(label.encode())])
        g = None if groups is None else groups.get(label)
        if g is None or len(set(g)) < 2:
            seeds[label] = rng.integers(0, k, size=(n_boot, k))
        else:
            seeds[label] = _grouped_seed_draws(list(g), n_boot, rng)
    return Resamples(nod, seeds, seed)


def _grouped_seed_draws(groups: list, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """(n_boot, n_seeds) seed indices of a hierarchical resample: groups with replacement, then
    for each seed slot a drawn group and one of its seeds, uniformly."""
    ids = sorted(set(groups), key=str)
    members = [np.flatnonzero(np.array([g == i for g in groups])) for i in ids]
    k, n_groups = len(groups), len(ids)
    drawn = rng.integers(0, n_groups, size=(n_boot, n_groups))             # resampled groups
    slot_group = np.take_along_axis(drawn, rng.integers(0, n_groups, size=(n_boot, k)), axis=1)
    pick = rng.random((n_boot, k))
    out = np.empty((n_boot, k), dtype=int)
    for gi, m in enumerate(members):
        sel = slot_group == gi
        out[sel] = m[np.minimum((pick[sel] * len(m)).astype(int), len(m) - 1)]
    return out


def _seed_resampled_nodule_means(scores: np.ndarray, seed_idx: np.ndarray) -> np.ndarray:
    """(n_boot, n_nodules): each nodule's mean over the resampled seeds of each resample."""
    scores = np.atleast_2d(np.asarray(scores, dtype=float))
    return scores[seed_idx].mean(axis=1)


def two_level_bootstrap(scores: np.ndarray, res: Resamples, label: str) -> np.ndarray:
    """(n_boot,) resampled means of one model: seeds and nodules resampled."""
    per = _seed_resampled_nodule_means(scores, res.seeds[label])
    return np.take_along_axis(per, res.nodules, axis=1).mean(axis=1)


def nodule_bootstrap(scores: np.ndarray, res: Resamples) -> np.ndarray:
    """(n_boot,) resampled means of the per-nodule mean over seeds: nodules only (for comparison;
    this interval ignores seed variance)."""
    per = np.atleast_2d(np.asarray(scores, dtype=float)).mean(axis=0)
    return per[res.nodules].mean(axis=1)


def percentile_interval(boot: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    a = (1 - level) / 2 * 100
    lo, hi = np.percentile(np.asarray(boot, dtype=float), [a, 100 - a])
    return float(lo), float(hi)


def difference_interval(boot_a: np.ndarray, boot_b: np.ndarray, level: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high) of a - b over paired resamples (same nodule draws), e.g. a model's gain
    from tuning: tuned minus default."""
    d = np.asarray(boot_a, dtype=float) - np.asarray(boot_b, dtype=float)
    lo, hi = percentile_interval(d, level)
    return float(d.mean()), lo, hi


def p_best(boots: np.ndarray, higher_is_better: bool = True) -> np.ndarray:
    """(n_models,) share of resamples in which each model (row of ``boots``, models x n_boot) is
    first; a tie goes to the first of the tied rows."""
    boots = np.asarray(boots, dtype=float)
    winner = np.argmax(boots if higher_is_better else -boots, axis=0)
    return np.bincount(winner, minlength=boots.shape[0]) / boots.shape[1]


def rank_p_best(score_mats: Sequence[np.ndarray], labels: Sequence[str], res: Resamples) -> np.ndarray:
    """P(best) under rank-then-aggregate: in each resample, models are ranked on every nodule by
    their seed-resampled per-nodule score (higher is better), the ranks averaged over the
    resampled nodules; the model with the lowest mean rank wins."""
    from scipy.stats import rankdata
    per = np.stack([_seed_resampled_nodule_means(m, res.seeds[lab]) for m, lab in zip(score_mats, labels)])
    ranks = rankdata(-per, method="min", axis=0)                       # models x n_boot x nodules
    mean_rank = np.take_along_axis(ranks, res.nodules[None].repeat(len(labels), 0), axis=2).mean(axis=2)
    return p_best(mean_rank, higher_is_better=False)


def wilcoxon_p(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided paired Wilcoxon signed-rank p-value over nodules; 1.0 when a == b everywhere."""
    from scipy.stats import wilcoxon
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(a) == 0:
        return float("nan")
    if np.allclose(a - b, 0.0, atol=1e-12):
        return 1.0   # identical on every nodule: no evidence of a difference
    return float(wilcoxon(a, b).pvalue)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (same order as given; NaN stays NaN and is not counted)."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full_like(p, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    m = len(ok)
    running = 0.0
    for j, i in enumerate(ok[np.argsort(p[ok], kind="stable")]):
        running = max(running, min(1.0, (m - j) * p[i]))
        out[i] = running
    return out.tolist()


def empty_count(empty: np.ndarray) -> tuple[int, int]:
    """(predictions with no foreground, predictions made) over all seeds x nodules."""
    e = np.atleast_2d(np.asarray(empty)).astype(bool)
    return int(e.sum()), int(e.size)


def seed_median(scores: np.ndarray) -> float:
    """Mean over seeds of each seed's median over nodules (HD95's median beside its mean: the
    mean is dominated by the fixed penalty of empty predictions, the median is not)."""
    s = np.atleast_2d(np.asarray(scores, dtype=float))
    return float(np.median(s, axis=1).mean())


def pvalues_against(per_nodule: Mapping[str, np.ndarray], against: str,
                    labels: Optional[Sequence[str]] = None) -> dict[str, tuple[float, float]]:
    """label -> (raw p, Holm p) of paired Wilcoxon tests of each row against ``against`` over
    nodules (per-nodule means over seeds); the rows other than ``against`` form one family."""
    labels = [lab for lab in (labels or list(per_nodule)) if lab != against]
    raw = [wilcoxon_p(per_nodule[lab], per_nodule[against]) for lab in labels]
    return {lab: (p, q) for lab, p, q in zip(labels, raw, holm(raw))}


def seed_level_p(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided Welch t-test of two models' per-seed mean scores (each seed one observation).

    The nodule-level Wilcoxon holds the trained models fixed; this test treats the training run
    as the unit, so it sees how much seeds move a model. With 3 seeds a side it has little power:
    a large p here says the seeds cannot separate the two, not that they are equal. NaN when a
    side has fewer than 2 seeds or both sides have no spread."""
    from scipy.stats import ttest_ind
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(a) < 2 or len(b) < 2 or (np.ptp(a) == 0 and np.ptp(b) == 0):
        return float("nan")
    return float(ttest_ind(a, b, equal_var=False).pvalue)
