"""``bench leaderboard``: the benchmark's tables, generated from MLflow and nothing else.

    bench leaderboard [--preset cpu] [--ranking aggregate|rank] [--out DIR]

Every number in a leaderboard is recomputed from the runs' own ``evaluation/per_nodule.csv``
artifacts (not from their logged aggregates), so a row can always be traced back to its runs;
the run ids are printed beside it.

The package, in the order the data flows (each module imports only the ones before it):

  * ``collect``: runs from MLflow or a run export as ``RunRecord``s, grouped into tables that
    never mix splits, ground truths, presets or test sets (``TableKey``);
  * ``recipes``: which final runs pool into one tuned row, and the recipe-swap matrix (protocol v7:
    each architecture trained with another's recipe);
  * ``statistics``: one table's rows, the two-level bootstrap, ranks and tests (``Leaderboard``);
    its docstring says what every number means;
  * ``diagnostics``: convergence flags, the seed-level test, Dice by study and the tuning signal;
    ``search_control``: searched networks against random architectures of their space;
  * ``sections``: the page's tables assembled (``build_sections``: tuned, default, shared recipe,
    loss study, search comparisons, recipe swap, diagnostics);
  * ``plots``: the page's figures and their captions;
  * ``render``: the Markdown, CSV and HTML pages (the HTML one with the figures);
  * ``generate``: the pipeline (``generate``), the files, the MLflow logging and the model registry
    (the command itself is ``benchmark.cli.leaderboard``).

The names below are the package's interface for scripts and tests.
"""
from __future__ import annotations

from benchmark.results.resampling import holm  # noqa: F401 - part of this package's interface (tests, scripts)
from benchmark.results.leaderboard.generate import Generated, generate, register_top_model, write_leaderboard
from benchmark.results.leaderboard.collect import (REFERENCE_ARCHS, RunRecord, TableKey, collect_runs, group_runs,
                      records_from_export, table_key)
from benchmark.results.leaderboard.plots import make_plots, pareto_front
from benchmark.results.leaderboard.render import SECTION_TITLES, render_csv, render_html, render_markdown, table_cells, title
from benchmark.results.leaderboard.statistics import RANKINGS, Leaderboard, Row, build_leaderboard, make_rows
from benchmark.results.leaderboard.sections import add_loss_tests, add_tuning_gain, build_sections

__all__ = ["RunRecord", "TableKey", "Row", "Leaderboard", "collect_runs", "records_from_export", "group_runs",
           "table_key", "make_rows", "build_leaderboard", "build_sections", "add_tuning_gain", "add_loss_tests",
           "render_markdown", "render_csv", "render_html", "table_cells", "title", "make_plots", "pareto_front",
           "write_leaderboard", "generate", "register_top_model", "Generated", "holm",
           "REFERENCE_ARCHS", "RANKINGS", "SECTION_TITLES"]
