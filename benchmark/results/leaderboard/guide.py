"""The page's words about its numbers: "How to read this table" (``reading_guide``, only for the
columns the page shows) and the notes on how every number was computed (``notes``), both following
what ``statistics`` computes."""
from __future__ import annotations

import math

from benchmark.run.metrics import leaderboard_columns, metric_spec
from benchmark.results.leaderboard.diagnostics import SIGNAL_THRESHOLD, signal_reached
from benchmark.results.leaderboard.statistics import Leaderboard

#: the heading of the searched-vs-parent table on both pages
COMPARISON_TITLE = "Searched networks against their parents"

#: what each kind of reference row measures, for the page's reading guide (arch -> meaning)
REFERENCE_MEANINGS = {
    "inter_reader": "how well radiologists agree (each reader's mask against the STAPLE of the other three, "
                    "averaged over the four readers)",
    "readers_vs_truth": "the same radiologists' masks against the phantom's true shape (averaged over the "
                        "readers), in the columns against the truth: where a model stands against a "
                        "radiologist on the truth itself",
    "threshold_baseline": "a non-learned intensity threshold, the floor any model should clear",
    "phantom_ceiling": "the phantom's true shape scored as a prediction, the best any model can be expected "
                       "to reach on this data",
}



def notes(lb: Leaderboard) -> list[str]:
    rank = ("aggregate-then-rank: models ranked by mean Dice" if lb.ranking == "aggregate" else
            "rank-then-aggregate: models ranked on each test nodule by Dice, then by their mean rank")
    sections = [lb] + lb.sections
    notes = [
        f"Test set: {lb.key.describe()}."
        + (f" {lb.n_unscored} further test nodules have no ground-truth voxel in the window at this spacing "
           f"and are scored by no row." if lb.n_unscored else ""),
        "Metric cells: mean ± std over seeds of each seed's mean over test nodules, then a 95% percentile "
        f"interval from a two-level bootstrap ({lb.n_boot} resamples, seed {lb.boot_seed}): each resample draws "
        "the test nodules with replacement (one draw shared by every row of every table, so comparisons are "
        "paired) and, within each model, its seeds with replacement; the resample's value is the mean over the "
        "drawn seeds of the mean over the drawn nodules. A model whose seeds disagree therefore gets a wider "
        "interval than one whose seeds agree.",
        "HD95: the mean is dominated by empty predictions, which score the window diagonal; the median "
        "(mean over seeds of each seed's median over nodules) is not. Empty: predictions with no foreground "
        "voxel, over all seeds x test nodules.",
        f"Ranking: {rank} (ties share the better rank). Mean nodule rank is always the rank-then-aggregate "
        "score; P(best) is the share of two-level bootstrap resamples in which the model is first under the "
        "chosen ranking.",
        "Wilcoxon: two-sided paired signed-rank tests over the test nodules of per-nodule Dice (mean over "
        "seeds). 'vs #1' compares every row with the top-ranked model (a post-hoc comparison)"
        + (f"; 'vs {lb.comparator}' compares every model with the pre-declared reference architecture, "
           "the comparator the runs' protocol declares" if lb.reference_arch else "")
        + ". Each column of each table is one Holm-corrected family.",
        "Reference rows are not ranked and are deterministic (det.: their latest run is used). inter_reader = "
        "each radiologist's mask against the STAPLE of the other three, averaged over the four radiologists; "
        "readers_vs_truth = the same masks against the phantom's true shape; threshold_baseline = "
        "non-learned intensity threshold. Why readers and models have different "
        "ground truths: a reader scored against the four-reader STAPLE would be scored partly against their "
        "own mask, which inflates agreement, so each reader is scored against the other three; the models "
        "contributed to no ground truth, so they are scored against the best one available, the four-reader "
        "STAPLE. The human row's reference has one reader fewer, which makes it a slightly conservative "
        "estimate of reader agreement.",
        "Params, MACs/patch and training time are means over seeds; latency is the fastest seed's median "
        "forward pass of one patch (other work on the machine only slows it); latency and training time were "
        "measured on: " + (", ".join(lb.devices) if lb.devices else "unknown") + ".",
    ]
    if any(x.section == "tuned" for x in sections):
        notes.append(
            "Tuned protocol: each architecture was tuned by its own Optuna study on the validation split with "
            "the same budget for all (named in each row: trials x epochs per trial, pruner), over the shared "
            "optimiser space plus the architecture's own space; the best trial's exact configuration then "
            "trained the listed seeds with the preset's epoch budget. 'Tuning + final' is the wall time of the "
            "study's trials and the training time of the final runs. The default-settings table shows the same "
            "architectures untuned; its gain column is tuned minus default mean Dice with the 95% interval of "
            "the paired two-level bootstrap difference.")
    if any(len(set(r.studies)) > 1 for x in sections for r in x.rows):
        notes.append(
            "Rows tuned by more than one study pool every study's final seeds; their interval and P(best) come "
            "from a three-level bootstrap: the studies are resampled, then each seed slot is filled from a drawn "
            "study's seeds, as well as the nodules. Rows of one study get exactly the two-level draws.")
    for name, (rho, n) in lb.tuning_signal.items():
        notes.append(f"Tuning signal, {name}: " + (f"too few tuned rows ({n}) for a rank correlation."
                                                   if math.isnan(rho) else
                                                   f"Spearman {rho:.2f} over {n} tuned rows, "
                                                   + (f"which reaches {SIGNAL_THRESHOLD:g}." if signal_reached(rho)
                                                      else f"which does not reach {SIGNAL_THRESHOLD:g}.")))
    if any(x.section == "loss" for x in sections):
        notes.append(
            "Loss study: on the listed architectures, each loss trained with that architecture's tuned "
            "settings (loss at its defaults) and the same seeds; each loss is compared with dice_bce on the "
            "same architecture by a paired Wilcoxon test over nodules; all comparisons form one Holm family.")
    return notes


