"""loss_divergence: the loss is non-finite (error), or it has grown by FACTOR over the last WINDOW steps
and is above where it started (warning).

A non-finite loss is this check's finding when the loss is where the NaN/inf began (the model's outputs
were finite); when it only carries a NaN made upstream, the nonfinite finding names the origin instead.

Growth compares the recent loss (the median of the last SMOOTH losses, so one bad batch does not count)
with the smallest such median in the window; the guard "above the starting loss" keeps a converged
loss that wanders near zero from being called divergent. Losses that can be negative are only checked
for non-finite values.
"""
from __future__ import annotations

import math
import sys
from collections import deque

from nnstab.watch.checks.base import Check

FACTOR = 4.0     # a quadrupled smoothed loss is beyond batch noise
WINDOW = 50      # steps the growth is measured over
SMOOTH = 5       # the recent loss is the median of this many


class LossDivergenceCheck(Check):
    kind = "loss_divergence"
    OPTIONS = {"factor": FACTOR, "window": WINDOW, "smooth": SMOOTH}
    NEEDS = frozenset()

    def __init__(self, **options):
        super().__init__(**options)
        if not self.factor > 1:
            raise ValueError(f"loss_divergence check option 'factor' must be > 1, got {self.factor}")
        self._recent = deque(maxlen=self.smooth)
        self._medians = deque(maxlen=self.window)
        self._start = None
        self._broken = None

    def observe(self, view):
        loss = view.loss
        if loss is None:
            return []
        if not math.isfinite(loss):
            if self._broken is None and not (view.origins and view.origins[0].phase == "loss"):
                return []   # the NaN/inf began upstream: the nonfinite finding says where; the loss only followed
            if self._broken is None:
                self._broken = self.finding(
                    "", view.step, "loss", "error", loss, sys.float_info.max,
                    f"the loss became {loss} at step {view.step}; training has diverged: see the first nonfinite "
                    f"finding for where it began, lower the learning rate, clip gradients")
            return [self._broken]
        self._recent.append(loss)
        med = _median(self._recent)
        if self._start is None and len(self._recent) == self.smooth:
            self._start = med
        out = []
        low = min(self._medians) if self._medians else None
        if (low is not None and low > 0 and med > self.factor * low
                and (self._start is None or med > self._start)):
            out.append(self.finding(
                "", view.step, "loss", "warning", med / low, self.factor,
                f"the loss grew {med / low:.3g}-fold within {self.window} steps (to {med:.4g}) and is above where it "
                f"started: training is diverging; lower the learning rate, use a warm-up, or clip gradients",
                loss=med, lowest=low))
        self._medians.append(med)
        return out


def _median(values) -> float:
    v = sorted(values)
    k = len(v) // 2
    return v[k] if len(v) % 2 else (v[k - 1] + v[k]) / 2
