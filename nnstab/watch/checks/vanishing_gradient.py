"""vanishing_gradient: layers far from the loss whose gradients are orders of magnitude smaller than
the gradients of the last layer — they barely learn while the top of the network does.

The figure is each layer's gradient RMS (the 2-norm of its own parameters' gradients over the square
root of their count), divided by that of the last layer with trainable parameters (the one nearest the
loss). Weight gradients are the product of a layer's input and the gradient arriving at its output, so
in a healthy ReLU network the shrinking of one is offset by the growth of the other and the ratio stays
near 1; through saturating activations (sigmoid, tanh) it falls geometrically with depth.
Reported at the layer with the smallest ratio, once it has stayed below RATIO for PATIENCE checked steps
(at the step the streak began), with every layer under the threshold in `details`.
"""
from __future__ import annotations

from nnstab.watch.checks._grads import layer_grads
from nnstab.watch.checks.base import Check

RATIO = 1e-3     # three orders of magnitude: the layer's updates are lost next to the top layer's
PATIENCE = 1     # a ratio under 1e-3 is no batch-to-batch wobble; parameters are read only every 10 steps
PARAMS_EVERY = 10  # parameter gradients are read every 10 steps (a pass over them); a vanishing layer's
                   # ratio dips under RATIO on some batches before it stays there: 20 missed such a run


class VanishingGradientCheck(Check):
    kind = "vanishing_gradient"
    OPTIONS = {"ratio": RATIO, "patience": PATIENCE, "params_every": PARAMS_EVERY}
    NEEDS = frozenset({"pgrads"})   # gradient norms alone: half the memory traffic of every parameter

    def needs(self, step):
        if not self.scheduled(step):
            return frozenset()
        return self.NEEDS if step % self.params_every == 0 else frozenset()

    def __init__(self, **options):
        super().__init__(**options)
        self._start = None
        self._run = 0

    def observe(self, view):
        if view.measured is not None and not (view.measured.params or view.measured.pgrads):
            return []                              # parameter gradients were not read this step
        grads = layer_grads(view, self.ctx)
        if len(grads) < 2 or view.amp_skipped:
            return []
        top = grads[-1][1]
        if not top > 0:
            self._run = 0
            return []
        # a layer with no gradient at all is cut off (dead units, an unused branch), not vanishing
        ratios = {layer: rms / top for layer, rms, _ in grads[:-1] if rms > 0}
        if not ratios:
            self._run = 0
            return []
        worst = min(ratios, key=ratios.get)
        if ratios[worst] >= self.ratio:
            self._run = 0
            return []
        if self._run == 0:
            self._start = view.step
        self._run += 1
        if self._run < self.patience:
            return []
        low = {layer: r for layer, r in ratios.items() if r < self.ratio}
        return [self.finding(
            worst, self._start, "backward", "warning", ratios[worst], self.ratio,
            f"gradients vanish toward the input: {self.describe(worst)} gets {ratios[worst]:.1e} of the gradient "
            f"RMS of the last layer {self.describe(grads[-1][0])} ({len(low)} layer(s) below {self.ratio:g}); use "
            f"ReLU-family activations, He/Xavier initialisation, normalisation layers or residual connections",
            ratios=low, reference=grads[-1][0])]
