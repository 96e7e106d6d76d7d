"""logsumexp, softmax and log_softmax (and their derivatives) for NumPy arrays and torch tensors, to the last bit.

The three share one core. Along the axis, with m = max(x), d = x - m <= 0 and the max term left
out of the sum (Blanchard, Higham & Higham 2021, "Accurately computing the log-sum-exp and softmax"):

    s               = sum_{i != top} exp(d_i)           (top: the position of the max)
    logsumexp(x)    = m + log1p(s)
    softmax(x)_i    = exp(d_i) / (1 + s)
    log_softmax(x)_i = d_i - log1p(s)

Why each piece:
- Shifting by m makes every exp(d_i) <= 1: no overflow, and the largest term is exactly 1.
- log1p(s) instead of log(sum exp(d)): when one logit dominates, s is tiny and 1 + s rounds it
  away; log1p keeps it, so log_softmax of the winner is -s to the last bit (scipy and torch return 0).
- log_softmax_i = d_i - log1p(s) adds two terms of one sign (d_i <= 0 <= log1p(s)): no cancellation.
- d_i = x_i - m rounds when the row spans many binades, and exp turns the absolute error into a
  relative one (|d_i| * 2**-53: 350 ULP of float64 softmax on a row spanning 700). float64 inputs
  take d_i = hi + lo exactly (TwoSum, nnstab.numerics._exact) and exp(hi) * (1 + lo).
- float16, bfloat16 and float32 inputs are computed in float64 and rounded once; their 29+ spare
  bits cover the rounding of d, so they skip TwoSum.
- logsumexp alone can cancel: m < 0 < log1p(s) with m + log1p(s) ~ 0 (a row of log-probabilities).
  A vectorised test flags rows whose result is small next to log1p(s) (nnstab.numerics._cancellation);
  only those are evaluated again in np.longdouble or, past its 11 extra bits, with mpmath at a
  rising precision.

Edge conventions: a row of all -inf has logsumexp -inf, softmax 0 (no mass: a fully masked row
contributes nothing, as in "safe softmax" attention kernels) and log_softmax -inf. +inf entries
share the mass equally: logsumexp +inf, softmax 1/k at the k +inf entries and 0 elsewhere,
log_softmax -log(k) there and -inf elsewhere. A NaN anywhere in a row makes that row NaN. -inf
entries (masks) get exactly 0 probability. An empty axis gives logsumexp -inf and empty outputs.

Where the work happens: NumPy arrays go through blocked kernels (nnstab.numerics._softmax_kernels)
that keep their float64 scratch in cache. CPU tensors use the same kernels on zero-copy NumPy views
(`on_numpy`); tensors on other devices use torch ops with the same formulas
(nnstab.numerics._logsumexp_torch), so CUDA works. Each tensor function is a torch.autograd.Function
whose backward is the matching *_backward below.
"""
from __future__ import annotations

import functools
import importlib

import numpy as np

from nnstab import _backend
from nnstab.numerics import validate
from nnstab.numerics._softmax_kernels import log_softmax_backward_block, logsumexp_np, rows_backward_np, rows_np, \
    scalar_if_0d, softmax_backward_block

# CPU tensors run the NumPy kernels through zero-copy views (see `on_numpy`).
NUMPY_ON_CPU = True


# ---------------------------------------------------------------- public functions

def logsumexp(x, axis=-1, keepdims=False):
    """log(sum(exp(x))) along axis, as an array or tensor like x (0-d results are NumPy scalars).

    Formula: m + log1p(s) with m = max(x) and s = sum of exp(x_i - m) without the max term; see
    the module docstring for why. Rows where m + log1p(s) cancels (negative max, result near 0)
    are recomputed in extended or multiple precision, so even logsumexp of a row of
    log-probabilities (exactly ~1e-17) is correct to a few ULP. All -inf row: -inf; +inf entry:
    +inf; NaN in a row: NaN; empty axis: -inf. Derivative: softmax(x) (`logsumexp_backward`).
    """
    x = validate.check_float_array(x, "x")
    axis = validate.normalize_axis(axis, x.ndim)
    keepdims = validate.check_keepdims(keepdims)
    if _backend.is_tensor(x):
        return _torch_path().LogSumExp.apply(x, axis, keepdims)
    return scalar_if_0d(logsumexp_np(x, axis, keepdims))


