"""A leaderboard as text: the Markdown page, the CSV and the HTML page (plots come ready-made).

``table_cells`` formats every number once; the Markdown and HTML tables and the model registry's
description (``cli.register_top_model``) all show those same cells. A metric cell keeps its 95%
interval apart from its value (``Cell``): Markdown writes ``value [low, high]`` in one cell, the
HTML page puts the interval on a line of its own and never wraps a cell. Both pages explain their
columns under the tables (``reading_guide``), in words that follow what ``statistics`` computes.
"""
from __future__ import annotations

import base64
import html
import math
from dataclasses import dataclass

import pandas as pd

from benchmark.run.metrics import leaderboard_columns, leaderboard_metrics, metric_spec
from benchmark.results.leaderboard.plots import CAPTIONS as PLOT_CAPTIONS
from benchmark.results.leaderboard.search_control import markdown_section as search_control_markdown
from benchmark.results.leaderboard.statistics import Leaderboard, Row, all_rows

SECTION_TITLES = {"tuned": "Tuned protocol", "default": "Default settings", "loss": "Loss study"}
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


def _num(x, digits: int) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


@dataclass(frozen=True)
class Cell:
    """One formatted table cell: its value and, for a metric, its 95% interval kept apart, so that
    the HTML page can put the interval on its own line; in text it follows the value."""
    value: str
    interval: str = ""

    def __str__(self) -> str:
        return f"{self.value} {self.interval}" if self.interval else self.value


def _metric_cell(s: dict, m: str) -> Cell:
    """Column ``m``'s mean ± std over seeds, with its interval, to its specification's digits."""
    digits = metric_spec(m).digits
    mean, std = s[f"{m}_mean"], s[f"{m}_std"]
    if math.isnan(mean):
        return Cell("–")     # a row with nothing to show there (the ceiling against the truth)
    value = _num(mean, digits) + ("" if math.isnan(std) else f" ± {_num(std, digits)}")
    return Cell(value, f"[{_num(s[f'{m}_ci_low'], digits)}, {_num(s[f'{m}_ci_high'], digits)}]")


def _cells(values: list) -> list[Cell]:
    return [v if isinstance(v, Cell) else Cell(v) for v in values]


def _si(x: float, unit: str = "") -> str:
    if x is None or math.isnan(x):
        return "–"
    if x == 0:
        return "0"
    for factor, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= factor:
            return f"{x / factor:.3g} {prefix}{unit}".rstrip()
    return f"{x:.0f}{(' ' + unit) if unit else ''}"


def _p(p) -> str:
    if p is None or (isinstance(p, float) and math.isnan(p)):
        return "–"
    return "<0.001" if p < 1e-3 else f"{p:.3f}"


def _hours(row: Row) -> str:
    """Tuning and final training time of a tuned row, in CPU or GPU hours."""
    kind = "GPU" if any("cpu" not in x.tags.get("device", "cpu").lower() for x in row.runs) else "CPU"
    tuning = float(row.tag("tuning.seconds") or "nan") / 3600
    final = row.stats.get("train_seconds_total", float("nan")) / 3600
    return f"{_num(tuning, 1)} + {_num(final, 1)} {kind} h"


