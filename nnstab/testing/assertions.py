"""Test assertions against exact references: fail with the worst element, its input, value and exact value."""
from __future__ import annotations

import mpmath
import numpy as np

from nnstab.testing.ulp import ULP_BOUNDS, _as_exact, as_float64, dtype_name, ulp_error


def assert_ulp_close(actual, exact, dtype, bound=None, *, inputs=None, name: str = "result"):
    """Assert every element of `actual` is within `bound` ULP (in `dtype`) of `exact`.

    bound defaults to ULP_BOUNDS for the dtype. `inputs` (optional, an array or a tuple of arrays
    the result was computed from) is only used for the message: with an elementwise function of the
    same shape it shows the input at the worst position.
    """
    name_of_dtype = dtype_name(dtype)
    bound = ULP_BOUNDS[name_of_dtype] if bound is None else bound
    errors = ulp_error(actual, exact, dtype)
    if errors.size == 0 or not (errors > bound).any():
        return
    bad = int((errors > bound).sum())
    worst = np.unravel_index(int(np.argmax(errors)), errors.shape) if errors.ndim else ()
    a = np.broadcast_to(as_float64(actual), errors.shape)[worst]
    v = np.broadcast_to(_as_exact(exact), errors.shape)[worst]
    lines = [
        f"{name}: {bad} of {errors.size} element(s) exceed {bound} ULP in {name_of_dtype}; "
        f"worst {errors[worst]:.4g} ULP at index {tuple(int(i) for i in worst)}",
        f"  actual = {float(a)!r}",
        f"  exact  = {mpmath.nstr(v, 25)}",
    ]
    for label, arr in _named_inputs(inputs):
        lines.append(f"  {label} = {_at(as_float64(arr), worst, errors.ndim)}")
    raise AssertionError("\n".join(lines))


def _named_inputs(inputs):
    if inputs is None:
        return []
    if isinstance(inputs, dict):
        return list(inputs.items())
    if isinstance(inputs, (tuple, list)):
        return [(f"input[{i}]", v) for i, v in enumerate(inputs)]
    return [("input", inputs)]


def _at(arr, worst, ndim, limit=8):
    """The input element at the worst position, or its row along the last axis for a row function."""
    if arr.ndim == ndim:
        return repr(float(arr[worst]))
    if arr.ndim == ndim + 1:  # a reduction along the last axis: show that row
        row = arr[worst]
        head = ", ".join(repr(float(x)) for x in row[:limit])
        return f"row [{head}{', ...' if row.size > limit else ''}] ({row.size} entries)"
    return f"array of shape {arr.shape}"