def softmax(x, axis=-1):
    """exp(x_i) / sum_j exp(x_j) along axis, as exp(x_i - m) / (1 + s), an array or tensor like x.

    Every value is a positive same-sign quotient (no cancellation); float64 inputs use the exact
    difference x_i - m (TwoSum), so wide rows keep their last digits and subnormal results are
    kept (gradual underflow). -inf entries get exactly 0. All -inf row: 0 everywhere; +inf
    entries: 1/k each; NaN in a row: NaN. Derivative: `softmax_backward`.
    """
    x = validate.check_float_array(x, "x")
    axis = validate.normalize_axis(axis, x.ndim)
    if _backend.is_tensor(x):
        return _torch_path().Softmax.apply(x, axis)
    return rows_np(x, axis, "softmax")


def log_softmax(x, axis=-1):
    """x_i - logsumexp(x) along axis, as (x_i - m) - log1p(s), an array or tensor like x.

    Both terms are <= 0 (no cancellation), and log1p keeps the winner's log-probability -s when
    one logit dominates (log(softmax) and scipy/torch give 0 there). All -inf row: -inf; +inf
    entries: -log(k) there, -inf elsewhere; NaN in a row: NaN. Derivative: `log_softmax_backward`.
    """
    x = validate.check_float_array(x, "x")
    axis = validate.normalize_axis(axis, x.ndim)
    if _backend.is_tensor(x):
        return _torch_path().LogSoftmax.apply(x, axis)
    return rows_np(x, axis, "log_softmax")


# ---------------------------------------------------------------- derivatives

def logsumexp_backward(x, grad_output, axis=-1, keepdims=False):
    """d/dx of sum(grad_output * logsumexp(x)) = grad_output * softmax(x), in x's dtype.

    softmax is evaluated from x in float64 (not from a rounded forward result), so the gradient
    has softmax's accuracy; grad_output has the shape of logsumexp's result.
    """
    x, g, axis = _check_backward(x, grad_output, axis, "x")
    keepdims = validate.check_keepdims(keepdims)
    expected = _reduced_shape(x.shape, axis, keepdims)
    if tuple(g.shape) != expected:
        raise ValueError(f"grad_output must have logsumexp's result shape {expected}, got {tuple(g.shape)}")
    if _numpy_backward(x, g):
        return from_numpy(logsumexp_backward(*_backward_views(x, g), axis, keepdims), x.dtype)
    g64 = _backend.to_working(g)
    if not _backend.is_tensor(x):  # the row weights scale the softmax before its one rounding
        row_scale = np.ascontiguousarray(np.moveaxis(np.broadcast_to(
            g64 if keepdims else np.expand_dims(g64, axis), x.shape[:axis] + (1,) + x.shape[axis + 1:]), axis, -1))
        return rows_np(x, axis, "softmax", row_scale=row_scale.reshape(-1))
    if not keepdims:
        g64 = g64.unsqueeze(axis)
    return _backend.from_working(_torch_path().softmax64(x, axis) * g64, x.dtype)


