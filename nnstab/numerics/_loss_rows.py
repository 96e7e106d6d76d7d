"""What the categorical losses share: the per-row loss shape, grad_output's checks and row weights, the final rounding."""
from __future__ import annotations

import numpy as np

from nnstab import _backend
from nnstab.numerics import validate
from nnstab.numerics._softmax_kernels import scalar_if_0d


def without(shape, axis):
    """The shape of the per-row losses: shape without axis."""
    return tuple(shape[:axis]) + tuple(shape[axis + 1:])


def check_grad_output(like, grad_output, reduction, row_shape):
    """grad_output of a loss, checked: the loss's shape (row_shape for "none", () otherwise), the kind of like."""
    if isinstance(grad_output, (int, float)) and not isinstance(grad_output, bool):  # a reduced loss's 1.0
        if _backend.is_tensor(like):
            torch = _backend.torch_module()
            grad_output = torch.tensor(float(grad_output), dtype=torch.float64, device=like.device)
        else:
            grad_output = np.float64(grad_output)
    g = validate.check_float_array(grad_output, "grad_output")
    validate.check_same_kind(like, g, ("input", "grad_output"))
    expected = row_shape if reduction == "none" else ()
    if tuple(g.shape) != expected:
        raise ValueError(f"grad_output must have the loss's shape {expected} for reduction={reduction!r}, "
                         f"got {tuple(g.shape)}")
    return g


def row_weights(g, reduction, n_rows, valid):
    """Per-row weight (float64, flat) of grad_output: g itself, or g / count for "mean" (NaN if no row counts)."""
    g64 = _backend.to_working(g)
    if reduction == "none":
        return g64.reshape(-1) if valid is None else g64.reshape(-1) * valid
    if reduction == "mean":
        count = n_rows if valid is None else valid.sum()
        with np.errstate(invalid="ignore", divide="ignore"):
            g64 = g64 / count
    w = g64.reshape(1).expand(n_rows) if _backend.is_tensor(g64) else np.full(n_rows, g64)
    return w if valid is None else w * valid


def finish_np(values, dtype):
    """A float64 NumPy result rounded once to dtype (0-d results as NumPy scalars)."""
    with np.errstate(over="ignore"):  # a loss beyond the dtype's range rounds to inf
        return scalar_if_0d(_backend.from_working(values, dtype))
