"""The page's opening lines, generated from the table's own numbers (``statistics``), never typed.

``verdict`` answers three things a reader opens the page for, in this order:

  * who is first, and how sure: the top model's Dice with its 95% interval and P(best), the paired
    Wilcoxon p (Holm) against the runner-up and against the declared comparator. A winner is
    *named* only when both hold: its interval lies wholly above the runner-up's (the two intervals
    do not overlap) and the Holm p against the runner-up is below ``ALPHA``. Otherwise the page says
    that the data cannot separate the two: a small p alone is not enough, because overlapping
    intervals mean another test set or other seeds could swap them;
  * the project's question (``QUESTION_ARCH_PREFIX``): does any TransFuse row beat the comparator,
    with the paired bootstrap difference of mean Dice and the Holm p of each TransFuse row;
  * the caveat: the data source (phantom or real scans), preset, seeds and epochs behind it;
  * where the page holds an architecture search's random control (``search_control``), whether
    each search beats the median random network of its space.

With a shared-recipe section (protocol v7: every architecture trained with one recipe), a ranking
under each architecture's own tuned recipe could reflect how well each was tuned. The winner is
then named only when the same architecture tops both the tuned and the shared table and is
separated (as above) from the runner-up in both; otherwise the headline says the data cannot
separate them, and says so when the two tables order the architectures differently (their top 3).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

from benchmark.results.leaderboard.statistics import Leaderboard, Row

#: the significance level the verdict uses for the Holm-corrected p-values
ALPHA = 0.05
#: the architectures the project's question is about (README: does TransFuse beat a 3D U-Net?)
QUESTION_ARCH_PREFIX = "transfuse"


@dataclass(frozen=True)
class Verdict:
    headline: str          # one sentence: the winner, or that the data cannot separate the top two
    ranking: str           # the numbers behind it
    question: str          # the project's question and its answer ("" when the table cannot say)
    caveat: str            # what the numbers rest on
    search: str = ""       # each architecture search against its random control, when the page has one

    def lines(self) -> list[str]:
        return [x for x in (self.headline, self.ranking, self.search, self.question, self.caveat) if x]


def _p(p: float) -> str:
    if p is None or math.isnan(p):
        return "–"
    return "< 0.001" if p < 1e-3 else f"= {p:.3f}"


def _dice(row: Row) -> str:
    s = row.stats
    return f"Dice {s['dice_mean']:.3f} [{s['dice_ci_low']:.3f}, {s['dice_ci_high']:.3f}]"


def separates(top: Row, runner_up: Row) -> bool:
    """Whether the page may name ``top`` the winner over ``runner_up`` (see the module's docstring)."""
    s, r = top.stats, runner_up.stats
    p = r.get("wilcoxon_p_holm", float("nan"))
    return s["dice_ci_low"] > r["dice_ci_high"] and not math.isnan(p) and p < ALPHA


def verdict(lb: Leaderboard) -> Verdict:
    v = _ranking_verdict(lb)
    if lb.search_controls:
        v = replace(v, search="Search against random architectures: "
                    + "; ".join(c.headline() for c in lb.search_controls) + ".")
    return v


def _ranking_verdict(lb: Leaderboard) -> Verdict:
    models = [r for r in lb.rows if not r.reference]
    if not models:
        return Verdict("No model row: this table has reference rows only.", "", "", caveat(lb))
    top = models[0]
    if len(models) == 1:
        return Verdict(f"Only one model: {top.label} ({_dice(top)}); nothing to compare it with.", "",
                       _question(lb), caveat(lb))
    second = models[1]
    p_next = second.stats.get("wilcoxon_p_holm", float("nan"))
    shared = _shared_models(lb)
    if len(shared) >= 2:
        headline = _shared_headline(models, shared)
    elif separates(top, second):
        headline = f"Winner: {top.label}, ahead of {second.label} beyond chance."
    else:
        headline = (f"The data cannot separate {top.label} from {second.label}: "
                    f"{top.label} ranks first, but "
                    + ("their 95% intervals overlap." if top.stats["dice_ci_low"] <= second.stats["dice_ci_high"]
                       else f"the Holm p against it is not below {ALPHA:g}."))
    ranking = (f"#1 {top.label}: {_dice(top)}, P(best) {top.stats.get('p_best', float('nan')):.2f}; "
               f"#2 {second.label}: {_dice(second)}, Wilcoxon p {_p(p_next)} (Holm)")
    ref = _comparator_row(lb)
    if ref is not None and ref is not top:
        ranking += (f"; the declared comparator {ref.label}: {_dice(ref)}, "
                    f"#1 against it p {_p(top.stats.get('p_vs_reference_holm', float('nan')))} (Holm)")
    elif ref is top:
        ranking += "; #1 is the declared comparator itself"
    return Verdict(headline, ranking + ".", _question(lb), caveat(lb))


def _shared_models(lb: Leaderboard) -> list[Row]:
    sec = next((s for s in lb.sections if s.section == "shared"), None)
    return [] if sec is None else [r for r in sec.rows if not r.reference]


def _top3(rows: list[Row]) -> str:
    return ", ".join(r.arch for r in rows[:3])


def _shared_headline(tuned: list[Row], shared: list[Row]) -> str:
    """The headline when the page has a shared-recipe table (see the module's docstring)."""
    top, second = tuned[0], tuned[1]
    if top.arch == shared[0].arch and separates(top, second) and separates(shared[0], shared[1]):
        headline = (f"Winner: {top.arch} beats {second.arch} under its own best recipe and under a shared one"
                    + ("." if shared[1].arch == second.arch else f" (where {shared[1].arch} is second)."))
        return headline
    if top.arch != shared[0].arch:
        why = f"{top.arch} ranks first under its own recipe, {shared[0].arch} under the shared one."
    else:
        why = (f"{top.arch} ranks first under both recipes, but its 95% interval and Holm p do not set it apart "
               "from the runner-up in both tables.")
    headline = f"The data cannot separate {top.arch} from the runner-up under both recipes: {why}"
    common = {r.arch for r in tuned} & {r.arch for r in shared}
    if [r.arch for r in tuned if r.arch in common] != [r.arch for r in shared if r.arch in common]:
        headline += (f" The order of the architectures differs between the tables (top 3 tuned: {_top3(tuned)}; "
                     f"shared: {_top3(shared)}).")
    return headline


def _comparator_row(lb: Leaderboard):
    return next((r for r in lb.rows if lb.reference_arch and r.label == lb.reference_arch), None)


def _question(lb: Leaderboard) -> str:
    """Does TransFuse (any row of a ``transfuse*`` architecture) beat the comparator?"""
    from benchmark.results import resampling as stats
    ref = _comparator_row(lb)
    rows = [r for r in lb.rows if not r.reference and r.arch.startswith(QUESTION_ARCH_PREFIX)]
    if ref is None or not rows:
        return ""
    answers, beats = [], False
    for r in rows:
        mean, lo, hi = stats.difference_interval(lb.boots[r.label]["dice"], lb.boots[ref.label]["dice"])
        p = r.stats.get("p_vs_reference_holm", float("nan"))
        significant = not math.isnan(p) and p < ALPHA
        if lo > 0 and significant:
            what, beats = "beats it", True
        elif hi < 0 and significant:
            what = "is worse"
        else:
            what = "cannot be told from it"
        answers.append(f"{r.label} {what} (Dice difference {mean:+.3f} [{lo:+.3f}, {hi:+.3f}], p {_p(p)} (Holm))")
    return (f"Does TransFuse beat {ref.label}? {'Yes' if beats else 'No'}: " + "; ".join(answers) + ".")


def caveat(lb: Leaderboard) -> str:
    """The data source, preset, seeds and epochs the table's models ran with."""
    from benchmark.run.config import flatten
    runs = [x for r in lb.rows if not r.reference for x in r.runs]
    seeds = sorted({x.seed for x in runs}, key=lambda s: (not s.isdigit(), int(s) if s.isdigit() else 0, s))
    epochs = sorted({str(flatten(x.config).get("train.epochs", "?")) for x in runs if x.config})
    source = ("phantom data (synthetic images drawn around real LIDC-IDRI contours, not the real scans)"
              if lb.key.source == "phantom" else f"real scans ({lb.key.source})")
    return (f"Caveat: {source}; {lb.key.preset} preset; seeds {', '.join(seeds) or '–'} per model; "
            f"{'/'.join(epochs) or '?'} training epochs; {lb.key.n_nodules} test nodules.")
