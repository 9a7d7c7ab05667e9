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
from benchmark.results.leaderboard import search_control
from benchmark.results.leaderboard.sections import page_runs
from benchmark.results.leaderboard.statistics import Leaderboard, Row, all_rows
from benchmark.results.leaderboard.guide import COMPARISON_TITLE, notes, reading_guide
from benchmark.results.leaderboard.verdict import verdict

SECTION_TITLES = {"tuned": "Tuned protocol", "default": "Default settings", "loss": "Loss study",
                  "shared": "Shared recipe"}
#: the headings of the v7 page's recipe-swap matrix and tuning-signal lines
SWAP_TITLE = "Recipe swap"
SIGNAL_TITLE = "Tuning signal"

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
    header += _diagnostic_headings(lb)
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
        cells += _diagnostic_cells(lb, r)
        body.append(_cells(cells))
    return header, body


def _diagnostic_headings(lb: Leaderboard) -> list[str]:
    """The columns ``diagnostics`` adds, where its numbers exist (see ``diagnostics.add_diagnostics``)."""
    cols = lb.table.columns
    out = []
    if "p_seeds_vs_reference" in cols:
        out.append("p seeds vs comparator")
    if "dice_by_study" in cols:
        out.append("Dice by study")
    if "recipe_source" in cols:
        out.append("Recipe from")
    if "best_epoch_mean" in cols:
        out += ["Best epoch (mean)", "Seeds still improving"]
    return out


def _diagnostic_cells(lb: Leaderboard, r: Row) -> list[str]:
    from benchmark.results.leaderboard.diagnostics import convergence_cell
    cols, s = lb.table.columns, r.stats
    out = []
    if "p_seeds_vs_reference" in cols:
        out.append("(comparator)" if r.label == lb.reference_arch else _p(s.get("p_seeds_vs_reference", float("nan"))))
    if "dice_by_study" in cols:
        out.append(s.get("dice_by_study") or "–")
    if "recipe_source" in cols:
        out.append(s.get("recipe_source") or "–")
    if "best_epoch_mean" in cols:
        out += [_num(s.get("best_epoch_mean", float("nan")), 1), convergence_cell(s)]
    return out


#: the headings of the page's two views of the main table: the narrow one under the verdict, the
#: wide one (every column, every section) below it
SUMMARY_TITLE = "Summary"
DETAILS_TITLE = "Details"


def summary_cells(lb: Leaderboard) -> tuple[list[str], list[list[Cell]]]:
    """The narrow main table: rank, model, Dice and HD95 with their intervals, empty predictions,
    P(best), the p against the declared comparator and the cost, the columns a reader ranks by;
    the same formatting as ``table_cells`` (whose wide table follows it on the page)."""
    header = ["#", "Model", "Dice [95% interval]", "HD95 (mm)", "Empty", "P(best)"]
    if lb.reference_arch:
        header.append(f"p vs {lb.reference_arch} (Holm)")
    header += ["MACs/patch", "Latency (ms)"]
    body = []
    for r in lb.rows:
        s = r.stats
        cells = ["ref" if r.reference else str(s["rank"]), r.label,
                 _mean_cell(s, "dice"), _mean_cell(s, "hd95_mm"), _empty_cell(s),
                 _num(s.get("p_best", float("nan")), 2)]
        if lb.reference_arch:
            cells.append("(comparator)" if r.label == lb.reference_arch else
                         _p(s.get("p_vs_reference_holm", float("nan"))))
        cells += [_si(s["macs_per_patch"]), _num(s["latency_ms_median"], 1)]
        body.append(_cells(cells))
    return header, body


def _mean_cell(s: dict, m: str) -> Cell:
    """Column ``m``'s mean over seeds and its interval, without the ± of the wide table."""
    digits = metric_spec(m).digits
    if math.isnan(s[f"{m}_mean"]):
        return Cell("–")
    return Cell(_num(s[f"{m}_mean"], digits), f"[{_num(s[f'{m}_ci_low'], digits)}, {_num(s[f'{m}_ci_high'], digits)}]")


def run_url(tracking_url: str, run_id: str) -> str:
    """The MLflow UI's page of a run (its direct route, which needs no experiment id)."""
    return f"{tracking_url.rstrip('/')}/#/runs/{run_id}"




