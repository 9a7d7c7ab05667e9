"""Was a run still learning when it stopped? Read from its per-epoch validation Dice.

A final run is only a fair sample of an architecture when its schedule was long enough: a row
whose validation Dice still rose in the last part of training would have scored higher with
more epochs, and the table would then rank schedules, not architectures. A run is flagged as
still improving when the best validation Dice of its last ``tail`` share of epochs beats the best
of the epochs before by more than ``tolerance`` (an absolute Dice; the seeds of one cpu row
differ by more than 0.005, so smaller rises are noise).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

#: share of the epochs that count as "the end of training"
TAIL = 0.2
#: a rise smaller than this (absolute Dice) is not counted as improvement
TOLERANCE = 0.005


@dataclass(frozen=True)
class Convergence:
    epochs: int              # epochs with a validation Dice
    best_epoch: int          # 1-based epoch of the best validation Dice (the first if tied)
    best: float
    still_improving: bool    # the tail beat everything before it by more than the tolerance


def convergence(val_dice: Sequence[tuple[int, float]], tail: float = TAIL, tolerance: float = TOLERANCE) -> Convergence:
    """``val_dice``: (epoch, value) pairs as MLflow logs them (epoch 1-based, any order)."""
    if not 0 < tail < 1:
        raise ValueError(f"tail must be in (0, 1), got {tail}")
    points = sorted((int(e), float(v)) for e, v in val_dice)
    if not points:
        raise ValueError("no validation Dice history")
    values = [v for _, v in points]
    best_i = max(range(len(values)), key=lambda i: (values[i], -i))
    n_tail = max(1, round(len(values) * tail))
    head, end = values[:-n_tail], values[-n_tail:]
    improving = bool(head) and max(end) > max(head) + tolerance
    return Convergence(len(values), points[best_i][0], values[best_i], improving)


def row_convergence(histories: Sequence[Sequence[tuple[int, float]]], **kw) -> tuple[float, int, int]:
    """A leaderboard row's (mean best epoch, seeds still improving, seeds) over its runs."""
    found = [convergence(h, **kw) for h in histories if h]
    if not found:
        return float("nan"), 0, 0
    return (sum(c.best_epoch for c in found) / len(found), sum(c.still_improving for c in found), len(found))
