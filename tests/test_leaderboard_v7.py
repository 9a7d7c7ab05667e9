"""The protocol v7 page (issue 37): shared-recipe and recipe-swap sections, rows pooling two tuning
studies, the seed-level test, convergence flags, the tuning signal and the verdict across recipes
(synthetic runs: no MLflow, no training)."""
from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest

N_NODULES = 40
N_BOOT = 300


def _record(run_id, arch, seed, dice, part="final", study=None, lr=0.01, recipe=None, history=None,
            val=0.5, tags=None):
    from benchmark.results.leaderboard import RunRecord
    from benchmark.results.leaderboard.collect import COMPARATOR_TAG
    n = len(dice)
    df = pd.DataFrame({"nodule_id": [f"n{i}" for i in range(n)], "dice": dice, "nsd": dice,
                       "hd95_mm": np.full(n, 3.0), "empty_pred": [False] * n, "size_bin": ["6-10"] * n})
    t = {"arch": arch, "loss": "dice_bce", "seed": str(seed), "preset": "cpu", "data.source": "phantom",
         "data.ground_truth": "staple", "data.split_hash": "s", "data.content_hash": "c",
         COMPARATOR_TAG: "unet3d", "protocol.name": "cpu", "protocol.version": "7", "protocol.part": part,
         "optuna.study": study or f"cpu-v7-{arch}", "budget.samples_seen": "1000"}
    if recipe:
        t["recipe.source"] = recipe
    t.update(tags or {})
    config = {"model": {"arch": arch}, "loss": {"name": "dice_bce"},
              "train": {"seed": seed, "epochs": 10, "lr": lr}}
    hist = tuple(history) if history is not None else tuple((e, 0.3 + 0.05 * min(e, 5)) for e in range(1, 11))
    return RunRecord(run_id, t, {"test_dice": 0.0, "best_val_dice": val}, config, seed, df, val_dice=hist)


def _dice(rng, base, gap):
    return np.clip(base + gap + rng.normal(0, .02, len(base)), 0, 1)


def _runs(tuned: dict, shared: dict | None = None, swaps: dict | None = None, seed=1):
    """Final runs (3 seeds) per architecture with the Dice gap given, shared-recipe runs (3 seeds,
    recipe of unet3d) and swap runs ({(arch, source): gap}, 1 seed)."""
    rng = np.random.default_rng(seed)
    base = rng.uniform(0.3, 0.7, N_NODULES)
    runs = [_record(f"{a[:3]}f{s}", a, s, _dice(rng, base, g)) for a, g in tuned.items() for s in range(3)]
    runs += [_record(f"{a[:3]}sh{s}", a, s, _dice(rng, base, g), part="shared", recipe="unet3d", lr=0.02)
             for a, g in (shared or {}).items() for s in range(3)]
    runs += [_record(f"{a[:3]}sw{src[:3]}", a, 0, _dice(rng, base, g), part="swap", recipe=src, lr=0.03)
             for (a, src), g in (swaps or {}).items()]
    return runs


def _build(runs):
    from benchmark.results.leaderboard import build_sections, table_key
    return build_sections(table_key(runs[0]), runs, n_boot=N_BOOT)


def _csv(lb) -> pd.DataFrame:
    from benchmark.results.leaderboard import render_csv
    return pd.read_csv(io.StringIO(render_csv(lb)))