def comparison_cells(lb: Leaderboard) -> tuple[list[str], list[list[Cell]]]:
    """The searched-vs-parent table (``sections.search_comparisons``): both rows' Dice and HD95
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
              "Wilcoxon p vs dice_bce (Holm)", *_diagnostic_headings(lb)]
    body = []
    for r in lb.rows:
        s = r.stats
        body.append(_cells([r.arch, r.loss, str(len(r.runs)), *_metric_cells(s, specs), _empty_cell(s),
                            "(comparator)" if r.loss == "dice_bce"
                            else _p(s.get("p_vs_comparator_holm", float("nan"))), *_diagnostic_cells(lb, r)]))
    return header, body


def _generated_line(lb: Leaderboard) -> str:
    return (f"Generated by `bench leaderboard` from MLflow experiment `{lb.experiment}` "
            f"({lb.n_source_runs} runs in this table); do not edit by hand.")


def _markdown_table(lb: Leaderboard) -> list[str]:
    return _markdown_rows(*table_cells(lb))


def _markdown_rows(header: list[str], body: list[list[Cell]]) -> list[str]:
    esc = [[str(c).replace("|", "\\|") for c in row] for row in body]
    return ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"] + \
        ["| " + " | ".join(row) + " |" for row in esc]


def _search_control_markdown(controls: list, scale: dict | None = None) -> list[str]:
    """The search-vs-random section (none when no run of the page is a search control); its HTML
    twin is in ``render_html``."""
    if not controls:
        return []
    return ["", f"## {search_control.TITLE}", ""] + _markdown_rows(*search_control.cells(controls)) + \
        [x for line in search_control.note_lines(controls, scale) for x in ("", line)]


def _versions(lb: Leaderboard) -> str:
    """The phantom and protocol versions the page's runs came from (from their tags)."""
    runs = page_runs(lb)
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


def reference_scale(lb: Leaderboard) -> dict:
    """The page's reference rows with a test Dice (label -> mean Dice): what a score is read against."""
    return {r.label: r.stats["dice_mean"] for r in lb.rows
            if r.reference and not math.isnan(r.stats.get("dice_mean", float("nan")))}


def render_markdown(lb: Leaderboard, tracking_url: str = "") -> str:
    """The Markdown page; ``tracking_url``: the MLflow server the run ids link to (plain ids without)."""
    out = [f"# {title(lb)}", ""]
    headline, *rest = verdict(lb).lines()
    out += [f"**{headline}**", ""] + [x for line in rest for x in (line, "")]
    out += [f"## {SUMMARY_TITLE}", ""] + _markdown_rows(*summary_cells(lb))
    out += ["", _generated_line(lb), "", f"## {DETAILS_TITLE}", ""]
    if lb.sections:
        out += [f"### {SECTION_TITLES[lb.section]}", ""]
    out += _markdown_table(lb)
    for sec in lb.sections:
        out += ["", f"### {SECTION_TITLES[sec.section]}", ""] + _markdown_table(sec)
    if lb.swap is not None:
        out += ["", f"### {SWAP_TITLE}", ""] + _markdown_rows(*_swap_cells(lb))
    if lb.comparisons:
        out += ["", f"### {COMPARISON_TITLE}", ""] + _markdown_rows(*comparison_cells(lb))
    if lb.tuning_signal:
        out += ["", f"### {SIGNAL_TITLE}", ""] + [x for line in signal_lines(lb) for x in (line, "")][:-1]
    out += _search_control_markdown(lb.search_controls, reference_scale(lb))
    out += ["", "## How to read this table", ""]
    out += [f"- **{term}**: {text}" for term, text in reading_guide(lb, "after")]
    out += ["", "## Notes", ""] + [f"- {n}" for n in notes(lb)]
    out += ["", "## MLflow runs", "",
            "Each row's runs and the commits they ran at; a row marked **code changed** has runs trained by "
            "different training code (its runs disagree on the `code.training_sha` tag).", ""]
    for r in all_rows(lb):
        runs = ", ".join(("" if r.reference else f"seed {x.seed}: ") + _markdown_run_id(x, tracking_url)
                         for x in r.runs)
        commits, changed = provenance(r)
        flag = " **code changed**" if changed else ""
        out.append(f"- {_run_list_label(lb, r)}: {runs} (commit {commits}){flag}")
    for (arch, source), swapped in sorted(lb.swap.runs.items()) if lb.swap is not None else ():
        runs = ", ".join(f"seed {x.seed}: " + _markdown_run_id(x, tracking_url) for x in swapped)
        out.append(f"- {SWAP_TITLE}: {arch} with the recipe of {source}: {runs}")
    for label, control_runs in _random_control_runs(lb):
        runs = ", ".join(f"seed {x.seed}: " + _markdown_run_id(x, tracking_url) for x in control_runs)
        out.append(f"- {label}: {runs}")
    return "\n".join(out) + "\n"


