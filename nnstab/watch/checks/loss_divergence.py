"""loss_divergence: the loss is non-finite (error), or it has grown by FACTOR, and beyond its batch-to-batch
noise, over the last WINDOW steps and is above where it started (warning).

A non-finite loss is this check's finding when the loss is where the NaN/inf began (the model's outputs
were finite); when it only carries a NaN made upstream, the nonfinite finding names the origin instead.

Growth compares the recent loss (the median of the last SMOOTH losses, so one bad batch does not count)
with the smallest such median in the window. On its own that ratio is fooled by noise: with small
batches near convergence log(loss) easily spreads by 0.5-1 from batch to batch, and the lowest of fifty
medians is then a low outlier that a trend-free loss beats fourfold in most windows. So the growth must
also exceed NOISE times the loss's noise level, estimated robustly from the window's step-to-step
changes of log(loss) (their median absolute deviation: a trend shifts every change alike and does not
count as noise), and hold for PERSIST observed steps in a row; the warning is dated at the step the
growth began (the first of the steps in a row with the loss FACTOR above the window's lowest). The
guard "above the starting loss" keeps a converged loss that wanders near zero from being called
divergent. Losses that can be negative are only checked for non-finite values.
"""
from __future__ import annotations

import math
import sys
from collections import deque

from nnstab.watch.checks._noise import log_noise, median
from nnstab.watch.checks.base import Check

FACTOR = 4.0     # a quadrupled smoothed loss is beyond batch noise of a few percent
WINDOW = 50      # steps the growth is measured over
SMOOTH = 5       # the recent loss is the median of this many
NOISE = 5.0      # growth in log(loss) must exceed 5 noise levels: trend-free losses with log-noise up to 1.5
                 # gave no warning in 3000-step runs, and a 5%-a-step climb is still found within ~30-50 steps
PERSIST = 3      # ... on 3 observed steps in a row (one outlying median is not a trend)


class LossDivergenceCheck(Check):
    kind = "loss_divergence"
    OPTIONS = {"factor": FACTOR, "window": WINDOW, "smooth": SMOOTH, "noise": NOISE, "persist": PERSIST}
    NEEDS = frozenset()

    def __init__(self, **options):
        super().__init__(**options)
        if not self.factor > 1:
            raise ValueError(f"loss_divergence check option 'factor' must be > 1, got {self.factor}")
        self._recent = deque(maxlen=self.smooth)
        self._medians = deque(maxlen=self.window)
        self._losses = deque(maxlen=self.window + 1)   # for the noise level
        self._start = None
        self._broken = None
        self._grown = 0       # observed steps in a row that grew beyond every threshold
        self._above = None    # first step of the current run of steps above FACTOR x the window's lowest

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
        self._losses.append(loss)
        med = median(self._recent)
        if self._start is None and len(self._recent) == self.smooth:
            self._start = med
        low = min(self._medians) if self._medians else None
        self._medians.append(med)
        above = low is not None and low > 0 and med > self.factor * low
        self._above = (self._above if self._above is not None else view.step) if above else None
        grown = (above and (self._start is None or med > self._start)
                 and math.log(med / low) > self.noise * self._noise_level())
        self._grown = self._grown + 1 if grown else 0
        if self._grown < self.persist:
            return []
        began = self._above       # the growth began where the loss first stood FACTOR above the lowest,
                                  # before the noise and the starting loss were cleared
        return [self.finding(
            "", began, "loss", "warning", med / low, self.factor,
            f"the loss grew {med / low:.3g}-fold within {self.window} steps (to {med:.4g}, from {low:.4g}) from step "
            f"{began} on, beyond its batch-to-batch noise, and is above where it started: training is diverging; "
            f"lower the learning rate, use a warm-up, or clip gradients", loss=med, lowest=low)]

    def _noise_level(self) -> float:
        """The batch-to-batch noise of log(loss) in the window (checks/_noise.py): inf, no verdict yet, before
        the window holds 4 changes (a fine-tuning run's first batches differ 4-fold by chance); losses of
        exactly 0 (a float32 cross-entropy of a batch classified with huge margins) left out."""
        return log_noise(self._losses)
