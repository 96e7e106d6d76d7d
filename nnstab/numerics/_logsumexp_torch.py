"""The softmax family on torch ops (any device, CUDA included), and its torch.autograd Functions.

The formulas are those of nnstab.numerics.softmax_family, written with torch ops so that tensors stay on
their device. CPU tensors normally run the NumPy kernels on zero-copy views instead (`on_numpy`);
the forwards below and the autograd Functions dispatch between the two. This module is imported
with the first tensor, so a NumPy-only user never imports torch.
"""
from __future__ import annotations

import numpy as np
import torch

from nnstab import _backend
from nnstab.numerics import _exact
from nnstab.numerics._cancellation import LOG_SUM_ERROR_UNITS, LOG_SUM_ERROR_UNITS_NARROW, cancellation_limit, \
    lse_exact_rows
from nnstab.numerics._softmax_kernels import LN2, limit_rows, logsumexp_np, rows_np
from nnstab.numerics.softmax_family import from_numpy, log_softmax_backward, logsumexp_backward, numpy_view, on_numpy, \
    softmax_backward

# torch's fused float64 kernels compute log(1 + s) instead of log1p(s): an absolute error of
# ~2**-53 in log_softmax and cross-entropy values, below 2**-33 relative once those exceed this
# (float32 needs 2**-25). Rows whose log-sum is smaller take the log1p path.
TORCH_FUSED_MIN_LOG_SUM = 2.0 ** -20


# ---------------------------------------------------------------- the shared core

def _numpy_out_dtype(t):
    """The NumPy dtype a kernel writes for tensor t: t's own, or float64 for bfloat16 (rounded by torch once)."""
    return np.float64 if t.dtype == torch.bfloat16 else None


def parts_torch(x, dim):
    """(m, top, hi, lo, e) for a tensor: m the max (keepdim), hi + lo = x - m (lo None for narrow dtypes),
    e = exp(hi) * (1 + lo) with the max term set to 0. All float64."""
    x64 = _backend.to_working(x)
    m, top = x64.max(dim, keepdim=True)
    shift = torch.where(m.isinf(), torch.zeros_like(m), m)
    hi = x64 - shift
    lo = None
    if x.dtype == torch.float64:
        lo = _two_diff_torch(x64, shift, hi)
        e = hi.exp()
        e.addcmul_(e, lo)
    else:
        e = hi.exp()
    e.scatter_(dim, top, 0.0)
    return m, top, hi, lo, e


def _two_diff_torch(x, shift, hi):
    """lo = (x - shift) - hi exactly (TwoSum); -1 where hi is infinite (see `_fused.two_diff_rows`)."""
    b = hi - x
    lo = (x - (hi - b)).add_(-shift - b)
    return lo.nan_to_num_(nan=-1.0)


def _patch_limit_rows_torch(y, x, m, dim, mode):
    """Rows of y whose max m is infinite get the limit conventions (one host sync to find out if any)."""
    bad = m.isinf()
    if not bool(bad.any()):
        return y
    x_rows = _backend.to_working(x).movedim(dim, -1)
    rows = bad.movedim(dim, -1).expand_as(x_rows)
    limit = limit_rows(x_rows, mode)
    return torch.where(rows, limit.to(y.dtype), y.movedim(dim, -1)).movedim(-1, dim)


def _empty_axis(x, dim) -> bool:
    """An empty axis has no max (torch's max and amax raise): the forwards return its conventions directly."""
    return x.shape[dim] == 0


# ---------------------------------------------------------------- forwards

def _logsumexp64_torch(x, dim):
    """logsumexp along dim in float64 (keepdim), cancelling rows recomputed exactly; an empty axis gives -inf."""
    if _empty_axis(x, dim):
        shape = x.shape[:dim] + (1,) + x.shape[dim + 1:]
        return torch.full(shape, -np.inf, dtype=torch.float64, device=x.device)
    m, _, _, _, e = parts_torch(x, dim)
    log_sum = e.sum(dim, keepdim=True).log1p_()
    log_sum = torch.where(m.isinf(), torch.zeros_like(log_sum), log_sum)  # inf max: e holds inf/NaN
    r = m + log_sum
    limit = cancellation_limit(x.dtype, 53, LOG_SUM_ERROR_UNITS if x.dtype == torch.float64 else LOG_SUM_ERROR_UNITS_NARROW)
    cancels = ((m < 0) & (log_sum / limit > r.abs())).movedim(dim, -1).flatten()
    rows = _exact.flagged(cancels)
    if rows.size:
        x_rows, _ = _exact.flatten_rows(x, dim)
        fixed = lse_exact_rows(_exact.rows_to_numpy(x_rows, rows), x.dtype)
        r_rows = r.movedim(dim, -1).reshape(-1, 1).clone()
        _exact.put_rows(r_rows, rows, fixed[:, None])
        r = r_rows.reshape(r.movedim(dim, -1).shape).movedim(-1, dim)
    return r


def softmax64(x, dim):
    """softmax of a tensor along dim as a float64 tensor, accurate for x's dtype; differentiable."""
    if on_numpy(x) and not (torch.is_grad_enabled() and x.requires_grad):
        return from_numpy(rows_np(numpy_view(x), dim, "softmax", np.float64), torch.float64)
    if _empty_axis(x, dim):
        return _backend.to_working(x).clone()  # empty, and still in the graph
    if x.dtype == torch.float64:
        return Softmax.apply(x, dim)
    # narrow dtypes: torch's fused float64 softmax errs by a few 2**-53, far below their ULP
    y = torch.softmax(_backend.to_working(x), dim)
    return _patch_limit_rows_torch(y, x, x.detach().amax(dim, keepdim=True), dim, "softmax")