def _random_control_runs(lb: Leaderboard) -> list[tuple[str, list]]:
    """(label, runs) of each random architecture of the search-against-random section, in no table."""
    return [(f"{search_control.TITLE}: {c.space} random sample {k} / {c.loss}", runs)
            for c in lb.search_controls for k, runs in sorted(c.runs.items()) if k != "searched"]


def _markdown_run_id(run, tracking_url: str) -> str:
    return f"[`{run.run_id}`]({run_url(tracking_url, run.local_id)})" if tracking_url else f"`{run.run_id}`"


def _run_list_label(lb: Leaderboard, row: Row) -> str:
    """A row's name in the run listing: with its section's title when there are sections."""
    if not lb.sections or row.reference:
        return row.label
    sec = next(s for s in [lb] + lb.sections if row in s.rows)
    return f"{SECTION_TITLES[sec.section]}: {row.label}"


def _swap_cells(lb: Leaderboard) -> tuple[list[str], list[list[Cell]]]:
    from benchmark.results.leaderboard.recipes import swap_cells
    header, body = swap_cells(lb.swap)
    return header, [_cells(row) for row in body]


def signal_lines(lb: Leaderboard) -> list[str]:
    """One sentence per protocol on how well its tuning score predicts its finals' validation Dice."""
    from benchmark.results.leaderboard.diagnostics import signal_line
    return [signal_line(name, rho, n) for name, (rho, n) in lb.tuning_signal.items()]


def render_csv(lb: Leaderboard) -> str:
    from benchmark.results.leaderboard.diagnostics import COLUMNS
    table = pd.concat([lb.table] + [s.table for s in lb.sections], ignore_index=True) if lb.sections else lb.table
    if lb.swap is not None:
        from benchmark.results.leaderboard.recipes import swap_csv_rows
        table = pd.concat([table, pd.DataFrame.from_records(swap_csv_rows(lb.swap))], ignore_index=True)
    # the columns added since a page format was published go last, so every older column keeps its place
    table = table[[c for c in table.columns if c not in COLUMNS] + [c for c in COLUMNS if c in table.columns]]
    return table.to_csv(index=False, float_format="%.6g", lineterminator="\n")


# cells never wrap (a number broken over lines is hard to read); a wide table scrolls sideways instead
_CSS = """body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2em;color:#222}
.scroll{overflow-x:auto}
table{border-collapse:collapse;font-size:13px}th,td{border:1px solid #ccc;padding:3px 6px;text-align:right}
td{white-space:nowrap;vertical-align:top}th{background:#f0f0f0;vertical-align:bottom}
td:nth-child(2),th:nth-child(2){text-align:left}tr.ref{background:#fff6e0;font-style:italic}
.ci{display:block;color:#666;font-size:11px}
img{max-width:100%;margin:1em 0}code{font-size:12px}
.verdict{border-left:4px solid #332288;background:#f4f4fa;padding:.4em 1em;margin:1em 0;max-width:75em}
.verdict p{margin:.4em 0}.verdict .headline{font-size:1.15em;font-weight:bold}.verdict .caveat{color:#555}"""


def _html_cell(cell: Cell) -> str:
    e = html.escape
    if not cell.interval:
        return f"<td>{e(cell.value)}</td>"
    return f"<td title='95% bootstrap interval {e(cell.interval)}'>{e(cell.value)}" \
           f"<span class='ci'>{e(cell.interval)}</span></td>"


