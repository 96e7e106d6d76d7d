"""The cross-entropy per row, -log_softmax(x)_t = log1p(s) - d_t, its overflow repair, reduction and NumPy gradient.

The shared helpers take NumPy arrays or torch tensors; `ce_rows_np` and `ce_grad_np` are the NumPy
drivers over the softmax kernels (nnstab.numerics._softmax_kernels). Tensors on torch ops go through
nnstab.numerics._cross_entropy_torch, which reuses the helpers here.
"""
from __future__ import annotations

import math

import numpy as np

from nnstab import _backend
from nnstab.numerics import _exact
from nnstab.numerics._loss_rows import finish_np, row_weights
from nnstab.numerics._softmax_kernels import as_rows_np, kernel_np, limit_rows
from nnstab.numerics.reduce import reduce_loss


# ---------------------------------------------------------------- rows

def ce_rows_np(logits, target, axis, hard, ignore_index):
    """float64 losses per row (shape of logits without axis) and the non-ignored mask (None: all rows)."""
    x2, moved = as_rows_np(logits, axis)
    if not hard:
        t2, _ = as_rows_np(target, axis)
        log_p = np.empty(x2.shape)
        kernel_np(x2, "log_softmax", log_p)
        ce, halves = fix_overflow(soft_ce(t2, log_p), x2, t2)
        return ce.reshape(moved[:-1]), None, halves
    t, valid = flat_targets(target, ignore_index)
    if x2.shape[1] == 0:  # no classes: validation lets through only ignored rows, whose loss is 0
        return np.zeros(moved[:-1]), valid, None
    m, log_sum = kernel_np(x2, None)
    ce = ce_from_parts(x2[np.arange(x2.shape[0]), t], m, log_sum, x2.dtype == np.float64)
    limit = np.flatnonzero(np.isinf(m))
    if limit.size:
        log_p = limit_rows(np.asarray(x2[limit], dtype=np.float64), "log_softmax")
        ce[limit] = -log_p[np.arange(limit.size), t[limit]]
    if valid is not None:
        ce[~valid] = 0.0
    ce, halves = fix_overflow(ce, x2, t)
    return ce.reshape(moved[:-1]), valid, halves


def flat_targets(target, ignore_index):
    """Class indices flattened (ignored entries pointing at class 0) and the non-ignored mask."""
    t = target.reshape(-1)
    if ignore_index is None:
        return (t.long() if _backend.is_tensor(t) else t.astype(np.intp)), None
    valid = t != ignore_index
    t = t.where(valid, 0).long() if _backend.is_tensor(t) else np.where(valid, t, 0).astype(np.intp)
    return t, valid


def ce_from_parts(x_t, m, log_sum, wide):
    """log1p(s) - (x_t - m) per row, x_t - m exact (TwoSum) for float64 inputs; NumPy or torch."""
    x_t = _backend.to_working(x_t)
    if _backend.is_tensor(m):
        shift = m.where(~m.isinf(), 0.0)
    else:
        shift = np.where(np.isinf(m), 0.0, m)
    if not wide:
        return log_sum - (x_t - shift)
    hi, lo = _exact.two_diff(x_t, shift)
    return (log_sum - hi) - lo


def soft_ce(t, log_p):
    """-sum_i t_i log_p_i per row with 0 * log 0 = 0 (a masked entry with zero target weight adds nothing)."""
    t = _backend.to_working(t)
    if _backend.is_tensor(t):
        return -((t * log_p).where(t != 0, 0.0)).sum(-1)
    with np.errstate(invalid="ignore"):  # 0 * -inf, replaced by 0 below
        terms = t * log_p
    return -np.where(t != 0, terms, 0.0).sum(-1)


def fix_overflow(ce, x2, target):
    """Rows of float64 logits whose loss overflowed on the way (x_i - m beyond the range: logits near +-max).

    Their half loss, sum_i t_i (log1p(s)/2 - (x_i/2 - m/2)), is recomputed from halved logits (exact
    scalings) and the loss set to twice it (inf only if the loss itself is beyond the range). Returns
    (ce, halves): halves is ce / 2 with those rows exact, for a mean that is back in range, or None
    when no row overflowed. target: flat class indices or 2-D probability rows.
    """
    torch = _backend.torch_module() if _backend.is_tensor(ce) else None
    if x2.dtype != (torch.float64 if torch else np.float64):  # narrower logits cannot overflow float64
        return ce, None
    rows = _exact.flagged(ce == math.inf)
    if not rows.size:
        return ce, None
    x = _exact.rows_to_numpy(x2, rows)
    m, log_sum = kernel_np(x, None)
    with np.errstate(invalid="ignore", over="ignore"):
        hi, lo = _exact.two_diff(x / 2, np.where(np.isinf(m), 0.0, m)[:, None] / 2)
        half_terms = (log_sum[:, None] / 2 - hi) - lo  # -log_softmax / 2, never beyond the range
        if target.ndim == 1:
            t = np.asarray(target[rows].cpu() if torch else target[rows])
            half = half_terms[np.arange(rows.size), t]
        else:
            t = _exact.rows_to_numpy(target, rows)
            half = np.where(t != 0, t * half_terms, 0.0).sum(1)
        half = np.where(np.isinf(m), np.inf, half)  # limit rows keep their convention (inf here)
        ce = _exact.put_rows(ce, rows, 2 * half)
    halves = ce / 2
    return ce, _exact.put_rows(halves, rows, half)


