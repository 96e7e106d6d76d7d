"""nonfinite: the first NaN/inf of a step, in execution order, with the layer and phase that made it.

Where it began is worked out by nnstab.watch.summary (forward: the first module whose own output went
non-finite from finite inputs; the loss; backward: the module whose backward made a finite gradient
non-finite; update: parameters non-finite after the optimiser step). Once the numbers are broken every
later step is broken too: consecutive non-finite steps fold into the first finding (count, last_step)
instead of flooding; so does a later, separate incident with the same layer, phase and severity (as
every repeat does in the monitor: count counts the steps it was seen, last_step is the latest; the
step records keep each step's own statistics). A step that torch.amp.GradScaler skipped because its
scaled gradients overflowed is the scaler doing its job: one "info" finding (with the scale) collects
every such step.
"""
from __future__ import annotations

import math

from nnstab.watch.checks.base import Check
from nnstab.watch.limits import FORMATS

PARAMS_EVERY_CPU = 20   # a pass over every parameter costs ~10% of a small CPU step; a twentieth of that is noise;
                        # between reads, parameters an update broke are found by the next forward pass


class NonfiniteCheck(Check):
    kind = "nonfinite"
    # params_every: how often every parameter is checked after the update (a full pass over all of them,
    # the check's largest cost): None = every step on an accelerator, every PARAMS_EVERY_CPU steps on
    # the CPU, where in between a layer's parameters are checked the moment its output goes non-finite.
    OPTIONS = {"params_every": None}
    NEEDS = frozenset({"grads"})

    def __init__(self, **options):
        super().__init__(**options)
        self._streak = None      # the finding the current run of non-finite steps folds into
        self._amp = None

    def _params_every(self) -> int:
        return self.params_every or (1 if self.ctx is not None and self.ctx.accelerated else PARAMS_EVERY_CPU)

    def needs(self, step):
        if not self.scheduled(step):
            return frozenset()
        return self.NEEDS | ({"params"} if step % self._params_every() == 0 else frozenset())

    def periods(self):
        return [self.every, self._params_every()]

    def observe(self, view):
        o = view.origins[0] if view.origins else None
        if view.amp_skipped and (o is None or o.phase == "backward"):
            # counted whether or not the overflow was seen: on the CPU, between the steps that read every
            # gradient, it may lie only in the parameters' gradients, which the scaler itself looked at
            if self._amp is None:
                layer, value, dtype = (o.layer, o.value, o.dtype) if o is not None else (None, math.inf, None)
                where = f"first in {self.describe(layer)}" if o is not None else "in the parameters' gradients"
                self._amp = self.finding(
                    "", view.step, "backward", "info", value, _limit(dtype),
                    f"GradScaler skipped step {view.step}: the gradients scaled by {view.amp_scale:g} overflowed "
                    f"({where}) and the scaler lowered the scale; an occasional skip is normal under AMP, a skip "
                    f"every few steps means the scale keeps overflowing",
                    scale=view.amp_scale, first_layer=layer)
            return [self._amp]
        if o is None:
            self._streak = None
            return []
        if self._streak is not None:
            return [self._streak]
        step = view.step + o.step_offset
        self._streak = self.finding(o.layer, step, o.phase, "error", o.value, _limit(o.dtype),
                                    self._message(o, step, bool(view.output_layers)), dtype=o.dtype,
                                    source=o.source, via=o.via)
        return [self._streak]

    def _message(self, o, step, outputs_seen=True):
        what = "inf" if o.inf else "NaN"
        where = self.describe(o.layer)
        if o.phase == "forward" and o.source == "params":
            return (f"{where} computed with non-finite parameters at step {step}: they were NaN/inf before the "
                    f"first update; check the initialisation or the checkpoint it was loaded from")
        if o.phase == "forward" and o.source == "input":
            return (f"the input batch of step {step} already held NaN/inf (first reached {self.describe(o.via)}); "
                    f"check the data pipeline: missing values, division by zero in normalisation, log of 0")
        if o.phase == "forward":
            if o.inf:
                return (f"{where} produced inf from finite inputs in the forward pass of step {step}: its {o.dtype} "
                        f"outputs overflowed; lower the learning rate, normalise its inputs, or compute it in "
                        f"a wider dtype")
            return (f"{where} produced NaN from finite inputs in the forward pass of step {step} (0*inf, inf-inf, "
                    f"log or sqrt of a negative, 0/0, or non-finite parameters); check its parameters and the "
                    f"domain of its operations")
        if o.phase == "loss":
            if not outputs_seen:    # modules inside a torch.compile(fullgraph=True) graph, or a failed hook
                return (f"the loss was {what} at step {step}; the model's outputs were not seen in that step "
                        f"(modules inside a torch.compile(fullgraph=True) graph, or a hook that failed), so the "
                        f"NaN/inf may have begun anywhere in the model or in the loss")
            return (f"the loss was {what} at step {step} while the model's outputs were finite; use a stable loss "
                    f"(cross_entropy on logits, binary_cross_entropy_with_logits) or keep its inputs in range")
        if o.phase == "backward" and o.source == "loss":
            return (f"the loss's gradient with respect to the model's output was {what} at step {step} although the "
                    f"loss was finite: its derivative blows up there (log, sqrt or division at 0); use a stable "
                    f"formulation of the loss")
        if o.phase == "backward":
            return (f"the backward pass through {where} turned finite gradients into {what} at step {step}; look "
                    f"for sqrt, log or division at 0 in it, and clip gradients (torch.nn.utils.clip_grad_norm_)")
        if o.step_offset:    # seen as the next step's forward began: the update, or code after it
            return (f"the parameters of {where} were {what} when step {step + 1} began: the optimiser update of step "
                    f"{step} made them so although the step's gradients were finite, unless code between the steps "
                    f"changed them (a hand edit, a checkpoint load); lower the learning rate, check the optimiser's "
                    f"eps and weight decay")
        return (f"the parameters of {where} became {what} in the optimiser update of step {step} although its "
                f"gradients were finite; lower the learning rate, check the optimiser's eps and weight decay")


def _limit(dtype) -> float:
    """The largest finite value of `dtype` (the limit a NaN/inf crossed); inf when unknown."""
    return FORMATS.get(dtype, (math.inf,))[0]
