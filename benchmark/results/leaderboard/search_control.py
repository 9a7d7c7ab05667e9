"""The leaderboard's "search vs random" section: does a searched network beat random networks of
its own space at the same resource target, trained the same way?

Runs take part by their tags (``benchmark/campaigns/nas_control.py`` sets them):
``nas.space`` (dints | bixnas), ``nas.kind`` (searched | random) and ``nas.sample`` (the random
sample's number). Per space and loss, with the searched network and at least one random sample:

  * every entry's Dice: mean over its seeds of the mean over the test nodules they share;
  * the searched network's rank among all entries (1 = best Dice; ties count against it);
  * the searched Dice minus the median of the random samples' Dice, with a paired two-level
    bootstrap interval (``benchmark.results.resampling``): in each resample every entry is scored
    on the same resampled nodules and its own resampled seeds, and the difference is taken to the
    median of the random entries in that resample;
  * whether the space's networks can be ranked at all at this schedule (``RankingReliability``):
    a search ranks candidates by validation Dice, and if two seeds of the same networks rank them
    differently, no candidate budget can rank them as the final schedule does.

Random-control runs are only read here: ``sections.build_sections`` keeps them out of the main
tables, where they would be rows of no interest on their own.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

TAG_SPACE, TAG_KIND, TAG_SAMPLE = "nas.space", "nas.kind", "nas.sample"
TITLE = "Search against random architectures"


def is_random_control(run) -> bool:
    return run.tags.get(TAG_KIND) == "random"


@dataclass
class SearchControl:
    space: str
    loss: str
    searched_dice: float
    random_dice: dict                  # sample -> Dice
    rank: int                          # of the searched network among searched + random (1 = best)
    diff: float                        # searched minus the median random Dice (bootstrap mean)
    diff_low: float
    diff_high: float
    n_seeds: dict = field(default_factory=dict)   # "searched" / sample -> seeds
    n_nodules: int = 0
    #: MACs per patch (the runs' ``macs_per_patch``): "searched" / sample -> MACs; the control is
    #: only a control if the random networks cost what the searched one does
    macs: dict = field(default_factory=dict)
    #: "searched" / sample -> the runs its Dice rests on (one per seed), for the page's run export
    #: and run list: the random ones are in no table of the page
    runs: dict = field(default_factory=dict, repr=False)
    #: how reproducible a ranking of these networks is across seeds (None: too few seeds or entries)
    reliability: Optional["RankingReliability"] = None

    @property
    def median_random(self) -> float:
        return float(np.median(list(self.random_dice.values())))

    @property
    def median_random_macs(self) -> float:
        vals = [v for k, v in self.macs.items() if k != "searched"]
        return float(np.median(vals)) if vals else float("nan")

    def headline(self) -> str:
        """One sentence for the page's opening lines."""
        return (f"{self.space} search ({self.loss}): {self.verdict()}: searched {self.searched_dice:.3f}, random "
                f"median {self.median_random:.3f}, difference {self.diff:+.3f} [{self.diff_low:+.3f}, "
                f"{self.diff_high:+.3f}], rank {self.rank} of {len(self.random_dice) + 1}")

    def verdict(self) -> str:
        if self.diff_low > 0:
            return "the search beats the random median (interval above 0)"
        if self.diff_high < 0:
            return "the search is worse than the random median (interval below 0)"
        return "the search cannot be told from the random median (interval includes 0)"


@dataclass
class RankingReliability:
    """Can one training run per network rank the networks of a space? From the best validation
    Dice (what a search ranks by) of every entry on the seeds all entries share, as a two-way
    layout (network x seed; the seed is a block: a seed that is bad for every network, as a
    collapsed run, says nothing about which network is better):

    * ``spearman``: mean Spearman correlation between the rankings two seeds give, over the
      pairs of seeds;
    * ``f``, ``p``: the F test of a network effect against the network x seed residual;
    * ``sd_between``, ``sd_within``: the networks' spread (from the mean squares, 0 when the
      network mean square is below the residual's) and the residual spread of one run;
    * ``icc``: ICC(3,1), the reliability of one seed's scores (the share of their variance that is
      the network's); ``seeds_for(0.8)`` is how many seeds per network a mean needs for a
      reliability of 0.8 (Spearman-Brown), None when ``icc`` <= 0 (no number of seeds would do).
    """
    n_entries: int
    seeds: tuple
    spearman: float
    f: float
    p: float
    sd_between: float
    sd_within: float
    icc: float

    def seeds_for(self, reliability: float = 0.8) -> Optional[float]:
        if not 0 < reliability < 1:
            raise ValueError(f"reliability must be in (0, 1), got {reliability}")
        if self.icc <= 0:
            return None
        return reliability / (1 - reliability) * (1 - self.icc) / self.icc


