"""The page's sections around the main table: tuned and default settings (with each row's gain
from tuning), the shared recipe, the loss study, searched networks against their parents and
against random architectures, the recipe-swap matrix and the diagnostics (convergence, the tuning
signal). ``build_sections`` assembles them from the runs; each table is ``statistics.build_leaderboard``.
"""
from __future__ import annotations

from dataclasses import dataclass


from benchmark.core.errors import UsageError
from benchmark.results.leaderboard.collect import RunRecord, TableKey
from benchmark.results.leaderboard.statistics import Leaderboard, Row, all_rows, build_leaderboard


def add_tuning_gain(default: Leaderboard, tuned: Leaderboard) -> None:
    """Each default row's gain from tuning: the tuned row of the same (architecture, loss) minus
    it, mean Dice with the interval of the paired bootstrap difference (same nodule draws)."""
    from benchmark.results import resampling as stats
    by_pair = {(r.arch, r.loss): r for r in tuned.rows if not r.reference}
    for r in default.rows:
        t = by_pair.get((r.arch, r.loss))
        if r.reference or t is None:
            continue
        mean, lo, hi = stats.difference_interval(tuned.boots[t.label]["dice"], default.boots[r.label]["dice"])
        r.stats.update(gain=t.stats["dice_mean"] - r.stats["dice_mean"], gain_ci_low=lo, gain_ci_high=hi)
    default.table["tuning_gain"] = [r.stats.get("gain", float("nan")) for r in default.rows]
    default.table["tuning_gain_ci_low"] = [r.stats.get("gain_ci_low", float("nan")) for r in default.rows]
    default.table["tuning_gain_ci_high"] = [r.stats.get("gain_ci_high", float("nan")) for r in default.rows]


def add_loss_tests(loss: Leaderboard, comparator: str = "dice_bce") -> None:
    """Paired Wilcoxon of every loss against ``comparator`` on the same architecture (per-nodule
    Dice, mean over seeds); all comparisons of the loss study form one Holm family."""
    from benchmark.results import resampling as stats
    pairs = []
    for r in loss.rows:
        base = next((b for b in loss.rows if b.arch == r.arch and b.loss == comparator), None)
        if base is not None and r is not base:
            pairs.append((r, stats.wilcoxon_p(loss.per_nodule.loc[r.label].to_numpy(float),
                                              loss.per_nodule.loc[base.label].to_numpy(float))))
    for (r, p), q in zip(pairs, stats.holm([p for _, p in pairs])):
        r.stats.update(p_vs_comparator=p, p_vs_comparator_holm=q)
    loss.rows.sort(key=lambda r: (r.arch, r.loss != comparator, -r.stats["dice_mean"], r.label))
    order = {r.label: i for i, r in enumerate(loss.rows)}
    loss.table = loss.table.assign(_o=loss.table["row"].map(order)).sort_values("_o").drop(columns="_o") \
        .reset_index(drop=True)
    loss.table["p_vs_dice_bce_holm"] = [r.stats.get("p_vs_comparator_holm", float("nan")) for r in loss.rows]


@dataclass
class SearchComparison:
    """A searched network's row against its parent's in the same table (``searched_parents``):
    the Dice difference (searched minus parent, mean with the interval of the paired two-level
    bootstrap difference) and the paired Wilcoxon p over nodules, Holm-corrected over the pairs."""
    searched: Row
    parent: Row
    dice_diff: float
    dice_diff_low: float
    dice_diff_high: float
    p: float
    p_holm: float = float("nan")

    def verdict(self) -> str:
        """What the row shows, in the terms of the question a search must answer: does the searched
        network match or beat its parent at lower cost?"""
        if self.dice_diff_low > 0:
            dice = "beats its parent (Dice difference interval above 0)"
        elif self.dice_diff_high < 0:
            dice = "is worse than its parent (Dice difference interval below 0)"
        else:
            dice = "cannot be told from its parent (Dice difference interval includes 0)"
        cheaper = self.searched.stats["macs_per_patch"] < self.parent.stats["macs_per_patch"]
        return f"{dice}, {'at fewer MACs' if cheaper else 'at no fewer MACs'}"


