"""underflow: values at the bottom of their format — subnormal in their own dtype, or (for float32/float64
runs) so small that float16 or bfloat16 would flush them to zero.

Shares are out of the non-zero values (a ReLU's exact zeros are not underflow), in module outputs
(forward) and in the gradients flowing back into them (backward):
  warning  at least SHARE of the non-zero values are subnormal in their own dtype: they carry fewer
           significant bits, and the next multiplication flushes them to zero;
  info     a float32/float64 run where at least RISK_SHARE would round to zero in float16 (|x| <= 2^-25)
           or bfloat16 (|x| <= 2^-134): under AMP they vanish; with float16, use a GradScaler (gradients)
           or keep the layer in float32 (activations). Not for gradients that have fallen CONVERGED-fold
           below their peak (a loss near zero makes every gradient tiny; nothing is left to learn there).
Shares are estimated from a fixed strided sample of each tensor (nnstab.watch.tape.SAMPLE_SIZE values),
every EVERY steps by default.
"""
from __future__ import annotations

from nnstab.watch.checks.base import Check

SHARE = 0.25        # a quarter of the non-zero values degraded in the run's own dtype: no longer a tail
RISK_SHARE = 0.5    # for the float16/bfloat16 notes: most of the values would vanish, not just the tail of
                    # tiny ones a saturated softmax or a sparse gradient always has
EVERY = 10          # underflow builds up slowly; sampling every 10th step keeps its cost small (every 20th
                    # missed a layer's underflow in a 40-step probe)
CONVERGED = 1e-3    # gradients a thousand times below their peak: the loss is near zero, the layer is done


class UnderflowCheck(Check):
    kind = "underflow"
    OPTIONS = {"share": SHARE, "risk_share": RISK_SHARE, "amp_risk": True}
    NEEDS = frozenset({"under", "layers"})

    def __init__(self, **options):
        options.setdefault("every", EVERY)
        super().__init__(**options)
        self._peak = {}     # layer -> largest gradient RMS seen

    def observe(self, view):
        out = []
        for layer, st in view.stats.items():
            rms = st.get("grad_out_rms")
            peak = max(self._peak.get(layer, 0.0), rms if rms is not None and rms == rms else 0.0)
            self._peak[layer] = peak
            # gradients that shrank with a loss near zero are a converged layer, not an AMP risk
            converged = rms is not None and peak > 0 and rms < CONVERGED * peak
            for prefix, phase, dtype in (("act_", "forward", view.dtypes.get(layer)),
                                         ("grad_", "backward", view.grad_dtypes.get(layer))):
                own = st.get(prefix + "dtype_underflow_frac")
                if own is not None and own >= self.share:
                    out.append(self._own(view, layer, phase, own, dtype))
                if not self.amp_risk or (converged and phase == "backward"):
                    continue
                for fmt in ("fp16", "bf16"):
                    share = st.get(f"{prefix}{fmt}_underflow_frac")
                    if share is not None and share >= self.risk_share:
                        out.append(self._risk(view, layer, phase, share, fmt, dtype))
                        break
        return out

    def _own(self, view, layer, phase, share, dtype):
        what = "activations" if phase == "forward" else "gradients"
        fix = ("use a GradScaler or a larger loss scale, or keep this layer in float32" if phase == "backward"
               else "rescale them (normalisation, a larger initialisation) or compute in a wider dtype")
        return self.finding(layer, view.step, phase, "warning", share, self.share,
                            f"{share:.0%} of the non-zero {what} of {self.describe(layer)} are subnormal in "
                            f"{dtype}: they lose precision and flush to zero next; {fix}", dtype=dtype)

    def _risk(self, view, layer, phase, share, fmt, dtype):
        name = {"fp16": "float16", "bf16": "bfloat16"}[fmt]
        what = "activations" if phase == "forward" else "gradients"
        fix = ("use torch.amp.GradScaler, which scales the loss so they stay representable" if phase == "backward"
               else "keep this layer in float32 under autocast")
        return self.finding(layer, view.step, phase, "info", share, self.risk_share,
                            f"{share:.0%} of the non-zero {what} of {self.describe(layer)} would round to zero in "
                            f"{name}; {fix}", dtype=dtype, format=name)