def table_cells(lb: Leaderboard) -> tuple[list[str], list[list[Cell]]]:
    """Header and formatted cells shared by the markdown and HTML renderings."""
    if lb.section == "loss":
        return _loss_cells(lb)
    tol = lb.key.nsd_tolerance_mm
    extra = [x for x in lb.metrics if x not in leaderboard_columns()]
    has_gain = any("gain" in r.stats for r in lb.rows)
    header = ["#", "Model", "Seeds", *_metric_headings(leaderboard_metrics(), tol), "Empty"]
    header += [metric_spec(x).heading(tol, what="vs truth") for x in extra]
    header += [f"Dice {b} mm (n={lb.size_counts[b]})" for b in lb.size_keys]
    header += ["Params", "MACs/patch", "Latency (ms)", "Train (s)", "Mean nodule rank", "P(best)",
               "Wilcoxon p vs #1 (Holm)"]
    if lb.reference_arch:
        header.append(f"p vs {lb.reference_arch} (Holm)")
    if lb.section == "tuned":
        header += ["Study and tuning budget", "Tuning + final"]
    if has_gain:
        header.append("Gain from tuning (Dice)")
    body = []
    for r in lb.rows:
        s = r.stats
        first = "ref" if r.reference else str(s["rank"])
        name = f"{r.label} ({'reference: ' + r.reference})" if r.reference else r.label
        seeds = "det." if r.reference else str(len(r.runs))
        cells = [first, name, seeds, *_metric_cells(s, leaderboard_metrics()), _empty_cell(s)]
        cells += [_metric_cell(s, m) for m in extra]
        cells += [_num(s[f"dice_size_{key}"], 3) for key in lb.size_keys.values()]
        cells += [_si(s["params"]), _si(s["macs_per_patch"]), _num(s["latency_ms_median"], 1),
                  _num(s["train_seconds"], 0), _num(s.get("mean_nodule_rank", float("nan")), 2),
                  _num(s.get("p_best", float("nan")), 2)]
        is_top = not r.reference and r is lb.rows[0]
        cells.append("(top)" if is_top else _p(s.get("wilcoxon_p_holm", float("nan"))))
        if lb.reference_arch:
            cells.append("(reference)" if r.label == lb.reference_arch else
                         _p(s.get("p_vs_reference_holm", float("nan"))))
        if lb.section == "tuned":
            study = r.tag("optuna.study")
            cells += [f"{study}: {r.tag('tuning.budget')}" if study else "–",
                      "–" if r.reference else _hours(r)]
        if has_gain:
            cells.append(Cell(f"{s['gain']:+.3f}", f"[{s['gain_ci_low']:+.3f}, {s['gain_ci_high']:+.3f}]")
                         if "gain" in s else "–")
        body.append(_cells(cells))
    return header, body


#: the heading of the searched-vs-parent table on both pages
COMPARISON_TITLE = "Searched networks against their parents"


def comparison_cells(lb: Leaderboard) -> tuple[list[str], list[list[Cell]]]:
    """The searched-vs-parent table (``statistics.search_comparisons``): both rows' Dice and HD95
    with their intervals, the paired difference, the cost of each and the paired test."""
    header = ["Searched", "Parent", "Seeds", "Dice searched", "Dice parent", "Dice difference",
              "HD95 searched (mm)", "HD95 parent (mm)", "Params searched / parent",
              "MACs/patch searched / parent", "Wilcoxon p (Holm)", "Reading"]
    body = []
    for c in lb.comparisons:
        s, q = c.searched.stats, c.parent.stats
        body.append(_cells([
            c.searched.label, c.parent.label, f"{len(c.searched.runs)} / {len(c.parent.runs)}",
            _metric_cell(s, "dice"), _metric_cell(q, "dice"),
            Cell(f"{c.dice_diff:+.3f}", f"[{c.dice_diff_low:+.3f}, {c.dice_diff_high:+.3f}]"),
            _metric_cell(s, "hd95_mm"), _metric_cell(q, "hd95_mm"),
            f"{_si(s['params'])} / {_si(q['params'])}", f"{_si(s['macs_per_patch'])} / {_si(q['macs_per_patch'])}",
            _p(c.p_holm), c.verdict()]))
    return header, body


def _metric_headings(specs, tol_mm: float) -> list[str]:
    """Each metric's heading, followed by its median's where the specification asks for one."""
    out = []
    for spec in specs:
        out.append(spec.heading(tol_mm))
        if spec.median:
            out.append(spec.heading(tol_mm, what="median"))
    return out


def _metric_cells(s: dict, specs) -> list:
    """The cells under ``_metric_headings``: mean ± std [interval], then the median where shown."""
    out = []
    for spec in specs:
        out.append(_metric_cell(s, spec.key))
        if spec.median:
            out.append(_num(s[f"{spec.key}_median"], spec.digits))
    return out


def _empty_cell(s: dict) -> str:
    n = s.get("n_empty", float("nan"))
    return "–" if isinstance(n, float) and math.isnan(n) else f"{n:.0f}/{s['n_predictions']:.0f}"


