"""Loss reductions ("none", "mean", "sum") done in the float64 working type, before the one final rounding."""
from __future__ import annotations

from nnstab import _backend


def reduce_loss(values, reduction: str):
    """Reduce per-element (or per-row) float64 losses; mean of an empty input is NaN, as in torch."""
    if reduction == "none":
        return values
    if _backend.is_tensor(values):
        return values.sum() if reduction == "sum" else values.mean()
    total = values.sum()
    if reduction == "sum":
        return total
    n = values.size
    return total / n if n else values.dtype.type("nan")
