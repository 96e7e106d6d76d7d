"""How noisy a series is from one measurement to the next, robustly (shared by loss_divergence and exploding_gradient).

Growth tests compare a figure with where it stood a few steps ago; with small batches near convergence
a loss or a gradient norm swings by orders of magnitude from batch to batch without going anywhere.
The noise level they measure growth against is the standard deviation of the step-to-step changes of
log(value), taken from their median absolute deviation: a steady trend shifts every change alike and
does not count as noise, and a few outlying batches do not inflate it.
"""
from __future__ import annotations

import math

MIN_CHANGES = 4                          # fewer changes tell nothing of the noise: no verdict yet
_MAD_TO_SIGMA = 1.4826 / math.sqrt(2)   # MAD of differences of i.i.d. normal values -> their std


def log_noise(values) -> float:
    """The standard deviation of log(value) from one value to the next (values <= 0 left out: a loss of
    exactly 0 is noise at the floor); inf with fewer than MIN_CHANGES changes."""
    logs = [math.log(v) for v in values if v > 0]
    diffs = [b - a for a, b in zip(logs, logs[1:])]
    if len(diffs) < MIN_CHANGES:
        return math.inf
    centre = median(diffs)
    return _MAD_TO_SIGMA * median([abs(d - centre) for d in diffs])


def median(values) -> float:
    v = sorted(values)
    k = len(v) // 2
    return v[k] if len(v) % 2 else (v[k - 1] + v[k]) / 2
