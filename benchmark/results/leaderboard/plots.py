"""The leaderboard page's plots (matplotlib, Agg), as PNG bytes for the HTML page.

Every row keeps one look across the page's plots (``row_styles``): its colour and marker are
given by its place in the main table, so a model is the same colour in the Dice-vs-MACs plot, the
per-nodule distribution and the size bins. Rows are named by a legend beside the axes (or by the
x axis); the Dice-vs-MACs plot also writes each model's architecture beside its point, placed by
``_label_points`` so that no two labels overlap (models often sit close together there).
"""
from __future__ import annotations

import io
import math
from dataclasses import dataclass, replace

import numpy as np

from benchmark.results.leaderboard.statistics import Leaderboard, Row

#: Paul Tol's "muted" qualitative scheme: nine colours that stay apart for the common colour-vision
#: deficiencies and on a white page
PALETTE = ("#CC6677", "#332288", "#DDCC77", "#117733", "#88CCEE", "#882255", "#44AA99", "#999933", "#AA4499")
#: marker shapes; once a table has more rows than PALETTE has colours, the colours repeat with the
#: next shape, so a row is still told apart by its (colour, marker) pair
MARKERS = ("o", "s", "^", "D", "v", "P", "X")
#: what each plot shows (the HTML page's figure captions)
CAPTIONS = {
    "dice_vs_macs": "Mean test Dice (bars: 95% two-level bootstrap interval) against MACs per patch, one "
                    "colour per model; points ringed in black and joined by the dashed step are the Pareto "
                    "front (no other model has fewer MACs and a higher Dice); dotted lines are the reference rows.",
    "dice_per_nodule": "Distribution of per-nodule Dice (mean over seeds) per row, in the table's colours.",
    "dice_by_size": "Mean Dice per nodule-diameter bin, in the table's colours; dotted lines are the "
                    "reference rows.",
}


@dataclass(frozen=True)
class RowStyle:
    colour: str
    marker: str


