"""NumPy or torch: which kind of array came in, the precision to compute in, and handing results back.

Every public numeric function computes in float64 ("the working type") and rounds once to the input
dtype at the end. For float16, bfloat16 and float32 inputs this alone gives results within half an
ULP plus a negligible float64 error (float64 carries 29+ more bits than float32), which is what the
1-ULP bounds need. float64 inputs get no wider type for free, so their functions use exact
differences (TwoSum), log1p without the max term, and, for the rare ill-conditioned row, a
multiple-precision fallback; see each function's docstring.

torch is imported lazily: a NumPy-only user never pays for `import torch`, and `is_tensor` answers
without importing it (a tensor cannot exist before torch is imported).
"""
from __future__ import annotations

import sys

import numpy as np

NUMPY_FLOAT_DTYPES = (np.float16, np.float32, np.float64)
WORKING_NUMPY_DTYPE = np.float64


def torch_module():
    """The torch module if it has been imported by anyone, else None (never imports it)."""
    return sys.modules.get("torch")


def is_tensor(x) -> bool:
    torch = torch_module()
    return torch is not None and isinstance(x, torch.Tensor)


def torch_float_dtypes():
    import torch

    return (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def to_working(x):
    """x as float64 (same kind, same device); no copy when it already is float64."""
    if is_tensor(x):
        import torch

        return x.to(torch.float64)
    return x.astype(WORKING_NUMPY_DTYPE, copy=False)


def from_working(y, like_dtype):
    """Round a float64 result once to the caller's dtype (a NumPy dtype or a torch dtype)."""
    if is_tensor(y):
        import torch

        if y.dtype == torch.float64 and like_dtype in (torch.float16, torch.bfloat16):
            return _round_to_odd_float32(y).to(like_dtype)
        return y.to(like_dtype)
    if isinstance(y, np.ndarray) and y.ndim == 0:
        return np.dtype(like_dtype).type(y[()])
    if isinstance(y, np.generic):
        return np.dtype(like_dtype).type(y)
    return y.astype(like_dtype, copy=False)


def finfo(dtype):
    """Machine limits for a NumPy or torch floating dtype, as a NumPy-like finfo (eps, tiny, max, smallest_subnormal)."""
    if isinstance(dtype, np.dtype) or (isinstance(dtype, type) and issubclass(dtype, np.generic)):
        return np.finfo(dtype)
    import torch

    return torch.finfo(dtype)


def _round_to_odd_float32(y):
    """float64 -> float32 rounded to odd, so that a second rounding to float16/bfloat16 is correct.

    torch converts float64 to float16 and bfloat16 through float32, rounding twice: a value just
    above a float16 halfway point can land on the halfway point in float32 and then round to even,
    half an ULP off in the wrong direction (1 + 2**-11 + 2**-40 becomes 1.0). Rounding the first
    step to odd (truncate, then set the last bit when inexact) keeps the information that the value
    was not a tie; float32 has 13 spare bits over float16 and 16 over bfloat16, enough for the
    second rounding to be the correct one (Boldo & Melquiond, "When double rounding is odd").
    """
    import torch

    f = y.to(torch.float32)
    back = f.to(torch.float64)
    inexact = (back != y) & torch.isfinite(f)
    bits = f.view(torch.int32)
    # Sign-magnitude: one less in the integer magnitude is one ULP toward zero, for either sign.
    toward_zero = inexact & (back.abs() > y.abs())
    magnitude = (bits & 0x7FFFFFFF) - toward_zero.to(torch.int32)
    magnitude = torch.where(inexact, magnitude | 1, magnitude)
    # The float64 value beyond float32's range rounds to inf above; keep those as they are.
    return torch.where(inexact, ((bits & ~0x7FFFFFFF) | magnitude).view(torch.float32), f)
