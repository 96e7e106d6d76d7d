"""Argument checks shared by the numeric functions; each error names the argument, what was expected and the fix."""
from __future__ import annotations

import numpy as np

from nnstab import _backend

REDUCTIONS = ("none", "mean", "sum")


def check_float_array(x, name: str):
    """Accept a floating NumPy array/scalar or torch tensor; return it (NumPy scalars become 0-d arrays)."""
    if _backend.is_tensor(x):
        if x.dtype not in _backend.torch_float_dtypes():
            raise TypeError(
                f"{name} must be a floating-point tensor (float16, bfloat16, float32 or float64), "
                f"got dtype {x.dtype}; convert it with {name}.float()"
            )
        if x.device.type == "meta":
            # The results, their validation (label range, [0, 1]) and the exact paths for hard rows all read values.
            raise ValueError(
                f"{name} is a tensor on the 'meta' device, which has a shape but no values; nnstab computes "
                f"and checks values, so move it to a real device first, e.g. {name}.to('cpu')"
            )
        return x
    if isinstance(x, np.generic):
        x = np.asarray(x)
    if not isinstance(x, np.ndarray):
        raise TypeError(
            f"{name} must be a NumPy array or a torch tensor, got {type(x).__name__}; "
            f"wrap it with np.asarray({name}, dtype=np.float64)"
        )
    if isinstance(x, np.ma.MaskedArray):
        raise TypeError(
            f"{name} is a masked array, and nnstab does not honour masks; pass {name}.filled(value) "
            f"(-np.inf masks a logit out of a softmax) or np.asarray({name}) to use every entry"
        )
    if not x.dtype.isnative and x.dtype.newbyteorder("=") in _backend.NUMPY_FLOAT_DTYPES:
        x = x.astype(x.dtype.newbyteorder("="))  # big-endian data (e.g. read from a file): same values, native order
    if x.dtype not in _backend.NUMPY_FLOAT_DTYPES:
        hint = " (bfloat16 is supported for torch tensors)" if "bfloat16" in str(x.dtype) else ""
        raise TypeError(
            f"{name} must be a floating-point array (float16, float32 or float64){hint}, "
            f"got dtype {x.dtype}; convert it with {name}.astype(np.float64)"
        )
    return x


def check_same_kind(a, b, names: tuple[str, str]):
    """Both NumPy or both torch (on the same device): mixing them would hide a copy or a device move."""
    if _backend.is_tensor(a) != _backend.is_tensor(b):
        kinds = ["torch tensor" if _backend.is_tensor(v) else "NumPy array" for v in (a, b)]
        raise TypeError(
            f"{names[0]} is a {kinds[0]} but {names[1]} is a {kinds[1]}; pass both as the same kind"
        )
    if _backend.is_tensor(a) and a.device != b.device:
        raise ValueError(f"{names[0]} is on {a.device} but {names[1]} is on {b.device}; move them to one device")


def check_same_shape(a, b, names: tuple[str, str]):
    if tuple(a.shape) != tuple(b.shape):
        raise ValueError(
            f"{names[1]} must have the shape of {names[0]} {tuple(a.shape)}, got {tuple(b.shape)}"
        )


def normalize_axis(axis, ndim: int, name: str = "axis") -> int:
    """A single integer axis in [-ndim, ndim), returned as a non-negative index."""
    if isinstance(axis, (bool, np.bool_)) or not isinstance(axis, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(axis).__name__}")
    if ndim == 0:
        raise ValueError(f"{name}={axis} needs an input with at least 1 dimension to work along, got a 0-d input "
                         f"(shape ()); give the input a dimension, e.g. with .reshape(1)")
    if not -ndim <= axis < ndim:
        raise ValueError(f"{name}={axis} is out of range for an input with {ndim} dimension(s); expected {-ndim} <= {name} < {ndim}")
    return int(axis) % ndim


def check_reduction(reduction) -> str:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {', '.join(repr(r) for r in REDUCTIONS)}, got {reduction!r}")
    return reduction


def check_keepdims(keepdims) -> bool:
    if not isinstance(keepdims, (bool, np.bool_)):
        raise TypeError(f"keepdims must be a bool, got {type(keepdims).__name__}")
    return bool(keepdims)


def any_true(mask) -> bool:
    """`mask.any()` as a Python bool for NumPy or torch (one host sync for a device tensor: validation only)."""
    return bool(mask.any())


def check_in_unit_interval(p, name: str):
    """Values in [0, 1]; NaN is allowed and propagates. One host sync (the `.any()`) when the values pass."""
    if _backend.is_tensor(p):
        if p.numel() and all(0 <= v <= 1 for v in (float(b) for b in _backend.torch_module().aminmax(p.detach()))):
            return  # one pass, one host sync, no mask (a NaN fails the compares and takes the masked look below)
    elif p.size and 0 <= p.min() and p.max() <= 1:
        return  # two SIMD reductions, no mask (a NaN fails the compares and takes the masked look below)
    bad = (p < 0) | (p > 1)
    if any_true(bad):
        p = p.detach() if _backend.is_tensor(p) else p  # float() of a tensor in a graph warns
        lo, hi = float(p[~_isnan(p)].min()), float(p[~_isnan(p)].max())
        raise ValueError(f"{name} must hold probabilities in [0, 1], got values in [{lo:g}, {hi:g}]; "
                         f"pass probabilities (e.g. a softmax of scores) or clip {name} into [0, 1]")


def _isnan(x):
    if _backend.is_tensor(x):
        import torch

        return torch.isnan(x)
    return np.isnan(x)