def render_html(lb: Leaderboard, plots: dict[str, bytes], tracking_url: str = "") -> str:
    """The HTML page (figures inline); ``tracking_url`` as for ``render_markdown``."""
    e = html.escape
    v = verdict(lb)
    parts = ["<!DOCTYPE html>", "<html><head><meta charset='utf-8'>",
             f"<title>{e(title(lb))}</title><style>{_CSS}</style></head><body>",
             f"<h1>{e(title(lb))}</h1>", "<div class='verdict'>",
             f"<p class='headline'>{e(v.headline)}</p>"]
    parts += [f"<p>{e(line)}</p>" for line in (v.ranking, v.search, v.question) if line]
    parts += [f"<p class='caveat'>{e(v.caveat)}</p>", "</div>", f"<h2>{SUMMARY_TITLE}</h2>"]
    parts += _html_table(*summary_cells(lb), _row_classes(lb))
    parts += [f"<p>{e(_generated_line(lb)).replace('`', '')}</p>", f"<h2>{DETAILS_TITLE}</h2>"]
    tables = [(SECTION_TITLES[sec.section] if lb.sections else None, *table_cells(sec), _row_classes(sec))
              for sec in [lb] + lb.sections]
    if lb.swap is not None:
        header, body = _swap_cells(lb)
        tables.append((SWAP_TITLE, header, body, ["model"] * len(body)))
    if lb.comparisons:
        header, body = comparison_cells(lb)
        tables.append((COMPARISON_TITLE, header, body, ["model"] * len(body)))
    for heading, header, body, classes in tables:
        if heading:
            parts.append(f"<h3>{e(heading)}</h3>")
        parts += _html_table(header, body, classes)
    if lb.tuning_signal:
        parts += [f"<h3>{SIGNAL_TITLE}</h3>"] + [f"<p>{e(line)}</p>" for line in signal_lines(lb)]
    if lb.search_controls:
        header, body = search_control.cells(lb.search_controls)
        parts += [f"<h2>{e(search_control.TITLE)}</h2>"] + _html_table(header, [_cells(row) for row in body],
                                                                       ["model"] * len(body))
        parts += [f"<p>{e(line).replace('`', '')}</p>"
                  for line in search_control.note_lines(lb.search_controls, reference_scale(lb))]
    parts.append("<h2>How to read this table</h2><ul>")
    parts += [f"<li><b>{e(term)}</b>: {e(text)}</li>" for term, text in reading_guide(lb, "under")]
    parts.append("</ul><h2>Notes</h2><ul>")
    parts += [f"<li>{e(n)}</li>" for n in notes(lb)]
    parts.append("</ul><h2>Plots</h2>")
    for name, png in plots.items():
        b64 = base64.b64encode(png).decode("ascii")
        parts.append(f"<figure><img alt='{e(name)}' src='data:image/png;base64,{b64}'>"
                     f"<figcaption>{e(PLOT_CAPTIONS.get(name, name))}</figcaption></figure>")
    parts.append("<h2>MLflow runs</h2><ul>")
    for r in all_rows(lb):
        ids = ", ".join(("" if r.reference else f"seed {e(x.seed)}: ") + _html_run_id(x, tracking_url)
                        for x in r.runs)
        parts.append(f"<li>{e(_run_list_label(lb, r))}: {ids}</li>")
    for (arch, source), swapped in sorted(lb.swap.runs.items()) if lb.swap is not None else ():
        ids = ", ".join(f"seed {e(x.seed)}: " + _html_run_id(x, tracking_url) for x in swapped)
        parts.append(f"<li>{e(f'{SWAP_TITLE}: {arch} with the recipe of {source}')}: {ids}</li>")
    for label, control_runs in _random_control_runs(lb):
        ids = ", ".join(f"seed {e(x.seed)}: " + _html_run_id(x, tracking_url) for x in control_runs)
        parts.append(f"<li>{e(label)}: {ids}</li>")
    parts.append("</ul></body></html>")
    return "\n".join(parts) + "\n"


def _row_classes(lb: Leaderboard) -> list[str]:
    return ["ref" if r.reference else "model" for r in lb.rows]


def _html_table(header: list[str], body: list[list[Cell]], classes: list[str]) -> list[str]:
    e = html.escape
    parts = ["<div class='scroll'><table><thead><tr>"] + [f"<th>{e(h)}</th>" for h in header]
    parts.append("</tr></thead><tbody>")
    for cls, cells in zip(classes, body):
        parts.append(f"<tr class='{cls}'>" + "".join(_html_cell(c) for c in cells) + "</tr>")
    parts.append("</tbody></table></div>")
    return parts


def _html_run_id(run, tracking_url: str) -> str:
    e = html.escape
    code = f"<code>{e(run.run_id)}</code>"
    return f"<a href='{e(run_url(tracking_url, run.local_id))}'>{code}</a>" if tracking_url else code
