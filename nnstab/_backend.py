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