# ---------------------------------------------------------------- reduction and gradient

def _hard_ce_grad_np(x2, target, g, reduction, ignore_index, ce_rows, out_dtype):
    """w (softmax - onehot(t)) for class indices, straight into out_dtype: the softmax kernel scales each row
    by its weight w before the one rounding, and the target entries are w expm1(-loss) (p_t - 1)."""
    n_rows = x2.shape[0]
    t, valid = flat_targets(target, ignore_index)
    w = row_weights(g, reduction, n_rows, valid)
    out = np.empty(x2.shape, dtype=out_dtype)
    m, log_sum = kernel_np(x2, "softmax", out, row_scale=w)
    rows = np.arange(n_rows)
    if ce_rows is None:
        ce_rows = ce_from_parts(x2[rows, t], m, log_sum, x2.dtype == np.float64)
    with np.errstate(invalid="ignore"):
        at_t = np.expm1(-ce_rows)  # p_t - 1 without cancellation
    limit = np.flatnonzero(np.isinf(m))
    if limit.size:  # rows with an infinite max: p_t from the limit conventions
        p_t = limit_rows(np.asarray(x2[limit], dtype=np.float64), "softmax")[np.arange(limit.size), t[limit]]
        at_t[limit] = p_t - 1.0
    with np.errstate(invalid="ignore", over="ignore"):  # NaN rows; beyond a narrow range: inf
        out[rows, t] = at_t * w
    return out

def reduce_rows(rows, reduction, valid, halves=None):
    """Reduce float64 per-row losses; `valid` (None: all rows) masks ignored rows out of the mean.

    halves (see `fix_overflow`) holds rows / 2 exactly where a row overflowed: their mean may be in range.
    """
    if reduction != "mean" or (valid is None and halves is None):
        return reduce_loss(rows, reduction)
    count = math.prod(rows.shape) if valid is None else valid.sum()  # rows may be 0-d (1-d logits)
    if halves is not None:
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            return 2 * (halves / count).sum()
    total = rows.sum()
    return total / count if _backend.is_tensor(rows) else (total / count if count else np.float64("nan"))


def ce_grad_np(logits, target, g, axis, reduction, hard, ignore_index, ce_rows=None, out_dtype=None):
    """dlogits of NumPy arrays in logits' dtype (or out_dtype): w (softmax * sum(t) - t), p_t - 1 as expm1(-loss).

    ce_rows (float64 per-row losses, flat) saves recomputing log_softmax_t.
    """
    x2, moved = as_rows_np(logits, axis)
    n_rows = x2.shape[0]
    out_dtype = logits.dtype if out_dtype is None else out_dtype
    if hard and x2.shape[1]:
        dx = _hard_ce_grad_np(x2, target, g, reduction, ignore_index, ce_rows, out_dtype)
        return finish_np(np.moveaxis(dx.reshape(moved), -1, axis), out_dtype)
    p = np.empty(x2.shape)
    m, log_sum = kernel_np(x2, "softmax", p)
    if x2.shape[1] == 0:  # no classes (no rows, or only ignored ones): an empty gradient
        return finish_np(np.moveaxis(p.reshape(moved), -1, axis), out_dtype)
    if hard:
        t, valid = flat_targets(target, ignore_index)
        w = row_weights(g, reduction, n_rows, valid)
        rows = np.arange(n_rows)
        if ce_rows is None:
            ce_rows = ce_from_parts(x2[rows, t], m, log_sum, x2.dtype == np.float64)
        with np.errstate(invalid="ignore"):
            at_t = np.where(np.isinf(m), p[rows, t] - 1.0, np.expm1(-ce_rows))  # p_t - 1
        p *= w[:, None]
        p[rows, t] = at_t * w
    else:
        t2 = _backend.to_working(as_rows_np(target, axis)[0])
        w = row_weights(g, reduction, n_rows, None)
        p *= t2.sum(1, keepdims=True)
        p -= t2
        p *= w[:, None]
    dx = np.moveaxis(p.reshape(moved), -1, axis)
    return finish_np(dx, out_dtype)
