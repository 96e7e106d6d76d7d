"""overflow: values at the top of their format — inf from finite inputs, values close to the largest
finite number, and (for float32/float64 runs) what would overflow in float16 or bfloat16.

  error    a module's output (forward) or a gradient (backward) became inf from finite inputs in its own
           dtype — the origin found by nnstab.watch.summary, when it is an infinity rather than a NaN;
  warning  |x| came within a factor NEAR_FRACTION of the dtype's largest finite value (a few doublings
           more and it is inf);
  info     a float32/float64 run whose activations or (unscaled) gradients exceed float16's 65504 or
           bfloat16's 3.39e38: switching to AMP would overflow there.
Infinities are seen every step (they are what the non-finite origin finds); the min/max behind the
warning and the info are measured every RANGE_EVERY steps.
Under a GradScaler, scaled gradients near the top are the scaler's job (it raises the scale until they
overflow and then skips the step), so they are not reported here.
"""
from __future__ import annotations

from nnstab.watch.checks.base import Check
from nnstab.watch.limits import BF16_MAX, FORMATS, FP16_MAX, is_wide

NEAR_FRACTION = 1 / 8   # within 3 doublings of the largest finite value: one bad step from inf
RANGE_EVERY = 20        # min/max cost two passes per tensor; ranges drift slowly (infs are seen every step)


class OverflowCheck(Check):
    kind = "overflow"
    OPTIONS = {"near_fraction": NEAR_FRACTION, "amp_risk": True, "range_every": RANGE_EVERY}
    NEEDS = frozenset({"grads"})

    def needs(self, step):
        if not self.scheduled(step):
            return frozenset()
        return self.NEEDS | ({"range", "layers"} if step % self.range_every == 0 else frozenset())

    def observe(self, view):
        if not view.origins and not (view.measured is not None and view.measured.range):
            return []                  # nothing to judge: no infinity, and no min/max this step
        out = []
        for o in view.origins[:1]:
            if o.inf and o.phase in ("forward", "backward") and not (view.amp_skipped and o.phase == "backward"):
                out.append(self.finding(
                    o.layer, view.step, o.phase, "error", o.value, FORMATS.get(o.dtype, (float("inf"),))[0],
                    f"{self.describe(o.layer)} overflowed to inf in {o.dtype} during {o.phase} at step {view.step} "
                    f"from finite inputs; lower the learning rate, clip gradients, normalise activations "
                    f"(BatchNorm/LayerNorm) or compute this layer in a wider dtype", dtype=o.dtype))
        for layer, st in view.stats.items():
            out += self._near(view, layer, "forward", st.get("act_absmax"), view.dtypes.get(layer))
            if view.amp_scale is None:
                out += self._near(view, layer, "backward", st.get("grad_out_absmax"), view.grad_dtypes.get(layer))
            if self.amp_risk:
                out += self._risk(view, layer, "forward", st.get("act_absmax"), view.dtypes.get(layer))
                out += self._risk(view, layer, "backward", st.get("grad_out_absmax"), view.grad_dtypes.get(layer))
        return out

    def _near(self, view, layer, phase, absmax, dtype):
        if absmax is None or dtype not in FORMATS or not absmax < float("inf"):
            return []
        limit = FORMATS[dtype][0] * self.near_fraction
        if absmax <= limit:
            return []
        what = "activations" if phase == "forward" else "gradients"
        return [self.finding(layer, view.step, phase, "warning", absmax, limit,
                             f"{what} of {self.describe(layer)} reached {absmax:.3g}, within a factor "
                             f"{1 / self.near_fraction:g} of {dtype}'s largest value {FORMATS[dtype][0]:.4g}; "
                             f"normalise them or lower the learning rate before they overflow", dtype=dtype)]

    def _risk(self, view, layer, phase, absmax, dtype):
        if absmax is None or dtype is None or not is_wide(dtype) or not absmax < float("inf"):
            return []
        what = "activations" if phase == "forward" else "gradients"
        for fmt, limit in (("float16", FP16_MAX), ("bfloat16", BF16_MAX)):
            if absmax > limit:
                return [self.finding(layer, view.step, phase, "info", absmax, limit,
                                     f"{what} of {self.describe(layer)} reach {absmax:.3g}, beyond {fmt}'s largest "
                                     f"value {limit:.4g}: under {fmt} autocast they would overflow to inf; keep this "
                                     f"layer in float32 or rescale it", dtype=dtype, format=fmt)]
        return []
