"""exploding_gradient: gradients that grow toward the input, that are huge next to the parameters they
update, or that grow by orders of magnitude within a few steps.

Three tests:
  depth     the RMS of the gradient flowing into the first layer (nearest the input) over that of the
            last (nearest the loss): each layer multiplies the gradient it passes back, and
            when that factor is above 1 it compounds with depth. Healthy networks keep it near or below 1
            (default-initialised ReLU networks shrink it); DEPTH means several layers of steady growth.
  relative  ||grad|| / ||params|| of a layer's own parameters (on steps parameters are read): at
            RELATIVE, one SGD step at learning rate 0.01 moves the layer by its own size. Layers whose
            parameters are (near) zero, as zero-initialised layers are, are left to the other tests.
  growth    the norm of the gradient flowing into a layer's output now, over its floor in the last
            WINDOW steps (the FLOOR quantile of its values there: not the minimum, which one very easy
            batch sets), beyond NOISE times its batch-to-batch noise (checks/_noise.py), on GROWTH_STEPS
            observed steps in a row, and the largest the layer had seen as the growth began: explosion is
            exponential, lasting and unprecedented; warm-up, the rebound after a loss that touched zero,
            or hard batches among easy ones are not (fine-tuning a converged classifier with batches of 8
            swings a gradient between 1e-8 and 1e-2 from one batch to the next).
depth and growth use every layer's output gradient, measured every LAYERS_EVERY steps on the CPU (every
step on an accelerator; on the CPU the layers nearest the input, whose gradients every NaN/inf made in
backward reaches, are measured every step, so the growth test sees them). depth must hold for PATIENCE
such measurements in a row and relative for RELATIVE_PATIENCE parameter reads; all three are reported at
the step the run began. The layer named is the one with the largest figure.
"""
from __future__ import annotations

import math
from collections import deque

from nnstab.watch.checks._grads import layer_grads
from nnstab.watch.checks._noise import log_noise
from nnstab.watch.checks.base import Check

DEPTH = 100.0       # two orders of magnitude between the ends of the network: steady per-layer growth
RELATIVE = 100.0    # one lr=0.01 SGD step would move the parameters by their own norm
GROWTH = 1000.0     # three orders of magnitude within the window: healthy training never does this for long
GROWTH_STEPS = 3    # ... on 3 observed steps in a row: one hard batch is a spike, an explosion keeps growing
NOISE = 5.0         # ... and beyond 5 noise levels of log norm (as loss_divergence's)
FLOOR = 0.1         # the window's floor is its 10% quantile: a gradient growing 2x a step is found 11 steps in
WINDOW = 50         # steps the growth is measured over
PATIENCE = 1        # measurements in a row for the depth test: two orders of magnitude is no wobble
RELATIVE_PATIENCE = 1   # parameter reads in a row for the relative test (they are 20 steps apart)
PARAMS_EVERY = 20   # parameter norms are read every 20 steps (a pass over all of them); trends need no more
LAYERS_EVERY = 20   # every layer's output gradient is measured every 20 steps (on the CPU; every step elsewhere)
TINY_RMS = 1e-6     # parameters with a smaller RMS count as zero-initialised for the relative test