def _loss_cells(lb: Leaderboard) -> tuple[list[str], list[list[Cell]]]:
    specs = [x for x in leaderboard_metrics() if x.loss_study]
    header = ["Architecture", "Loss", "Seeds", *_metric_headings(specs, lb.key.nsd_tolerance_mm), "Empty",
              "Wilcoxon p vs dice_bce (Holm)"]
    body = []
    for r in lb.rows:
        s = r.stats
        body.append(_cells([r.arch, r.loss, str(len(r.runs)), *_metric_cells(s, specs), _empty_cell(s),
                            "(comparator)" if r.loss == "dice_bce"
                            else _p(s.get("p_vs_comparator_holm", float("nan")))]))
    return header, body


def _notes(lb: Leaderboard) -> list[str]:
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
           + ("the seed paper's model" if lb.comparator == "unet3d" else "the comparator the runs' protocol declares")
           if lb.reference_arch else "")
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
    if any(sec.section == "loss" for sec in sections):
        guide.append(("Loss study", "each loss against dice_bce on the same architecture: the same paired test, "
                                    "one Holm family for the whole study."))
    return guide


def _generated_line(lb: Leaderboard) -> str:
    return (f"Generated by `bench leaderboard` from MLflow experiment `{lb.experiment}` "
            f"({lb.n_source_runs} runs in this table); do not edit by hand.")


def _markdown_table(lb: Leaderboard) -> list[str]:
    return _markdown_rows(*table_cells(lb))


def _markdown_rows(header: list[str], body: list[list[Cell]]) -> list[str]:
    esc = [[str(c).replace("|", "\\|") for c in row] for row in body]
    return ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"] + \
        ["| " + " | ".join(row) + " |" for row in esc]


def _versions(lb: Leaderboard) -> str:
    """The phantom and protocol versions the page's runs came from (from their tags)."""
    runs = [x for r in all_rows(lb) for x in r.runs]
    phantoms = sorted({x.tags.get("data.phantom_version", "") for x in runs} - {"", "none"})
    protocols = sorted({f"{x.tags['protocol.name']} v{x.tags.get('protocol.version', '?')}"
                        for x in runs if x.tags.get("protocol.name")})
    parts = [f"phantom v{'/'.join(phantoms)}"] if phantoms else []
    parts += [f"protocol {', '.join(protocols)}"] if protocols else ["no declared protocol"]
    return ", ".join(parts)


def title(lb: Leaderboard) -> str:
    return f"Leaderboard: {lb.key.dataset}, {lb.key.preset} preset ({_versions(lb)})"


def provenance(row: Row) -> tuple[str, bool]:
    """The commits a row's runs came from, and whether they disagree on the training code
    (``benchmark.core.provenance``: a hash of the code that trains and scores, tagged on every run)."""
    from benchmark.core.provenance import TAG
    commits = sorted({(x.tags.get("mlflow.source.git.commit") or x.tags.get("git.commit") or "?")[:8]
                      for x in row.runs})
    code = {x.tags.get(TAG) for x in row.runs if x.tags.get(TAG)}
    return ", ".join(commits), len(code) > 1


def render_markdown(lb: Leaderboard) -> str:
    out = [f"# {title(lb)}", "", _generated_line(lb), ""]
    if lb.sections:
        out += [f"## {SECTION_TITLES[lb.section]}", ""]
    out += _markdown_table(lb)
    for sec in lb.sections:
        out += ["", f"## {SECTION_TITLES[sec.section]}", ""] + _markdown_table(sec)
    if lb.comparisons:
        out += ["", f"## {COMPARISON_TITLE}", ""] + _markdown_rows(*comparison_cells(lb))
    out += search_control_markdown(lb.search_controls)
    out += ["", "## How to read this table", ""]
    out += [f"- **{term}**: {text}" for term, text in reading_guide(lb, "after")]
    out += ["", "## Notes", ""] + [f"- {n}" for n in _notes(lb)]
    out += ["", "## MLflow runs", "",
            "Each row's runs and the commits they ran at; a row marked **code changed** has runs trained by "
            "different training code (its runs disagree on the `code.training_sha` tag).", ""]
    for r in all_rows(lb):
        runs = ", ".join(f"seed {x.seed}: `{x.run_id}`" if not r.reference else f"`{x.run_id}`" for x in r.runs)
        commits, changed = provenance(r)
        flag = " **code changed**" if changed else ""
        out.append(f"- {_run_list_label(lb, r)}: {runs} (commit {commits}){flag}")
    return "\n".join(out) + "\n"


