"""saturation: sigmoid, tanh and softmax units stuck in their flat region, where almost no gradient
passes back through them.

A unit is a feature of a dense output or a channel of a convolution's output. A sigmoid/tanh unit is
saturated on a step when its slope, averaged over the batch, is below SLOPE of its peak (sigmoid'(0) =
1/4, tanh'(0) = 1): for sigmoid that is |x| beyond about 3.6 on average. The slope follows from the
batch mean of the squared distance from the steepest point alone (sigmoid' = 1/4 - (s - 1/2)^2,
tanh' = 1 - t^2): one small reduction per unit.
A softmax is flat when its output is one-hot: there the unit is a row (one distribution) whose largest
probability exceeds SOFTMAX_TOP.
Reported when at least SHARE of a layer's units are saturated for PATIENCE checked steps in a row, at the
step the run began. Activations whose output is the model's output are skipped unless include_output=True:
a confident classifier's final sigmoid or softmax is meant to be near 0 or 1, and losses on logits do
not suffer from it.
"""
from __future__ import annotations

from nnstab.watch.checks.base import Check

SLOPE = 0.1          # average slope under a tenth of the peak: gradients through the unit shrink tenfold
SOFTMAX_TOP = 0.99   # a softmax row this close to one-hot passes back about 1% of the gradient
SHARE = 0.5          # half of a layer's units flat: the layer has stopped learning in bulk
PATIENCE = 5         # checked steps in a row: a single extreme batch is not a saturated layer


class SaturationCheck(Check):
    kind = "saturation"
    OPTIONS = {"slope": SLOPE, "softmax_top": SOFTMAX_TOP, "share": SHARE, "patience": PATIENCE,
               "include_output": False}
    NEEDS = frozenset({"sat"})

    def __init__(self, **options):
        super().__init__(**options)
        if not self.slope < 1 or not self.softmax_top < 1 or not self.share <= 1:
            raise ValueError("saturation check options slope and softmax_top must be in (0, 1) and share in (0, 1]")
        self._runs = {}     # layer -> (start step, length)

    def observe(self, view):
        out = []
        for layer, sat in view.saturated.items():
            if layer in view.output_layers and not self.include_output:
                continue
            share = float(sat.mean()) if sat.size else 0.0
            if share < self.share:
                self._runs.pop(layer, None)
                continue
            start, n = self._runs.get(layer, (view.step, 0))
            self._runs[layer] = (start, n + 1)
            if n + 1 >= self.patience:
                out.append(self.finding(
                    layer, start, "forward", "warning", share, self.share,
                    f"{share:.0%} of the units of {self.describe(layer)} sit in its flat region, so almost no "
                    f"gradient passes back through them; scale down the initialisation or the inputs, add "
                    f"normalisation before it, or use a non-saturating activation (ReLU family)",
                    units=int(sat.size), saturated=int(sat.sum())))
        return out