def test_shared_recipe_is_ranked_and_the_swap_matrix_marks_the_own_recipe():
    from benchmark.results.leaderboard import render_html, render_markdown
    runs = _runs({"mctrans": .2, "unet3d": 0.0}, shared={"mctrans": .15, "unet3d": 0.0},
                 swaps={("mctrans", "unet3d"): .1, ("unet3d", "mctrans"): -.05})
    lb = _build(runs)
    shared = next(s for s in lb.sections if s.section == "shared")
    assert [r.arch for r in shared.rows] == ["mctrans", "unet3d"] and shared.rows[0].stats["rank"] == 1
    md = render_markdown(lb)
    assert "### Shared recipe" in md and "### Recipe swap" in md
    swap = md.split("### Recipe swap", 1)[1].split("###", 1)[0]
    own = lb.rows[0].stats["dice_mean"]
    swapped = next(r for r in runs if r.tags.get("protocol.part") == "swap" and r.arch == "mctrans")
    assert f"| mctrans | {own:.3f} (own) | {swapped.per_nodule['dice'].mean():.3f} |" in swap
    tuned_md, shared_md = md.split("## Details", 1)[1].split("### Shared recipe", 1)
    assert "Recipe from" not in tuned_md.split("###", 2)[1]     # the tuned table has no such column
    shared_header = next(x for x in shared_md.splitlines() if x.startswith("| #"))
    assert shared_header.split(" | ").index("Recipe from") > 0 and "| unet3d |" in shared_md.split("###")[0]
    # the swap runs are listed with the page's runs (and exported with them: ``page_runs``)
    assert "- Recipe swap: mctrans with the recipe of unet3d: seed 0: `mctswune`" in md
    from benchmark.results.leaderboard.sections import page_runs
    assert {x.run_id for x in page_runs(lb)} == {x.run_id for x in runs}
    page = render_html(lb, {})
    assert "<h3>Shared recipe</h3>" in page and "<h3>Recipe swap</h3>" in page and "(own)" in page
    csv = _csv(lb)
    sw = csv[csv["section"] == "swap"]
    assert len(sw) == 2 and set(sw["recipe_source"]) == {"unet3d", "mctrans"}
    assert list(csv.columns)[-1] == "recipe_source"
    assert set(csv.loc[csv["section"] == "shared", "recipe_source"]) == {"unet3d"}


def test_two_studies_pool_into_one_row_with_a_three_level_interval():
    from benchmark.results import resampling as stats
    from benchmark.results.leaderboard import render_markdown
    rng = np.random.default_rng(3)
    base = rng.uniform(0.3, 0.7, N_NODULES)
    runs = [_record(f"a{s}", "mctrans", s, _dice(rng, base, .1)) for s in range(3)]
    runs += [_record(f"b{s}", "mctrans", s, _dice(rng, base, .0), study="cpu-v7-mctrans-s1", lr=0.05)
             for s in range(3)]
    runs += [_record(f"u{s}", "unet3d", s, _dice(rng, base, 0.0)) for s in range(3)]
    lb = _build(runs)
    row = next(r for r in lb.rows if r.arch == "mctrans")
    assert len(row.runs) == 6 and row.label == "mctrans / dice_bce"
    means = [r.per_nodule["dice"].mean() for r in runs[:6]]
    assert row.stats["dice_by_study"] == f"{np.mean(means[:3]):.3f} / {np.mean(means[3:]):.3f}"
    # the interval is the three-level bootstrap's: studies resampled, then seeds, then nodules
    label = f"tuned:{row.label}"
    res = stats.draw_resamples({label: 6}, N_NODULES, N_BOOT, 0, groups={label: row.studies})
    mat = np.stack([r.per_nodule.sort_values("nodule_id")["dice"].to_numpy(float) for r in row.runs])
    lo, hi = stats.percentile_interval(stats.two_level_bootstrap(mat, res, label))
    assert (row.stats["dice_ci_low"], row.stats["dice_ci_high"]) == pytest.approx((lo, hi))
    two = stats.draw_resamples({label: 6}, N_NODULES, N_BOOT, 0)
    assert stats.percentile_interval(stats.two_level_bootstrap(mat, two, label)) != pytest.approx((lo, hi))
    md = render_markdown(lb)
    assert "Dice by study" in md and row.stats["dice_by_study"] in md and "three-level bootstrap" in md


