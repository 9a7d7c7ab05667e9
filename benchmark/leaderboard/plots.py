"""The leaderboard page's plots (matplotlib, Agg), as PNG bytes for the HTML page."""
from __future__ import annotations

import io
import math

import numpy as np

from .statistics import SIZE_BINS, SIZE_KEYS, Leaderboard


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
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots = {}
    models = [r for r in lb.rows if not r.reference]
    refs = [r for r in lb.rows if r.reference]

    # Dice vs MACs, Pareto front
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    pts = [(r.stats["macs_per_patch"], r.stats["dice_mean"]) for r in models
           if r.stats["macs_per_patch"] > 0 and not math.isnan(r.stats["macs_per_patch"])]
    costed = [r for r in models if r.stats["macs_per_patch"] > 0 and not math.isnan(r.stats["macs_per_patch"])]
    front = set(pareto_front(pts))
    for i, (r, (x, y)) in enumerate(zip(costed, pts)):
        s = r.stats
        ax.errorbar(x, y, yerr=[[y - s["dice_ci_low"]], [s["dice_ci_high"] - y]], fmt="o", capsize=3,
                    color="C3" if i in front else "C0", ms=7 if i in front else 5)
        ax.annotate(r.label, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=7)
    if front:
        fp = sorted((pts[i] for i in front))
        ax.step([p[0] for p in fp], [p[1] for p in fp], where="post", color="C3", lw=1, ls="--",
                label="Pareto front (fewer MACs, higher Dice)")
    for j, r in enumerate(refs):
        ax.axhline(r.stats["dice_mean"], color=f"C{j + 4}", ls=":", lw=1.2, label=f"{r.label} (reference)")
    if pts:
        ax.set_xscale("log")
        ax.margins(x=0.2)     # room for the labels of the extreme points
    ax.set_xlabel("MACs per patch (log scale)")
    ax.set_ylabel("mean test Dice (95% bootstrap CI)")
    ax.set_title(f"Dice vs compute, {lb.key.dataset} [{lb.key.preset}]", fontsize=10)
    ax.grid(alpha=.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    plots["dice_vs_macs"] = _png(fig)

    # per-nodule Dice distribution per row
    labels = [r.label for r in lb.rows]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.8 * len(labels) + 2), 4.5))
    data = [lb.per_nodule.loc[lab].to_numpy(float) for lab in labels]
    ax.boxplot(data, showmeans=True, widths=0.6, flierprops={"markersize": 0})
    jitter = np.random.default_rng(0)
    for i, (d, r) in enumerate(zip(data, lb.rows), start=1):
        ax.scatter(i + jitter.uniform(-0.18, 0.18, len(d)), d, s=6, alpha=.45,
                   color="C1" if r.reference else "C0", zorder=3)
    ax.set_xticks(range(1, len(labels) + 1))
    ax.set_xticklabels([lab + (" (ref)" if r.reference else "") for lab, r in zip(labels, lb.rows)],
                       rotation=35, ha="right", fontsize=8)
    ax.set_ylabel("per-nodule Dice (mean over seeds)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("Per-nodule test Dice (box: quartiles, triangle: mean)", fontsize=10)
    ax.grid(alpha=.3, axis="y")
    fig.tight_layout()
    plots["dice_per_nodule"] = _png(fig)

    # Dice by size bin
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    xs = np.arange(len(SIZE_BINS))
    for i, r in enumerate(lb.rows):
        ys = [r.stats[f"dice_size_{SIZE_KEYS[b]}"] for b in SIZE_BINS]
        ax.plot(xs, ys, marker="o", ls=":" if r.reference else "-", label=r.label + (" (ref)" if r.reference else ""),
                color=f"C{i % 10}")
    ax.set_xticks(xs)
    ax.set_xticklabels([f"{b} mm\n(n={lb.size_counts[b]})" for b in SIZE_BINS])
    ax.set_ylabel("mean test Dice")
    ax.set_ylim(0, 1)
    ax.set_title("Dice by nodule diameter", fontsize=10)
    ax.grid(alpha=.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    plots["dice_by_size"] = _png(fig)
    return plots
