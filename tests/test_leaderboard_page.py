"""The leaderboard page's first screen: the generated verdict, the narrow summary table and the
links from run ids to the MLflow UI (synthetic runs: no MLflow, no training)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest


def _record(run_id, arch, seed, dice, comparator="unet3d"):
    from benchmark.results.leaderboard import RunRecord
    from benchmark.results.leaderboard.collect import COMPARATOR_TAG
    n = len(dice)
    df = pd.DataFrame({"nodule_id": [f"n{i}" for i in range(n)], "dice": dice, "nsd": dice,
                       "hd95_mm": np.full(n, 3.0), "empty_pred": [False] * n, "size_bin": ["6-10"] * n})
    tags = {"arch": arch, "loss": "dice_bce", "seed": str(seed), "preset": "cpu", "data.source": "phantom",
            "data.ground_truth": "staple", "data.split_hash": "s", "data.content_hash": "c",
            COMPARATOR_TAG: comparator}
    config = {"model": {"arch": arch}, "loss": {"name": "dice_bce"}, "train": {"seed": seed, "epochs": 20}}
    return RunRecord(run_id, tags, {"test_dice": 0.0, "macs_per_patch": 5e8}, config, seed, df)


def _page(gaps: dict[str, float], n: int = 60):
    """One row per architecture, its per-nodule Dice the shared base plus its gap, three seeds."""
    from benchmark.results.leaderboard import build_sections, table_key
    g = np.random.default_rng(1)
    base = g.uniform(0.3, 0.7, n)
    runs = [_record(f"{arch[:3]}{s}", arch, s, np.clip(base + gap + g.normal(0, .02, n), 0, 1))
            for arch, gap in gaps.items() for s in range(3)]
    return build_sections(table_key(runs[0]), runs, n_boot=300)


def test_a_clear_winner_is_named_and_the_question_answered():
    from benchmark.results.leaderboard.verdict import verdict
    lb = _page({"mctrans": 0.25, "unet3d": 0.0, "transfuse_l": -0.1})
    v = verdict(lb)
    assert v.headline == "Winner: mctrans / dice_bce, ahead of unet3d / dice_bce beyond chance."
    top = lb.rows[0].stats
    assert f"Dice {top['dice_mean']:.3f} [{top['dice_ci_low']:.3f}, {top['dice_ci_high']:.3f}]" in v.ranking
    assert "P(best) 1.00" in v.ranking and "Wilcoxon p < 0.001 (Holm)" in v.ranking
    assert v.question.startswith("Does TransFuse beat unet3d / dice_bce? No: transfuse_l / dice_bce is worse")
    assert v.caveat.startswith("Caveat: phantom data") and "seeds 0, 1, 2" in v.caveat and "20 training epochs" in v.caveat


def test_overlapping_intervals_name_no_winner_even_with_a_small_p():
    from benchmark.results.leaderboard.verdict import separates, verdict
    lb = _page({"mctrans": 0.03, "unet3d": 0.0, "transfuse_s": 0.25})
    top, second = lb.rows[0], lb.rows[1]
    assert top.label.startswith("transfuse_s")
    lb2 = _page({"mctrans": 0.012, "unet3d": 0.0})
    a, b = lb2.rows[0], lb2.rows[1]
    assert b.stats["wilcoxon_p_holm"] < 0.05 and a.stats["dice_ci_low"] <= b.stats["dice_ci_high"]
    assert not separates(a, b)
    assert verdict(lb2).headline.startswith("The data cannot separate mctrans / dice_bce from unet3d / dice_bce")
    assert "#1 is the declared comparator" not in verdict(lb2).ranking
    assert "Yes: transfuse_s / dice_bce beats it" in verdict(lb).question


def test_page_opens_with_the_verdict_then_the_narrow_table_then_the_details():
    from benchmark.results.leaderboard import render_html, render_markdown
    lb = _page({"mctrans": 0.25, "unet3d": 0.0})
    md = render_markdown(lb)
    assert md.index("**Winner: mctrans") < md.index("## Summary") < md.index("## Details") < md.index("## Notes")
    summary = md.split("## Summary", 1)[1].split("##", 1)[0]
    header = next(x for x in summary.splitlines() if x.startswith("| #"))
    assert header == ("| # | Model | Dice [95% interval] | HD95 (mm) | Empty | P(best) | p vs unet3d / dice_bce (Holm) "
                      "| MACs/patch | Latency (ms) |")
    assert "| 2 | unet3d / dice_bce |" in summary and "| (comparator) |" in summary
    page = render_html(lb, {})
    assert page.index("class='verdict'") < page.index("<h2>Summary</h2>") < page.index("<h2>Details</h2>")


@pytest.mark.parametrize("url", ["", "http://127.0.0.1:5001/"])
def test_run_ids_link_to_the_tracking_server_only_when_given(url):
    from benchmark.results.leaderboard import render_html, render_markdown
    lb = _page({"mctrans": 0.25, "unet3d": 0.0})
    md, page = render_markdown(lb, url), render_html(lb, {}, url)
    if url:
        assert "[`mct0`](http://127.0.0.1:5001/#/runs/mct0)" in md
        assert "<a href='http://127.0.0.1:5001/#/runs/mct0'><code>mct0</code></a>" in page
    else:
        assert "seed 0: `mct0`" in md and "#/runs/" not in md and "<a href" not in page