def ranking_reliability(scores: dict) -> Optional[RankingReliability]:
    """``scores``: entry -> {seed: best validation Dice}. None with fewer than 3 entries or 2
    seeds that every entry has."""
    from itertools import combinations

    from scipy.stats import f as f_dist
    from scipy.stats import spearmanr
    seeds = sorted(set.intersection(*(set(v) for v in scores.values())), key=str) if scores else []
    if len(scores) < 3 or len(seeds) < 2:
        return None
    m = np.array([[scores[e][s] for s in seeds] for e in sorted(scores)], dtype=float)
    g, k = m.shape
    grand = m.mean()
    resid = m - m.mean(axis=1, keepdims=True) - m.mean(axis=0, keepdims=True) + grand
    ms_net = k * ((m.mean(axis=1) - grand) ** 2).sum() / (g - 1)
    ms_err = (resid ** 2).sum() / ((g - 1) * (k - 1))
    f = ms_net / ms_err if ms_err > 0 else float("inf")
    rhos = [spearmanr(m[:, a], m[:, b]).statistic for a, b in combinations(range(k), 2)]
    return RankingReliability(
        n_entries=g, seeds=tuple(seeds), spearman=float(np.nanmean(rhos)) if rhos else float("nan"),
        f=float(f), p=float(f_dist.sf(f, g - 1, (g - 1) * (k - 1))) if np.isfinite(f) else 0.0,
        sd_between=float(np.sqrt(max(ms_net - ms_err, 0.0) / k)), sd_within=float(np.sqrt(ms_err)),
        icc=float((ms_net - ms_err) / (ms_net + (k - 1) * ms_err)) if ms_net + (k - 1) * ms_err > 0 else float("nan"))


def _latest_per_seed(runs) -> list:
    """One run per seed, the latest (a rerun of a seed replaces it)."""
    best: dict = {}
    for r in runs:
        k = r.tags.get("seed", "")
        if k not in best or (r.end_time, r.run_id) > (best[k].end_time, best[k].run_id):
            best[k] = r
    return [best[k] for k in sorted(best)]


def _dice_matrix(runs, nodules: list[str]) -> np.ndarray:
    return np.stack([r.per_nodule.assign(nodule_id=r.per_nodule["nodule_id"].astype(str))
                     .set_index("nodule_id").loc[nodules, "dice"].to_numpy(float) for r in runs])


def _groups(runs) -> dict:
    """(space, loss) -> {"searched": [runs], "random": {sample: [runs]}}."""
    out: dict = {}
    for r in runs:
        kind, space = r.tags.get(TAG_KIND), r.tags.get(TAG_SPACE)
        if kind not in ("searched", "random") or not space or r.reference:
            continue
        g = out.setdefault((space, r.loss), {"searched": [], "random": {}})
        if kind == "searched":
            g["searched"].append(r)
        else:
            g["random"].setdefault(r.tags.get(TAG_SAMPLE, "?"), []).append(r)
    return out


def search_controls(runs, n_boot: int = 2000, boot_seed: int = 0) -> list[SearchControl]:
    """The section's rows, one per (space, loss) with a searched entry and random ones."""
    from benchmark.results import resampling as stats
    out = []
    for (space, loss), g in sorted(_groups(runs).items()):
        if not g["searched"] or not g["random"]:
            continue
        entries = {"searched": _latest_per_seed(g["searched"])}
        entries.update({f"random {k}": _latest_per_seed(v) for k, v in sorted(g["random"].items())})
        shared = set.intersection(*(set(r.per_nodule["nodule_id"].astype(str)) for rs in entries.values() for r in rs))
        nodules = sorted(shared)
        if not nodules:
            continue
        mats = {label: _dice_matrix(rs, nodules) for label, rs in entries.items()}
        res = stats.draw_resamples({f"control:{space}:{label}": len(rs) for label, rs in entries.items()},
                                   len(nodules), n_boot, boot_seed)
        boots = {label: stats.two_level_bootstrap(m, res, f"control:{space}:{label}") for label, m in mats.items()}
        randoms = [label for label in entries if label != "searched"]
        median_boot = np.median(np.stack([boots[label] for label in randoms]), axis=0)
        diff, lo, hi = stats.difference_interval(boots["searched"], median_boot)
        dice = {label: float(m.mean(axis=1).mean()) for label, m in mats.items()}
        rank = 1 + sum(dice[label] >= dice["searched"] for label in randoms)
        by_sample = {label.split(" ", 1)[1]: dice[label] for label in randoms}
        seeds = {label: len(rs) for label, rs in entries.items()}
        by_key = {("searched" if label == "searched" else label.split(" ", 1)[1]): rs for label, rs in entries.items()}
        macs = {k: float(np.mean([r.metrics["macs_per_patch"] for r in rs]))
                for k, rs in by_key.items() if all("macs_per_patch" in r.metrics for r in rs)}
        val = {k: {r.tags.get("seed", ""): r.metrics["best_val_dice"] for r in rs}
               for k, rs in by_key.items() if all("best_val_dice" in r.metrics for r in rs)}
        out.append(SearchControl(space, loss, dice["searched"], by_sample, rank, diff, lo, hi, seeds, len(nodules),
                                 macs, by_key, ranking_reliability(val) if len(val) == len(by_key) else None))
    return out