def reading_guide(lb: Leaderboard, interval_place: str = "after") -> list[tuple[str, str]]:
    """The page's "How to read this table": (column or term, what its numbers mean), only for the
    columns the page shows. ``interval_place``: where the interval stands ("after" or "under" the value)."""
    sections = [lb] + lb.sections
    by = ("mean Dice" if lb.ranking == "aggregate" else
          "mean rank over the test nodules (each nodule ranks the models by Dice)")
    guide = [
        ("Verdict (the page's first lines)", "generated from the table: a winner is named only when its 95% "
                                             "interval of mean Dice lies wholly above the runner-up's and the "
                                             "Holm-corrected Wilcoxon p against the runner-up is below 0.05; "
                                             "otherwise the page says the data cannot separate the two. The "
                                             "Summary table holds the columns a ranking rests on; Details holds "
                                             "every column."),
        ("Value", f"mean ± standard deviation over the row's seeds of each seed's mean over the "
                  f"{lb.key.n_nodules} test nodules (a single run has no ±). HD95 is in mm, lower is better; "
                  "for every other metric higher is better."),
        ("[low, high]", f"the 95% interval {interval_place} the value, from a two-level bootstrap that resamples "
                        "the test nodules and the row's seeds: how far the value could move with another test "
                        "set and other seeds. Whether two rows differ is what the p-value columns test."),
        ("# and P(best)", f"models ranked by {by}, ties sharing the better rank. P(best) is the share of "
                          "bootstrap resamples in which the model ranks first: how sure the top of the table is."),
        ("Wilcoxon p vs #1 (Holm)", "paired two-sided Wilcoxon signed-rank test of the row's per-nodule Dice "
                                    "(mean over seeds) against the top-ranked model's, Holm-corrected over the "
                                    "table's rows. Small (say below 0.05): the gap is unlikely to be chance; "
                                    "large: the test cannot tell the two apart, which does not make them equal. "
                                    "(top) marks the top model itself."),
    ]
    if any(sec.section == "shared" for sec in sections):
        guide[0] = (guide[0][0], guide[0][1] + " With a shared-recipe table, a winner must also top that table "
                                               "and be set apart from its runner-up there in the same way.")
    if lb.reference_arch:
        guide.append((f"p vs {lb.reference_arch} (Holm)",
                      f"the same test of every model against {lb.reference_arch}, the reference architecture "
                      "declared before any result (so not a comparison picked after seeing the table), a second "
                      "Holm family."))
    guide.append(("Empty", "predictions with no foreground voxel, out of all predictions (seeds x test nodules). "
                           "An empty prediction scores Dice 0 and the largest possible HD95, which is why the "
                           "HD95 median stands beside the mean."))
    refs = [r for r in lb.rows if r.reference]
    if refs:
        meanings = [f"{r.label}: {REFERENCE_MEANINGS.get(r.arch, 'reference ' + r.reference)}" for r in refs]
        guide.append(("Reference rows (ref)", "not models, so not ranked; deterministic (det.), so their latest "
                                              "run stands for them. " + "; ".join(meanings) + "."))
    truth = [m for m in lb.metrics if m not in leaderboard_columns()]
    if truth:
        guide.append((", ".join(metric_spec(m).heading(lb.key.nsd_tolerance_mm, what="vs truth") for m in truth),
                      "the same prediction scored against the phantom's true shape, the shape the image was drawn "
                      "from, instead of the readers' STAPLE. The readers_vs_truth row is each radiologist's "
                      "mask against the true shape, averaged over the readers: where a model stands against a "
                      "radiologist on the truth itself; it has no score against the STAPLE (inter_reader is "
                      "that one). The phantom_ceiling row is the true shape, so it has none."))
    if any("gain" in r.stats for sec in sections for r in sec.rows):
        guide.append(("Gain from tuning", "tuned minus default mean Dice of the same architecture and loss, with "
                                          "the 95% interval of the paired bootstrap difference; an interval above "
                                          "0 means tuning helped beyond chance."))
    if lb.comparisons:
        guide.append((COMPARISON_TITLE, "each searched network's row against its parent's, the hand-designed "
                                        "network whose design space its search explored, in the same table "
                                        "and with the same loss: Dice difference is searched minus parent "
                                        "with the 95% interval of the paired bootstrap difference, and the "
                                        "Wilcoxon test is paired over nodules, one Holm family for the pairs. "
                                        "A search earns its row by matching or beating its parent at fewer "
                                        "MACs."))
    guide += _diagnostics_guide(lb)
    if any(sec.section == "loss" for sec in sections):
        guide.append(("Loss study", "each loss against dice_bce on the same architecture: the same paired test, "
                                    "one Holm family for the whole study."))
    return guide


