"""The convergence flag of a final run, from its validation Dice per epoch."""
import math

import pytest

from benchmark.results.convergence import convergence, row_convergence


def _curve(values):
    return [(i + 1, v) for i, v in enumerate(values)]


def test_a_plateau_is_converged_and_a_rising_tail_is_not():
    plateau = _curve([0.1, 0.3, 0.5, 0.55, 0.58, 0.6, 0.6, 0.6, 0.601, 0.6])
    c = convergence(plateau)
    assert (c.best_epoch, c.still_improving) == (9, False)   # +0.001 over epoch 6: below the tolerance
    rising = _curve([0.1, 0.2, 0.3, 0.4, 0.45, 0.5, 0.52, 0.54, 0.56, 0.6])
    c = convergence(rising)
    assert (c.best_epoch, c.best, c.still_improving) == (10, 0.6, True)


def test_best_epoch_is_the_first_of_ties_and_order_does_not_matter():
    c = convergence([(3, 0.5), (1, 0.2), (2, 0.5), (4, 0.4)])
    assert c.best_epoch == 2 and not c.still_improving


def test_row_summary_and_bad_input():
    up = _curve([0.1, 0.2, 0.3, 0.4, 0.6])
    flat = _curve([0.5, 0.5, 0.5, 0.5, 0.5])
    assert row_convergence([up, flat, []]) == (3.0, 1, 2)
    mean_best, n_up, n = row_convergence([])
    assert math.isnan(mean_best) and (n_up, n) == (0, 0)
    with pytest.raises(ValueError):
        convergence([])
    with pytest.raises(ValueError):
        convergence(up, tail=1.5)
