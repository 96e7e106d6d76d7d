"""Errors in units in the last place (ULP) of a floating dtype, measured against exact (mpmath) values.

ulp(v) in a dtype with p significand bits and smallest normal exponent emin is 2**(e - p + 1) with
e = max(floor(log2|v|), emin): below the smallest normal the spacing stays that of the subnormals
(gradual underflow), and ulp(0) is the smallest subnormal. An error of 0.5 ULP is a correctly rounded
result; the accuracy targets allow 1 ULP (narrow dtypes) and 4 ULP (float64).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import mpmath
import numpy as np

from nnstab import _backend

ULP_BOUNDS = {"float16": 1, "bfloat16": 1, "float32": 1, "float64": 4}


@dataclass(frozen=True)
class FloatFormat:
    """A binary floating-point format: significand bits (with the implicit one) and exponent range."""

    name: str
    precision: int  # p: significand bits, implicit leading bit included
    emin: int  # exponent of the smallest normal number
    emax: int  # exponent of the largest finite number

    @cached_property
    def overflow_threshold(self):
        """|v| at or beyond this rounds to inf (halfway between max and 2**(emax+1); ties go to even = inf)."""
        return mpmath.ldexp(mpmath.mpf(2) - mpmath.ldexp(1, -self.precision), self.emax)

    def ulp(self, v):
        """The spacing of this format at the exact value v (an mpf), with gradual underflow."""
        sign, man, exp, bc = mpmath.mpf(v)._mpf_
        e = self.emin if not man else max(exp + bc - 1, self.emin)
        return mpmath.ldexp(1, e - self.precision + 1)


FORMATS = {
    "float16": FloatFormat("float16", 11, -14, 15),
    "bfloat16": FloatFormat("bfloat16", 8, -126, 127),
    "float32": FloatFormat("float32", 24, -126, 127),
    "float64": FloatFormat("float64", 53, -1022, 1023),
}


def dtype_name(dtype) -> str:
    """'float16', 'bfloat16', 'float32' or 'float64' for a name, NumPy dtype/type or torch dtype."""
    if isinstance(dtype, str):
        name = dtype
    else:
        name = str(dtype).replace("torch.", "")
        try:
            name = np.dtype(dtype).name
        except TypeError:
            pass
    if name not in FORMATS:
        raise ValueError(f"dtype must be one of {', '.join(FORMATS)}, got {dtype!r}")
    return name


def as_float64(values) -> np.ndarray:
    """A NumPy float64 array holding exactly the given floats (torch bfloat16/float16 included)."""
    if _backend.is_tensor(values):
        import torch

        return values.detach().to(device="cpu", dtype=torch.float64).numpy()
    return np.asarray(values, dtype=np.float64)


def _as_exact(exact) -> np.ndarray:
    """An object array of mpf (floats are taken exactly as they are)."""
    if _backend.is_tensor(exact):
        exact = as_float64(exact)
    arr = exact if isinstance(exact, np.ndarray) else np.asarray(exact, dtype=object)
    if arr.dtype != object:
        arr = arr.astype(np.float64).astype(object)
    out = np.empty(arr.shape, dtype=object)
    for index, v in np.ndenumerate(arr):
        out[index] = v if isinstance(v, mpmath.mpf) else mpmath.mpf(v)
    return out


def _one_error(a: float, v, fmt: FloatFormat, limit) -> float:
    if mpmath.isnan(v):
        return 0.0 if a != a else math.inf
    if mpmath.isinf(v) or abs(v) >= limit:
        rounded = math.inf if v > 0 else -math.inf  # what a correctly rounded result is
        return 0.0 if a == rounded else math.inf
    if not math.isfinite(a):
        return math.inf
    sign, man, exp, bc = v._mpf_
    e = fmt.emin if not man else max(exp + bc - 1, fmt.emin)
    return float(mpmath.ldexp(abs(v - a), fmt.precision - 1 - e))  # |a - v| / 2**(e - p + 1)


def ulp_error(actual, exact, dtype) -> np.ndarray:
    """|actual - exact| / ulp(exact) in `dtype`, elementwise, as a float64 array of the broadcast shape.

    actual: floats (NumPy array, torch tensor of any float dtype, scalar); exact: mpf object array
    (e.g. from nnstab.oracle), a single mpf, or floats. Conventions: exact that rounds to +-inf in
    `dtype` -> 0 if actual is that inf, else inf; actual non-finite where exact is finite -> inf;
    both NaN -> 0; exact NaN and actual not -> inf.
    """
    fmt = FORMATS[dtype_name(dtype)]
    a = as_float64(actual)
    v = _as_exact(exact)
    a, v = np.broadcast_arrays(a, v)
    with mpmath.workdps(30):  # |a - v| to a few significant digits: a is exact, v - a rounds once
        errors = [_one_error(x, y, fmt, fmt.overflow_threshold) for x, y in zip(a.ravel().tolist(), v.ravel().tolist())]
    return np.asarray(errors, dtype=np.float64).reshape(a.shape)
