"""Per-layer gradient figures shared by vanishing_gradient and exploding_gradient (not a check itself)."""
from __future__ import annotations

import math


def layer_grads(view, ctx) -> list[tuple[str, float, float]]:
    """(layer, gradient RMS, gradient norm / parameter norm) for every layer with trainable parameters
    whose gradients were measured this step, in forward order (first layer first); non-finite ones skipped."""
    out = []
    for layer in view.order:
        st = view.stats.get(layer, {})
        gn, pn = st.get("param_grad_norm"), st.get("param_norm")
        n = ctx.params.get(layer, 0) if ctx is not None else 0
        if gn is None or n <= 0 or not math.isfinite(gn):
            continue
        rel = gn / pn if pn and math.isfinite(pn) else math.inf
        out.append((layer, gn / math.sqrt(n), rel))
    return out