def _diagnostics_guide(lb: Leaderboard) -> list[tuple[str, str]]:
    """The entries for the columns and sections of ``diagnostics`` and ``recipes``, where shown."""
    sections = [lb] + lb.sections
    cols = {c for sec in sections for c in sec.table.columns}
    guide = []
    if "p_seeds_vs_reference" in cols:
        guide.append(("p seeds vs comparator",
                      "Welch's t-test of the row's per-seed mean Dice against the comparator's, each training run "
                      "one observation (not Holm-corrected). The Wilcoxon columns hold the trained networks fixed "
                      "and ask whether another test set would change the order; this one asks whether other seeds "
                      "would. With 3 seeds a side it has little power: only a gap several times the seeds' spread "
                      "reaches 0.05, so a large p here means the seeds cannot separate the two, not that they are "
                      "equal."))
    if "dice_by_study" in cols:
        guide.append(("Dice by study",
                      "for an architecture tuned by two independent studies, each study's mean Dice over its "
                      "final seeds: how far the tuning's own chance moves the row. The row pools both studies' "
                      "seeds, and its interval and P(best) resample the studies as well (a third bootstrap level)."))
    if "best_epoch_mean" in cols:
        guide.append(("Best epoch (mean), Seeds still improving",
                      "the mean over seeds of the epoch with the best validation Dice, and how many seeds' best "
                      "validation Dice of the last 20% of epochs beat every earlier epoch by more than 0.005. "
                      "⚠ marks a row that was still learning when training stopped: more epochs would likely "
                      "have raised it, so its rank partly reflects the epoch budget."))
    if any(sec.section == "shared" for sec in sections):
        guide.append(("Shared recipe",
                      "every architecture trained with one and the same recipe (the one named in 'Recipe from', "
                      "chosen by that architecture's tuning study), ranked as the tuned table is. A winner that "
                      "holds under its own recipe and under the shared one is not an artefact of tuning."))
    if lb.swap is not None:
        guide.append(("Recipe swap",
                      "each architecture (row) trained with another architecture's tuned recipe (column), one "
                      "seed, so no interval; the diagonal (own) is the architecture's own tuned row. A row that "
                      "holds across columns does not depend on its recipe."))
    if lb.tuning_signal:
        guide.append(("Tuning signal",
                      "Spearman rank correlation between each tuned row's tuning score (the validation value its "
                      "configuration was chosen by) and its final runs' mean validation Dice (never test): near 1, "
                      "the cheap tuning runs already order the architectures as full training does."))
    return guide