def softmax_backward(y, grad_output, axis=-1):
    """The vector-Jacobian product of softmax from its output y: y * (g - sum(g * y)), in y's dtype.

    Computed in float64; the rounding of y itself (half an ULP) is the one error left, amplified
    only where g - sum(g * y) cancels. At the row's largest entry, 1 - y_top is taken as the sum
    of the other entries (as log1p(s) does in the forward): when one logit dominates, y_top
    rounds to 1 and y_top * (g_top - sum(g * y)) would lose the whole gradient y_top * sum_{j != top}
    y_j (g_top - g_j), which is what is returned there.
    """
    y, g, axis = _check_backward(y, grad_output, axis, "y")
    validate.check_same_shape(y, g, ("y", "grad_output"))
    if _numpy_backward(y, g):
        return from_numpy(softmax_backward(*_backward_views(y, g), axis), y.dtype)
    if _backend.is_tensor(y):
        return _torch_path().softmax_backward_torch(y, g, axis)
    return rows_backward_np(softmax_backward_block, y, g, axis)


def log_softmax_backward(y, grad_output, axis=-1):
    """The vector-Jacobian product of log_softmax from its output y: g - exp(y) * sum(g), in y's dtype.

    At the row's largest entry (the only one where exp(y) can exceed 1/2) it is computed as
    (g - sum(g)) - expm1(y) * sum(g): when one logit dominates, 1 - exp(y) is tiny and exp(y)
    rounded to 1 would lose it (the gradient of a confident negative log-likelihood).
    """
    y, g, axis = _check_backward(y, grad_output, axis, "y")
    validate.check_same_shape(y, g, ("y", "grad_output"))
    if _numpy_backward(y, g):
        return from_numpy(log_softmax_backward(*_backward_views(y, g), axis), y.dtype)
    if _backend.is_tensor(y):
        return _torch_path().log_softmax_backward_torch(y, g, axis)
    return rows_backward_np(log_softmax_backward_block, y, g, axis)


def _numpy_backward(a, g) -> bool:
    """CPU tensors with no graph being built (an ordinary backward) take the NumPy formulas on shared memory."""
    return _backend.is_tensor(a) and on_numpy(a) and on_numpy(g) and not (
        _torch().is_grad_enabled() and (a.requires_grad or g.requires_grad))


def _backward_views(*tensors):
    """NumPy views of CPU tensors; bfloat16 ones as float64, so the result is rounded to bfloat16 once."""
    views = [numpy_view(t) for t in tensors]
    if tensors[0].dtype == _torch().bfloat16:
        views = [v.astype(np.float64) for v in views]
    return views


def _check_backward(a, grad_output, axis, name):
    a = validate.check_float_array(a, name)
    g = validate.check_float_array(grad_output, "grad_output")
    validate.check_same_kind(a, g, (name, "grad_output"))
    return a, g, validate.normalize_axis(axis, a.ndim)


def _reduced_shape(shape, axis, keepdims):
    shape = tuple(shape)
    return shape[:axis] + ((1,) if keepdims else ()) + shape[axis + 1:]


# ---------------------------------------------------------------- where tensors are computed

def _torch():
    import torch

    return torch


@functools.cache
def _torch_path():
    """The torch-op kernels and autograd Functions, imported with the first tensor (torch is imported already)."""
    return importlib.import_module("nnstab.numerics._logsumexp_torch")


def on_numpy(t) -> bool:
    """Whether tensor t takes the NumPy kernels: a CPU tensor shares its memory with a NumPy view.

    The blocked NumPy kernels keep their float64 scratch in cache; torch's CPU allocator hands out
    fresh pages for every float64 temporary, and its float64 exp is slower, so on the CPU the NumPy
    path is 2-3x faster. Other devices (CUDA) use the torch-op kernels (`_torch_path`); NUMPY_ON_CPU =
    False sends CPU tensors there too (tests check both paths).
    """
    return NUMPY_ON_CPU and t.device.type == "cpu"


def numpy_view(t):
    """A NumPy array sharing a CPU tensor's memory (bfloat16, which NumPy lacks, converted exactly to float32)."""
    torch = _torch()
    t = t.detach()
    return (t.float() if t.dtype == torch.bfloat16 else t).numpy()


def from_numpy(a, dtype):
    """A tensor of `dtype` from a NumPy result (float64 results round once; bfloat16 ones come as float64)."""
    return _torch().as_tensor(a).to(dtype)