def _softmax_torch(x, dim):
    """softmax forward (no graph) in x's dtype."""
    if on_numpy(x):
        return from_numpy(rows_np(numpy_view(x), dim, "softmax", _numpy_out_dtype(x)), x.dtype)
    if x.dtype != torch.float64:
        return softmax64(x, dim).to(x.dtype)
    if _empty_axis(x, dim):
        return x.detach().clone()
    m, top, _, _, e = parts_torch(x, dim)
    s = e.sum(dim, keepdim=True)
    e.scatter_(dim, top, torch.where(m.isnan(), m, 1.0))  # the max term exp(0) = 1; NaN rows stay NaN
    return _patch_limit_rows_torch(e.div_(s.add_(1.0)), x, m, dim, "softmax")


def _log_softmax_torch(x, dim):
    """log_softmax forward (no graph) in x's dtype."""
    if on_numpy(x):
        return from_numpy(rows_np(numpy_view(x), dim, "log_softmax", _numpy_out_dtype(x)), x.dtype)
    return log_softmax64_torch(x, dim).to(x.dtype)


def log_softmax64_torch(x, dim):
    """log_softmax (no graph) as a float64 tensor, accurate for x's dtype."""
    if on_numpy(x):
        return from_numpy(rows_np(numpy_view(x), dim, "log_softmax", np.float64), torch.float64)
    if _empty_axis(x, dim):
        return _backend.to_working(x.detach()).clone()
    if x.dtype != torch.float64:
        # torch's fused float64 kernel is within 2**-53 absolute; rows whose winner has a log-sum
        # below TORCH_FUSED_MIN_LOG_SUM (one logit dominates) take the log1p path
        m, top = x.detach().max(dim, keepdim=True)
        y = torch.log_softmax(_backend.to_working(x), dim)
        small = (y.gather(dim, top) > -TORCH_FUSED_MIN_LOG_SUM) & ~m.isnan()
        if bool(small.any()):
            _, _, hi, _, e = parts_torch(x, dim)
            y = torch.where(small, hi - e.sum(dim, keepdim=True).log1p_(), y)
        return _patch_limit_rows_torch(y, x, m, dim, "log_softmax")
    m, _, hi, lo, e = parts_torch(x, dim)
    y = (hi - e.sum(dim, keepdim=True).log1p_()).add_(lo)
    return _patch_limit_rows_torch(y, x, m, dim, "log_softmax")


# ---------------------------------------------------------------- backwards (see softmax_backward, log_softmax_backward)

def softmax_backward_torch(y, g, dim):
    """y (g - sum(g y)) in float64, the top entry as y_top sum_{j != top} y_j (g_top - g_j); differentiable."""
    y64, g64 = _backend.to_working(y), _backend.to_working(g)
    if y64.shape[dim] == 0:
        return _backend.from_working(y64 * g64, y.dtype)
    top = y64.argmax(dim, keepdim=True)
    gy = g64 * y64
    gy_top, y_top, g_top = gy.gather(dim, top), y64.gather(dim, top), g64.gather(dim, top)
    others_gy = gy.scatter(dim, top, gy_top.new_zeros(gy_top.shape)).sum(dim, keepdim=True)  # sum without the top term
    others_y = y64.scatter(dim, top, y_top.new_zeros(y_top.shape)).sum(dim, keepdim=True)
    dx = y64 * (g64 - (others_gy + gy_top))
    return _backend.from_working(dx.scatter(dim, top, y_top * (g_top * others_y - others_gy)), y.dtype)


def log_softmax_backward_torch(y, g, dim):
    """g - exp(y) sum(g) in float64, the top entry through expm1; differentiable."""
    y64, g64 = _backend.to_working(y), _backend.to_working(g)
    total = g64.sum(dim, keepdim=True)
    dx = g64 - y64.exp() * total
    if y64.shape[dim] == 0:
        return _backend.from_working(dx, y.dtype)
    top = y64.argmax(dim, keepdim=True)
    y_top = y64.gather(dim, top)
    near_one = (g64.gather(dim, top) - total) - y_top.expm1() * total
    at_top = torch.where(y_top > -LN2, near_one, dx.gather(dim, top))
    return _backend.from_working(dx.scatter(dim, top, at_top), y.dtype)


# ---------------------------------------------------------------- autograd Functions

class LogSumExp(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, dim, keepdim):
        ctx.save_for_backward(x)
        ctx.dim, ctx.keepdim = dim, keepdim
        if on_numpy(x):
            return from_numpy(logsumexp_np(numpy_view(x), dim, keepdim, _numpy_out_dtype(x)), x.dtype)
        r = _logsumexp64_torch(x, dim)
        return (r if keepdim else r.squeeze(dim)).to(x.dtype)

    @staticmethod
    def backward(ctx, grad_output):
        (x,) = ctx.saved_tensors
        return logsumexp_backward(x, grad_output, ctx.dim, ctx.keepdim), None, None


class Softmax(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, dim):
        y = _softmax_torch(x, dim)
        ctx.save_for_backward(y)
        ctx.dim = dim
        return y

    @staticmethod
    def backward(ctx, grad_output):
        (y,) = ctx.saved_tensors
        return softmax_backward(y, grad_output, ctx.dim), None


class LogSoftmax(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, dim):
        y = _log_softmax_torch(x, dim)
        ctx.save_for_backward(y)
        ctx.dim = dim
        return y

    @staticmethod
    def backward(ctx, grad_output):
        (y,) = ctx.saved_tensors
        return log_softmax_backward(y, grad_output, ctx.dim), None