def row_styles(rows: list[Row]) -> dict[str, RowStyle]:
    """Row label -> its colour and marker, by row order: distinct colours for up to
    ``len(PALETTE)`` rows, distinct (colour, marker) pairs for up to ``len(PALETTE) * len(MARKERS)``."""
    n = len(PALETTE)
    return {r.label: RowStyle(PALETTE[i % n], MARKERS[(i // n) % len(MARKERS)]) for i, r in enumerate(rows)}


def _legend_name(row: Row) -> str:
    return row.label + (" (ref)" if row.reference else "")


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    import matplotlib.pyplot as plt
    plt.close(fig)
    return buf.getvalue()


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of points not dominated in (lower cost, higher score), sorted by cost."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], -math.inf
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def make_plots(lb: Leaderboard) -> dict[str, bytes]:
    """The page's plots as PNG bytes, by name (the keys of ``CAPTIONS``), drawn under matplotlib's
    default style whatever the process set before (Optuna's matplotlib plots switch the global
    style to ggplot), so that a page is the same bytes in any process."""
    import matplotlib.pyplot as plt
    with plt.style.context("default"):
        return {name: _png(fig) for name, fig in make_figures(lb).items()}


def make_figures(lb: Leaderboard) -> dict:
    """The page's plots as open matplotlib figures (``make_plots`` renders and closes them)."""
    import matplotlib
    matplotlib.use("Agg")
    styles = row_styles(lb.rows)
    # every plot draws Dice against the STAPLE: a row without one (readers_vs_truth) has nothing there
    drawn = [r for r in lb.rows if not math.isnan(r.stats["dice_mean"])]
    if len(drawn) < len(lb.rows):
        lb = replace(lb, rows=drawn, per_nodule=lb.per_nodule.loc[[r.label for r in drawn]])
    return {"dice_vs_macs": _dice_vs_macs(lb, styles), "dice_per_nodule": _dice_per_nodule(lb, styles),
            "dice_by_size": _dice_by_size(lb, styles)}


def _legend_beside(ax, order: list[str]) -> None:
    """The axes' legend, its entries in ``order`` (table order), outside the axes: a legend inside
    would sit on top of some model's points."""
    handles, names = ax.get_legend_handles_labels()
    place = {name: i for i, name in enumerate(order)}
    entries = sorted(zip(handles, names), key=lambda entry: place.get(entry[1], len(place)))
    ax.legend([h for h, _ in entries], [n for _, n in entries], fontsize=7, loc="upper left",
              bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, frameon=False)


def _dice_vs_macs(lb: Leaderboard, styles: dict[str, RowStyle]):
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(9.5, 4.8))
    costed = [r for r in lb.rows if not r.reference
              and r.stats["macs_per_patch"] > 0 and not math.isnan(r.stats["macs_per_patch"])]
    pts = [(r.stats["macs_per_patch"], r.stats["dice_mean"]) for r in costed]
    front = set(pareto_front(pts))
    for i, (r, (x, y)) in enumerate(zip(costed, pts)):
        s, style = r.stats, styles[r.label]
        on_front = i in front
        ax.errorbar(x, y, yerr=[[y - s["dice_ci_low"]], [s["dice_ci_high"] - y]], fmt=style.marker, capsize=3,
                    color=style.colour, ms=8 if on_front else 6, mec="black" if on_front else style.colour,
                    mew=1.5 if on_front else 1.0, label=r.label)
    front_name = "Pareto front (fewer MACs, higher Dice)"
    if front:
        fp = sorted((pts[i] for i in front))
        ax.step([p[0] for p in fp], [p[1] for p in fp], where="post", color="black", lw=1, ls="--", label=front_name)
    for r in lb.rows:
        if r.reference:
            ax.axhline(r.stats["dice_mean"], color=styles[r.label].colour, ls=":", lw=1.4, label=_legend_name(r))
    if pts:
        ax.set_xscale("log")
        ax.margins(x=0.1)
        _si_log_axis(ax.xaxis)
    ax.set_xlabel("MACs per patch (log scale)")
    ax.set_ylabel("mean test Dice (95% bootstrap CI)")
    ax.set_title(f"Dice vs compute, {lb.key.dataset} [{lb.key.preset}]", fontsize=10)
    ax.grid(alpha=.3)
    models_first = [r.label for r in lb.rows if not r.reference] + [front_name] + \
        [_legend_name(r) for r in lb.rows if r.reference]
    _legend_beside(ax, models_first)
    fig.tight_layout()
    _label_points(ax, [(r.arch, x, y) for r, (x, y) in zip(costed, pts)])
    return fig


def _si_log_axis(axis) -> None:
    """Tick labels like "200 M" on a log axis: matplotlib's minor labels ("3x10^8") run into each other."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    def si(x, _pos):
        for factor, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
            if x >= factor:
                return f"{x / factor:g} {prefix}"
        return f"{x:g}"
    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(si))
    axis.set_minor_formatter(NullFormatter())


#: where a point's label may go, in points from the point, tried in this order
_LABEL_OFFSETS = [(7, -3), (7, 7), (7, -13), (-7, -3), (-7, 7), (-7, -13), (7, 17), (7, -23), (-7, 17), (-7, -23),
                  (7, 27), (7, -33), (-7, 27), (-7, -33)]


def _label_points(ax, points: list[tuple[str, float, float]]) -> None:
    """Write each point's name beside it, at the first offset (``_LABEL_OFFSETS``) where its box
    overlaps no label already placed and stays inside the axes; the legend still names every point,
    so a label that finds no free place is left out rather than drawn over another."""
    fig = ax.figure
    renderer = fig.canvas.get_renderer()
    inside = ax.get_window_extent(renderer)
    placed = []
    for name, x, y in sorted(points, key=lambda p: -p[2]):
        for dx, dy in _LABEL_OFFSETS:
            text = ax.annotate(name, (x, y), xytext=(dx, dy), textcoords="offset points", fontsize=7,
                               ha="left" if dx > 0 else "right", va="bottom", color="#333",
                               bbox={"boxstyle": "round,pad=0.1", "fc": "white", "ec": "none", "alpha": 0.8})
            box = text.get_window_extent(renderer)
            if inside.contains(box.x0, box.y0) and inside.contains(box.x1, box.y1) \
                    and not any(box.overlaps(other) for other in placed):
                placed.append(box)
                break
            text.remove()


def _dice_per_nodule(lb: Leaderboard, styles: dict[str, RowStyle]):
    import matplotlib.pyplot as plt
    labels = [r.label for r in lb.rows]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.8 * len(labels) + 2), 4.5))
    data = [lb.per_nodule.loc[lab].to_numpy(float) for lab in labels]
    ax.boxplot(data, showmeans=True, widths=0.6, flierprops={"markersize": 0},
               medianprops={"color": "black"}, meanprops={"markerfacecolor": "black", "markeredgecolor": "black"})
    jitter = np.random.default_rng(0)
    for i, (d, r) in enumerate(zip(data, lb.rows), start=1):
        style = styles[r.label]
        ax.scatter(i + jitter.uniform(-0.18, 0.18, len(d)), d, s=8, alpha=.6, color=style.colour,
                   marker=style.marker, zorder=3, label=r.label)
    ax.set_xticks(range(1, len(labels) + 1))
    ax.set_xticklabels([_legend_name(r) for r in lb.rows], rotation=35, ha="right", fontsize=8)
    ax.set_ylabel("per-nodule Dice (mean over seeds)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("Per-nodule test Dice (box: quartiles, triangle: mean)", fontsize=10)
    ax.grid(alpha=.3, axis="y")
    fig.tight_layout()
    return fig


def _dice_by_size(lb: Leaderboard, styles: dict[str, RowStyle]):
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(9.5, 4.5))
    xs = np.arange(len(lb.size_keys))
    for r in lb.rows:
        style = styles[r.label]
        ys = [r.stats[f"dice_size_{key}"] for key in lb.size_keys.values()]
        ax.plot(xs, ys, marker=style.marker, ls=":" if r.reference else "-", color=style.colour,
                label=_legend_name(r))
    ax.set_xticks(xs)
    ax.set_xticklabels([f"{b} mm\n(n={lb.size_counts[b]})" for b in lb.size_keys])
    ax.set_ylabel("mean test Dice")
    ax.set_ylim(0, 1)
    ax.set_title("Dice by nodule diameter", fontsize=10)
    ax.grid(alpha=.3)
    _legend_beside(ax, [_legend_name(r) for r in lb.rows])
    fig.tight_layout()
    return fig
