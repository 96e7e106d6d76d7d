"""dead_relu: ReLU units that output zero on the whole batch, check after check — no gradient reaches
their weights, so they never come back.

A unit is a feature of a dense output or a channel of a convolution's output; it is dead on a step when
its largest output over the batch (and all positions) is 0. Units are looked at every EVERY steps (one
per-unit max per ReLU on those steps only: dead units stay dead, so a sparse look loses nothing but a few
steps of delay). Reported when at least SHARE of a layer's units have been dead at STEPS looks in a row,
dated to the look by which that share had died.
"""
from __future__ import annotations

import math

import numpy as np

from nnstab.watch.checks.base import Check

SHARE = 0.5    # half of a layer's capacity gone: healthy nets lose a few percent, a dying layer most of it
STEPS = 3      # looks in a row (15 steps at EVERY=5): a live but selective unit is not silent that long
EVERY = 5      # look every 5 steps; the measurement costs a pass over each ReLU output


class DeadReluCheck(Check):
    kind = "dead_relu"
    OPTIONS = {"share": SHARE, "steps": STEPS}
    NEEDS = frozenset({"units"})

    def __init__(self, **options):
        options.setdefault("every", EVERY)
        super().__init__(**options)
        if not self.share <= 1:
            raise ValueError(f"dead_relu check option 'share' must be in (0, 1], got {self.share}")
        self._streak = {}    # layer -> per unit, looks in a row it was dead
        self._since = {}     # layer -> per unit, the step of the first look of that run

    def observe(self, view):
        out = []
        for layer, dead in view.dead.items():
            streak = self._streak.get(layer)
            if streak is None or streak.shape != dead.shape:
                if not dead.any():
                    continue                          # the common case: every unit fired somewhere
                streak = self._streak[layer] = np.zeros(dead.shape, dtype=np.int64)
                self._since[layer] = np.zeros(dead.shape, dtype=np.int64)
            since = self._since[layer]
            since[dead & (streak == 0)] = view.step
            streak += 1
            streak *= dead                           # a live look resets the unit's run
            long_dead = streak >= self.steps
            n_dead = int(np.count_nonzero(long_dead))
            share = n_dead / dead.size
            if share >= self.share:
                k = max(1, math.ceil(self.share * dead.size))
                died = int(np.sort(since[long_dead])[k - 1])     # the look by which SHARE of them were dead
                out.append(self.finding(
                    layer, died, "forward", "warning", share, self.share,
                    f"{share:.0%} of the ReLU units of {self.describe(layer)} have been zero on every sample at "
                    f"{self.steps}+ looks in a row (every {self.every} steps) and get no gradient; lower the "
                    f"learning rate, check the bias initialisation, or use LeakyReLU/GELU",
                    units=int(dead.size), dead=n_dead))
        return out
