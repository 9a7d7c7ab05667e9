"""benchmark.results.resampling on synthetic score matrices (no training, no MLflow)."""
import numpy as np
import pytest

from benchmark.results import resampling as stats


def _seedy(n_seeds=3, n_nodules=60, seed_sd=0.2, nodule_sd=0.02, centre=0.6, rng=0):
    """Scores where the seed decides almost everything: a big per-seed offset, tiny nodule noise."""
    g = np.random.default_rng(rng)
    return centre + g.normal(0, seed_sd, (n_seeds, 1)) + g.normal(0, nodule_sd, (n_seeds, n_nodules))


def test_two_level_interval_is_wider_when_seed_variance_dominates():
    m = _seedy()
    res = stats.draw_resamples({"m": 3}, m.shape[1], n_boot=2000, seed=0)
    lo2, hi2 = stats.percentile_interval(stats.two_level_bootstrap(m, res, "m"))
    lo1, hi1 = stats.percentile_interval(stats.nodule_bootstrap(m, res))
    assert hi2 - lo2 > 3 * (hi1 - lo1)
    assert lo2 < m.mean() < hi2


def test_two_level_equals_nodule_bootstrap_with_one_seed():
    m = _seedy(n_seeds=1)
    res = stats.draw_resamples({"m": 1}, m.shape[1], n_boot=300, seed=1)
    np.testing.assert_allclose(stats.two_level_bootstrap(m, res, "m"), stats.nodule_bootstrap(m, res))


def test_draws_of_a_model_do_not_depend_on_the_others():
    a = stats.draw_resamples({"x": 3}, 10, n_boot=50, seed=4)
    b = stats.draw_resamples({"y": 5, "x": 3}, 10, n_boot=50, seed=4)
    np.testing.assert_array_equal(a.seeds["x"], b.seeds["x"])
    np.testing.assert_array_equal(a.nodules, b.nodules)


def test_p_best_perfect_model_and_cheat():
    n = 40
    perfect = np.ones((3, n))
    cheat = np.zeros((3, n))           # predicts nothing: Dice 0 everywhere
    noisy = _seedy(n_nodules=n)
    res = stats.draw_resamples({"perfect": 3, "cheat": 3, "noisy": 3}, n, n_boot=500)
    boots = np.stack([stats.two_level_bootstrap(m, res, lab)
                      for lab, m in (("perfect", perfect), ("cheat", cheat), ("noisy", noisy))])
    np.testing.assert_allclose(stats.p_best(boots), [1.0, 0.0, 0.0])
    np.testing.assert_allclose(stats.rank_p_best([perfect, cheat, noisy], ["perfect", "cheat", "noisy"], res),
                               [1.0, 0.0, 0.0])
    assert stats.percentile_interval(boots[0]) == (1.0, 1.0)


def test_p_best_splits_between_equal_models():
    n = 80
    g = np.random.default_rng(3)
    a, b = 0.5 + g.normal(0, .2, (3, n)), 0.5 + g.normal(0, .2, (3, n))
    res = stats.draw_resamples({"a": 3, "b": 3}, n, n_boot=2000)
    pb = stats.p_best(np.stack([stats.two_level_bootstrap(a, res, "a"), stats.two_level_bootstrap(b, res, "b")]))
    assert pb.sum() == pytest.approx(1.0) and 0.05 < pb[0] < 0.95


def test_difference_interval_of_a_clear_gain_excludes_zero():
    base = _seedy(seed_sd=0.01, rng=5)
    res = stats.draw_resamples({"t": 3, "d": 3}, base.shape[1], n_boot=1000)
    mean, lo, hi = stats.difference_interval(stats.two_level_bootstrap(base + 0.1, res, "t"),
                                             stats.two_level_bootstrap(base, res, "d"))
    assert mean == pytest.approx(0.1, abs=0.02) and lo > 0


def test_empty_count_over_all_seeds():
    empty = np.array([[True, False, False, False], [True, True, False, False], [False, False, False, False]])
    assert stats.empty_count(empty) == (3, 12)


def test_seed_median_ignores_the_empty_penalty():
    hd = np.array([[2.0, 3.0, 4.0, 96.0, 2.5], [2.0, 2.0, 3.0, 96.0, 96.0]])
    assert stats.seed_median(hd) == pytest.approx(np.mean([3.0, 3.0]))
    assert hd.mean() > 30


def test_holm_and_pvalues_against_reference():
    assert stats.holm([0.01, 0.04, float("nan"), 0.03]) == pytest.approx([0.03, 0.06, float("nan"), 0.06],
                                                                         nan_ok=True)
    g = np.random.default_rng(0)
    ref = g.uniform(0.4, 0.6, 50)
    rows = {"ref": ref, "same": ref.copy(), "better": ref + 0.1 + g.normal(0, .01, 50)}
    out = stats.pvalues_against(rows, "ref")
    assert set(out) == {"same", "better"}
    assert out["same"][0] == 1.0 and out["better"][0] < 1e-6
    assert out["better"][1] == pytest.approx(min(1.0, 2 * out["better"][0]))


def test_seed_groups_widen_the_interval_only_when_they_disagree():
    """A third level (the tuning study each seed came from) resamples studies, then seeds."""
    n_nod = 40
    rng = np.random.default_rng(3)
    base = rng.uniform(0.4, 0.8, n_nod)
    # 6 seeds from two studies whose chosen configurations differ by 0.2 Dice
    scores = np.stack([base + 0.1] * 3 + [base - 0.1] * 3)
    flat = stats.draw_resamples({"m": 6}, n_nod, n_boot=3000, seed=0)
    nested = stats.draw_resamples({"m": 6}, n_nod, n_boot=3000, seed=0, groups={"m": ["s0"] * 3 + ["s1"] * 3})
    w_flat = np.subtract(*stats.percentile_interval(stats.two_level_bootstrap(scores, flat, "m"))[::-1])
    w_nested = np.subtract(*stats.percentile_interval(stats.two_level_bootstrap(scores, nested, "m"))[::-1])
    assert w_nested > 1.2 * w_flat
    # a single group is exactly the two-level bootstrap (the published pages do not move)
    one = stats.draw_resamples({"m": 4}, n_nod, n_boot=500, seed=0, groups={"m": ["s0"] * 4})
    two = stats.draw_resamples({"m": 4}, n_nod, n_boot=500, seed=0)
    assert np.array_equal(one.seeds["m"], two.seeds["m"])
    # every drawn seed index belongs to the model
    assert nested.seeds["m"].min() >= 0 and nested.seeds["m"].max() <= 5


def test_seed_level_p():
    assert stats.seed_level_p([0.60, 0.61, 0.62], [0.50, 0.51, 0.52]) < 0.01
    assert stats.seed_level_p([0.60, 0.40, 0.62], [0.50, 0.61, 0.45]) > 0.3
    assert np.isnan(stats.seed_level_p([0.6], [0.5, 0.4]))