def search_comparisons(lb: Leaderboard, parents: dict[str, str]) -> list[SearchComparison]:
    """Each searched architecture's model row against its parent's model row of the same table
    and loss (both must be there); the pairs form one Holm family."""
    from benchmark.results import resampling as stats
    rows = {(r.arch, r.loss): r for r in lb.rows if not r.reference}
    out = []
    for (arch, loss), r in sorted(rows.items()):
        parent = rows.get((parents.get(arch), loss))
        if parent is None:
            continue
        mean, lo, hi = stats.difference_interval(lb.boots[r.label]["dice"], lb.boots[parent.label]["dice"])
        p = stats.wilcoxon_p(lb.per_nodule.loc[r.label].to_numpy(float), lb.per_nodule.loc[parent.label].to_numpy(float))
        out.append(SearchComparison(r, parent, mean, lo, hi, p))
    for c, q in zip(out, stats.holm([c.p for c in out])):
        c.p_holm = q
    return out


def build_sections(key: TableKey, runs: list[RunRecord], ranking: str = "aggregate", n_boot: int = 2000,
                   boot_seed: int = 0) -> Leaderboard:
    """The main table and the sections below it (see ``RunRecord.section``): with tuned runs, the
    tuned table comes first and the default-settings table (with each architecture's gain from
    tuning) second; without, the default-settings table is the main one. The loss study, when
    there is one, comes last. Reference rows are shown in the main table only. Random-search
    control runs go only to the search-vs-random section (``search_control``)."""
    from benchmark.results.leaderboard.search_control import is_random_control, search_controls
    controls = search_controls(runs, n_boot, boot_seed)
    runs = [r for r in runs if not is_random_control(r) and r.section != "excluded"]
    refs = [r for r in runs if r.section == "reference"]
    tuned = [r for r in runs if r.section == "tuned"]
    default = [r for r in runs if r.section == "default"]
    if not (tuned or default or refs):
        # the loss study is a section below a main table, and compares against its final runs
        raise UsageError(f"table {key.name}: only loss-study runs (tag protocol.part=loss) match, and a loss "
                         f"study is shown below the main table: the protocol's final runs (or default-settings "
                         f"runs) must be in the store too (check --preset/--filter)")
    if tuned:
        lb = build_leaderboard(key, tuned + refs, ranking, n_boot, boot_seed, section="tuned")
        if default:
            d = build_leaderboard(key, default, ranking, n_boot, boot_seed, section="default")
            add_tuning_gain(d, lb)
            lb.sections.append(d)
    else:
        lb = build_leaderboard(key, default + refs, ranking, n_boot, boot_seed, section="default")
    shared = [r for r in runs if r.section == "shared"]
    if shared:
        lb.sections.append(build_leaderboard(key, shared, ranking, n_boot, boot_seed, section="shared"))
    from architectures import searched_parents
    lb.comparisons = search_comparisons(lb, searched_parents())
    lb.search_controls = controls
    loss_archs = {r.arch for r in runs if r.section == "loss"}
    if loss_archs:
        study = [r for r in runs if r.section in ("tuned", "loss") and r.arch in loss_archs]
        ls = build_leaderboard(key, study, ranking, n_boot, boot_seed, section="loss")
        add_loss_tests(ls)
        lb.sections.append(ls)
    from benchmark.results.leaderboard.diagnostics import add_diagnostics
    from benchmark.results.leaderboard.recipes import swap_matrix
    lb.swap = swap_matrix(lb, [r for r in runs if r.section == "swap"])
    add_diagnostics(lb, runs)
    return lb



def page_runs(lb: Leaderboard) -> list[RunRecord]:
    """Every run the page's tables rest on: those of its rows and those of its recipe-swap matrix."""
    swap = [x for runs in lb.swap.runs.values() for x in runs] if lb.swap is not None else []
    return [x for r in all_rows(lb) for x in r.runs] + swap


def exported_runs(lb: Leaderboard) -> list[RunRecord]:
    """What the page's run export carries: its tables' runs and the random architectures of its
    search-against-random section (in no table), so ``--from`` recomputes every line of it."""
    return page_runs(lb) + [x for c in lb.search_controls for runs in c.runs.values() for x in runs]