def _mmacs(v: float) -> str:
    return "–" if v is None or np.isnan(v) else f"{v / 1e6:.0f} M"


HEADER = ["Space", "Loss", "Searched Dice", "Random Dice: median [min, max] (samples)", "Rank of searched",
          "Searched − random median", "MACs/patch: searched, random median", "Seeds", "Reading"]
NOTE = ("Random architectures are drawn uniformly from the searched space at the search's resource target and "
        "trained like the searched one (`bench nas random`, `bench nas controls`; docs/nas.md). The interval is the "
        "paired two-level bootstrap's (nodules shared, seeds per entry), 95 %.")


def cells(controls: list[SearchControl]) -> tuple[list[str], list[list[str]]]:
    """The section's table: header and one row per (space, loss)."""
    body = []
    for c in controls:
        r = list(c.random_dice.values())
        seeds = sorted(set(c.n_seeds.values()))
        body.append([c.space, c.loss, f"{c.searched_dice:.3f}",
                     f"{c.median_random:.3f} [{min(r):.3f}, {max(r):.3f}] ({len(r)})", f"{c.rank} of {len(r) + 1}",
                     f"{c.diff:+.3f} [{c.diff_low:+.3f}, {c.diff_high:+.3f}]",
                     f"{_mmacs(c.macs.get('searched'))}, {_mmacs(c.median_random_macs)}",
                     f"{seeds[0] if len(seeds) == 1 else f'{seeds[0]}-{seeds[-1]}'} per entry", c.verdict()])
    return HEADER, body


def reliability_line(c: SearchControl) -> str:
    """Whether a search could have ranked this space's networks, in one sentence ('' without the numbers)."""
    r = c.reliability
    if r is None:
        return ""
    need = r.seeds_for(0.8)
    if need is None:
        tail = "no number of seeds would make it reliable: the networks' differences do not exceed the run-to-run variation"
    elif need <= 1:
        tail = "one run per network already ranks them with reliability 0.8 or more"
    else:
        tail = f"a mean over about {math.ceil(need)} seeds per network would rank them with reliability 0.8"
    return (f"Can the {c.space} space's networks be ranked at this schedule? On best validation Dice (what a search "
            f"ranks by), two seeds rank these {r.n_entries} networks alike with Spearman rho {r.spearman:.2f} on "
            f"average (seeds {', '.join(map(str, r.seeds))}); the networks differ by SD {r.sd_between:.3f} against "
            f"{r.sd_within:.3f} between runs of one network (network x seed, F {r.f:.2f}, p {r.p:.2f}); one run's "
            f"score has reliability ICC(3,1) {r.icc:.2f}, so {tail}.")


def scale_line(scale: Optional[dict]) -> str:
    """``scale``: the page's reference rows (label -> Dice on the same test set), to read the scores against."""
    return ("For scale, on the same test nodules: " + ", ".join(f"{k} {v:.3f}" for k, v in scale.items()) + ".") \
        if scale else ""


def note_lines(controls: list[SearchControl], scale: Optional[dict]) -> list[str]:
    """The paragraphs under the section's table, in order (the Markdown and HTML pages both print
    these): how the random networks were drawn, whether each space's networks can be ranked at
    all, and the page's reference rows for scale."""
    lines = [NOTE, *map(reliability_line, controls), scale_line(scale)]
    return [line for line in lines if line]