def test_seed_level_p_against_the_comparator_and_its_caveat():
    from benchmark.results.leaderboard import render_markdown
    from benchmark.results.leaderboard.diagnostics import seed_means
    from benchmark.results.resampling import seed_level_p
    lb = _build(_runs({"mctrans": .05, "unet3d": 0.0, "segresnet": .02}))
    ref = next(r for r in lb.rows if r.arch == "unet3d")
    mct = next(r for r in lb.rows if r.arch == "mctrans")
    assert mct.stats["p_seeds_vs_reference"] == pytest.approx(seed_level_p(seed_means(mct), seed_means(ref)))
    md = render_markdown(lb)
    header = next(x for x in md.split("## Details")[1].splitlines() if x.startswith("| #"))
    assert "| p seeds vs comparator |" in header
    assert "little power" in md and "3 seeds" in md
    assert "p_seeds_vs_reference" in _csv(lb).columns


def test_a_row_with_a_seed_still_improving_is_flagged():
    from benchmark.results.leaderboard import render_markdown
    runs = _runs({"mctrans": .05, "unet3d": 0.0})
    rising = tuple((e, 0.1 * e / 10 + (0.2 if e >= 9 else 0)) for e in range(1, 11))
    runs[0].val_dice = rising
    lb = _build(runs)
    mct = next(r for r in lb.rows if r.arch == "mctrans")
    assert (mct.stats["seeds_improving"], mct.stats["seeds_with_history"]) == (1, 3)
    assert mct.stats["best_epoch_mean"] == pytest.approx((10 + 5 + 5) / 3)
    md = render_markdown(lb)
    assert "⚠ 1/3 improving" in md and "| 0/3 |" in md


def test_a_page_without_v7_tags_gets_convergence_but_none_of_the_v7_columns():
    from benchmark.results.leaderboard import render_markdown
    from benchmark.results.leaderboard.diagnostics import V7_TAGS
    runs = _runs({"mctrans": .05, "unet3d": 0.0})
    for r in runs:
        r.tags["protocol.version"] = "6"
        for t in V7_TAGS + ("budget.samples_seen",):
            r.tags.pop(t, None)
    lb = _build(runs)
    assert not lb.extended and not lb.tuning_signal
    md = render_markdown(lb)
    assert "Seeds still improving" in md and "p seeds vs comparator" not in md and "Tuning signal" not in md
    cols = list(_csv(lb).columns)
    assert cols[-3:] == ["best_epoch_mean", "seeds_improving", "seeds_with_history"]


def test_tuning_signal_uses_the_rescored_value_and_never_test():
    from scipy.stats import spearmanr
    from benchmark.results.leaderboard import render_markdown
    rng = np.random.default_rng(5)
    base = rng.uniform(0.3, 0.7, N_NODULES)
    archs = {"a1": (0.50, 0.40, 0.61), "a2": (0.40, 0.55, 0.52), "a3": (0.30, 0.45, 0.43), "a4": (0.20, 0.35, 0.30)}
    runs = []
    for arch, (rescored, best, val) in archs.items():
        runs += [_record(f"{arch}{s}", arch, s, _dice(rng, base, 0.0), val=val,
                         tags={"tuning.rescored_value": str(rescored), "tuning.best_value": str(best)})
                 for s in range(3)]
    lb = _build(runs)
    rho, n = lb.tuning_signal["cpu v7"]
    assert n == 4 and rho == pytest.approx(1.0)      # rescored 4>3>2>1 and validation likewise
    assert "Spearman rank correlation 1.00 (n = 4 tuned rows)" in render_markdown(lb)
    assert "which reaches 0.8" in render_markdown(lb)
    for r in runs:                                   # without a rescored value: the tuning's best value
        del r.tags["tuning.rescored_value"]
    rho, n = _build(runs).tuning_signal["cpu v7"]
    assert rho == pytest.approx(spearmanr([.40, .55, .45, .35], [.61, .52, .43, .30]).statistic)
    assert "which does not reach 0.8" in render_markdown(_build(runs))