class ExplodingGradientCheck(Check):
    kind = "exploding_gradient"
    OPTIONS = {"depth": DEPTH, "relative": RELATIVE, "growth": GROWTH, "growth_steps": GROWTH_STEPS, "noise": NOISE,
               "window": WINDOW, "patience": PATIENCE, "relative_patience": RELATIVE_PATIENCE,
               "params_every": PARAMS_EVERY, "layers_every": LAYERS_EVERY}
    NEEDS = frozenset({"grads"})

    def __init__(self, **options):
        super().__init__(**options)
        self._history = {}     # layer -> _WindowMin of its recent gradient norms
        self._peak = {}        # layer -> the largest gradient norm it has had
        self._growing = {}     # layer -> [first step, last step, steps] of its growth so far
        self._prev = None      # the step observed before this one
        self._runs = {"depth": [0, None], "relative": [0, None]}   # test -> [length, start step]

    def needs(self, step):
        if not self.scheduled(step):
            return frozenset()
        return (self.NEEDS | ({"params"} if step % self.params_every == 0 else frozenset())
                | ({"layers"} if step % self.layers_every == 0 else frozenset()))

    def observe(self, view):
        if view.amp_skipped:
            return []
        out = self._depth_and_growth(view)
        if view.measured is not None and view.measured.params:   # a step whose parameters were read
            grads = layer_grads(view, self.ctx)
            if grads:
                out += self._persist(view, "relative", *self._relative(view, grads))
        return out

    def _depth_and_growth(self, view):
        """One pass over the layers' output gradients: the depth test and the growth test."""
        first = last = None
        n_rms = 0
        best, best_g, began = None, 0.0, None
        stats, step = view.stats, view.step
        for layer in view.order:
            st = stats[layer]
            now = st.get("grad_out_norm")
            if now is None or now - now != 0:
                continue
            rms = st.get("grad_out_rms")
            if rms is not None:
                if first is None:
                    first = (layer, rms)
                last = rms
                n_rms += 1
            low = self._history.get(layer)
            if low is None:
                low = self._history[layer] = _WindowMin(self.window)
            smallest, peak = low.min(), self._peak.get(layer, 0.0)
            run = self._growing.get(layer)
            if run is not None and run[1] != self._prev:   # not measured on the step observed before: a new look
                del self._growing[layer]
                run = None
            base = None
            if smallest is not None and smallest > 0 and now >= self.growth * smallest and (run or now > peak):
                base = low.floor()        # the cheap look passed: the robust one
                if not (now >= self.growth * base and math.log(now / base) > self.noise * low.noise()):
                    base = None
            if base is not None:
                if run is None:
                    run = self._growing[layer] = [step, step, 0]
                run[1], run[2] = step, run[2] + 1
                if run[2] >= self.growth_steps and now > best_g * base:
                    best, best_g, began = layer, now / base, run[0]
            elif run is not None:
                del self._growing[layer]
            low.push(step, now)
            if now > peak:
                self._peak[layer] = now
        self._prev = step
        out = []
        if n_rms >= 2 and last > 0:
            out += self._persist(view, "depth", first[0], first[1] / last)
        if best is not None:
            out.append(self.finding(
                best, began, "backward", "warning", best_g, self.growth,
                f"gradients explode: the gradient flowing into {self.describe(best)} grew {best_g:.3g}-fold within "
                f"{self.window} steps, from step {began} on; lower the learning rate or clip gradients "
                f"(torch.nn.utils.clip_grad_norm_)", test="growth"))
        return out

    def _relative(self, view, grads):
        worst, worst_rel = None, 0.0
        for layer, _, rel in grads:
            pn = view.stats[layer].get("param_norm", 0.0)
            n = self.ctx.params.get(layer, 1) if self.ctx is not None else 1
            if pn / math.sqrt(n) > TINY_RMS and rel > worst_rel:
                worst, worst_rel = layer, rel
        return worst, worst_rel

    def _persist(self, view, test, layer, value):
        limit = self.depth if test == "depth" else self.relative
        run = self._runs[test]
        if layer is None or not value >= limit:
            run[0] = 0
            return []
        if run[0] == 0:
            run[1] = view.step
        run[0] += 1
        if run[0] < (self.patience if test == "depth" else self.relative_patience):
            return []
        if test == "depth":
            what = (f"the gradient reaching {self.describe(layer)} is {value:.3g} times (RMS) the one leaving the "
                    f"last layer: each layer amplifies it")
        else:
            what = f"the gradient of {self.describe(layer)} is {value:.3g} times the norm of its parameters"
        return [self.finding(
            layer, run[1], "backward", "warning", value, limit,
            f"gradients explode: {what}; lower the learning rate, clip gradients (torch.nn.utils.clip_grad_norm_), "
            f"or use a smaller initialisation / normalisation layers", test=test)]


class _WindowMin:
    """The values pushed in the last `window` steps: their minimum in O(1) amortised (a monotonic queue), the
    every-step test's cheap first look; their floor and noise level only when that look passes."""

    def __init__(self, window):
        self.window = window
        self.q = deque()     # (step, value), values increasing
        self.all = deque()   # (step, value), every one in the window

    def push(self, step, value):
        q = self.q
        while q and q[-1][1] >= value:
            q.pop()
        q.append((step, value))
        while q[0][0] <= step - self.window:
            q.popleft()
        self.all.append((step, value))
        while self.all[0][0] <= step - self.window:
            self.all.popleft()

    def min(self):
        return self.q[0][1] if self.q else None

    def floor(self) -> float:
        """The FLOOR quantile of the values in the window."""
        v = sorted(value for _, value in self.all)
        return v[int(len(v) * FLOOR)]

    def noise(self) -> float:
        """The noise level of log(value) between consecutive measurements in the window (checks/_noise.py)."""
        return log_noise(v for _, v in self.all)