def _run_list_label(lb: Leaderboard, row: Row) -> str:
    """A row's name in the run listing: with its section's title when there are sections."""
    if not lb.sections or row.reference:
        return row.label
    sec = next(s for s in [lb] + lb.sections if row in s.rows)
    return f"{SECTION_TITLES[sec.section]}: {row.label}"


def render_csv(lb: Leaderboard) -> str:
    table = pd.concat([lb.table] + [s.table for s in lb.sections], ignore_index=True) if lb.sections else lb.table
    return table.to_csv(index=False, float_format="%.6g", lineterminator="\n")


# cells never wrap (a number broken over lines is hard to read); a wide table scrolls sideways instead
_CSS = """body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2em;color:#222}
.scroll{overflow-x:auto}
table{border-collapse:collapse;font-size:13px}th,td{border:1px solid #ccc;padding:3px 6px;text-align:right}
td{white-space:nowrap;vertical-align:top}th{background:#f0f0f0;vertical-align:bottom}
td:nth-child(2),th:nth-child(2){text-align:left}tr.ref{background:#fff6e0;font-style:italic}
.ci{display:block;color:#666;font-size:11px}
img{max-width:100%;margin:1em 0}code{font-size:12px}"""


def _html_cell(cell: Cell) -> str:
    e = html.escape
    if not cell.interval:
        return f"<td>{e(cell.value)}</td>"
    return f"<td title='95% bootstrap interval {e(cell.interval)}'>{e(cell.value)}" \
           f"<span class='ci'>{e(cell.interval)}</span></td>"


def render_html(lb: Leaderboard, plots: dict[str, bytes]) -> str:
    e = html.escape
    parts = ["<!DOCTYPE html>", "<html><head><meta charset='utf-8'>",
             f"<title>{e(title(lb))}</title><style>{_CSS}</style></head><body>",
             f"<h1>{e(title(lb))}</h1>",
             f"<p>{e(_generated_line(lb)).replace('`', '')}</p>"]
    tables = [(SECTION_TITLES[sec.section] if lb.sections else None, *table_cells(sec),
               ["ref" if r.reference else "model" for r in sec.rows]) for sec in [lb] + lb.sections]
    if lb.comparisons:
        header, body = comparison_cells(lb)
        tables.append((COMPARISON_TITLE, header, body, ["model"] * len(body)))
    for heading, header, body, classes in tables:
        if heading:
            parts.append(f"<h2>{e(heading)}</h2>")
        parts.append("<div class='scroll'><table><thead><tr>")
        parts += [f"<th>{e(h)}</th>" for h in header]
        parts.append("</tr></thead><tbody>")
        for cls, cells in zip(classes, body):
            parts.append(f"<tr class='{cls}'>" + "".join(_html_cell(c) for c in cells) + "</tr>")
        parts.append("</tbody></table></div>")
    parts.append("<h2>How to read this table</h2><ul>")
    parts += [f"<li><b>{e(term)}</b>: {e(text)}</li>" for term, text in reading_guide(lb, "under")]
    parts.append("</ul><h2>Notes</h2><ul>")
    parts += [f"<li>{e(n)}</li>" for n in _notes(lb)]
    parts.append("</ul><h2>Plots</h2>")
    for name, png in plots.items():
        b64 = base64.b64encode(png).decode("ascii")
        parts.append(f"<figure><img alt='{e(name)}' src='data:image/png;base64,{b64}'>"
                     f"<figcaption>{e(PLOT_CAPTIONS.get(name, name))}</figcaption></figure>")
    parts.append("<h2>MLflow runs</h2><ul>")
    for r in all_rows(lb):
        ids = ", ".join(f"seed {e(x.seed)}: <code>{e(x.run_id)}</code>" if not r.reference
                        else f"<code>{e(x.run_id)}</code>" for x in r.runs)
        parts.append(f"<li>{e(_run_list_label(lb, r))}: {ids}</li>")
    parts.append("</ul></body></html>")
    return "\n".join(parts) + "\n"