def test_a_tuning_signal_of_exactly_the_threshold_reaches_it():
    """Five rows whose orders differ by two adjacent swaps: rho is exactly 1 - 6*4/120 = 0.8, which
    scipy returns as 0.7999999999999999; the page must say it reaches 0.8 (cpu v7 after five rows)."""
    from benchmark.results.leaderboard import render_markdown
    rng = np.random.default_rng(6)
    base = rng.uniform(0.3, 0.7, N_NODULES)
    scores = {"a1": (0.5, 0.61), "a2": (0.4, 0.52), "a3": (0.3, 0.56), "a4": (0.2, 0.35), "a5": (0.1, 0.40)}
    runs = [_record(f"{arch}{s}", arch, s, _dice(rng, base, 0.0), val=val,
                    tags={"tuning.rescored_value": str(score)})
            for arch, (score, val) in scores.items() for s in range(3)]
    lb = _build(runs)
    assert lb.tuning_signal["cpu v7"] == (0.8, 5)
    md = render_markdown(lb)
    assert "Spearman rank correlation 0.80 (n = 5 tuned rows)" in md and "it reaches 0.8" in md
    assert "below 0.8" not in md and "which reaches 0.8." in md


def test_verdict_names_a_winner_only_when_it_wins_under_both_recipes():
    from benchmark.results.leaderboard.verdict import verdict
    both = _build(_runs({"mctrans": .25, "unet3d": 0.0}, shared={"mctrans": .25, "unet3d": 0.0}))
    assert verdict(both).headline == ("Winner: mctrans beats unet3d under its own best recipe and under a "
                                      "shared one.")
    flipped = _build(_runs({"mctrans": .25, "unet3d": 0.0, "segresnet": -.1},
                           shared={"mctrans": -.2, "unet3d": 0.0, "segresnet": .1}))
    h = verdict(flipped).headline
    assert h.startswith("The data cannot separate mctrans from the runner-up under both recipes")
    assert "top 3 tuned: mctrans, unet3d, segresnet; shared: segresnet, unet3d, mctrans" in h
    # without a shared section the v6 verdict stands
    assert verdict(_build(_runs({"mctrans": .25, "unet3d": 0.0}))).headline.startswith("Winner: mctrans / dice_bce")


def test_validation_only_runs_never_reach_the_page():
    from benchmark.results.leaderboard import render_markdown
    runs = _runs({"mctrans": .05, "unet3d": 0.0})
    rescore = _record("rescore0", "segresnet", 0, np.full(N_NODULES, .9), part="rescore")
    md = render_markdown(_build(runs + [rescore]))
    assert "segresnet" not in md and "rescore0" not in md


@pytest.mark.slow
def test_the_run_export_carries_each_runs_validation_history():
    from benchmark import PROJECT_ROOT
    from benchmark.results.leaderboard import records_from_export
    recs, _ = records_from_export(PROJECT_ROOT / "leaderboards" / "lidc-phantom-cpu.runs", warn=lambda m: None)
    models = [r for r in recs if not r.reference]
    assert models and all(len(r.val_dice) == 20 for r in models)
    assert all(isinstance(e, int) for e, _ in models[0].val_dice)


def test_runs_read_from_mlflow_carry_their_validation_history(bench_home, tmp_path):
    """The MLflow path (``collect_runs``) reads each run's val_dice history, as the export path does."""
    from benchmark.core.tracking import Tracker, client, load_settings
    from benchmark.results.leaderboard.collect import collect_runs
    rec = _record("x", "unet3d", 0, np.full(N_NODULES, .5))
    csv = tmp_path / "per_nodule.csv"
    rec.per_nodule.to_csv(csv, index=False)
    tracker = Tracker.start("v7-history", dict(rec.tags))
    for epoch, value in ((1, .2), (2, .4), (3, .35)):
        tracker.log_metrics({"val_dice": value}, step=epoch)
    tracker.log_metrics({"test_dice": .5})
    tracker.log_artifact(csv, "evaluation")
    tracker.finish()
    cl = client(load_settings())
    exp = cl.get_experiment_by_name(load_settings().experiment)
    [got] = collect_runs(cl, [exp.experiment_id], "attributes.status = 'FINISHED'", warn=pytest.fail)
    assert got.val_dice == ((1, .2), (2, .4), (3, .35))
