"""Cross-entropy and KL divergence of categorical distributions (and their derivatives), NumPy or torch, to the last bit.

cross_entropy builds on the logsumexp core (nnstab.numerics.logsumexp): with m the row max,
d = x - m and s the sum of exp(d) without the max term,

    -log_softmax(x)_t = log1p(s) - d_t          (two terms >= 0: no cancellation)

so a confident correct prediction (loss ~1e-20) keeps its digits where log(sum(exp)) - x_t
returns 0. kl_div splits KL(p || q) = sum p log(p/q) into terms that cannot cancel plus an exact
sum (see `kl_div`). Both compute in float64 and round once to the input dtype. As in logsumexp.py,
CPU tensors run the NumPy code on zero-copy views and other devices run torch ops; each tensor
function is a torch.autograd.Function whose backward is cross_entropy_backward / kl_div_backward.
"""
from __future__ import annotations

import functools
import importlib
import math
import types

import numpy as np

from nnstab import _backend
from nnstab.numerics import _exact, validate
from nnstab.numerics.reduce import reduce_loss

# The module, not the function nnstab.numerics.logsumexp that the package namespace exports under its name.
lse = importlib.import_module("nnstab.numerics.logsumexp")

# Probability rows (soft targets) must sum to 1 within this many eps of their dtype: rounding each
# entry of an exact distribution moves the sum by at most eps/2, and a softmax computed in that dtype
# by a few eps more.
PROBABILITY_SUM_TOLERANCE_EPS = 32

# KL terms p log(p/q) - (p - q) with |u| <= 1/3, u = (p - q)/(p + q) (p/q in [1/2, 2]), use the series
# u (p - q) + 2 p u^3 sum_k u^(2k)/(2k + 3): 18 terms reach 2**-56 at u^2 = 1/9.
KL_SERIES_MAX_U = 1.0 / 3.0
KL_SERIES_TERMS = 18
# Beyond it, p log(p/q) cancels against (p - q) by up to ~3.6x: log(p/q) is taken in double-double
# (`_exact.log_ratio_dd`) for ratios within 2**+-60 of entries above 2**-900; outside, log p - log q
# is exact enough (cancellation < 1.1x).
KL_DD_MAX_LOG2_RATIO = 60.0
KL_DD_MIN_ENTRY = 2.0 ** -900
# Relative error of a row's sum of terms (units of 2**-53): about two roundings per term.
KL_TERM_ERROR_UNITS = 2.0


# ---------------------------------------------------------------- public functions

def cross_entropy(logits, target, axis=-1, reduction="mean", *, ignore_index=None):
    """Cross-entropy of softmax(logits) along axis against class indices or probabilities.

    target: integer class indices with the shape of logits without `axis` (range-checked [0, C)),
    or probabilities with the shape of logits (values in [0, 1], rows summing to 1 within
    PROBABILITY_SUM_TOLERANCE_EPS * eps of their dtype). ignore_index (class indices only), like
    torch: rows with that target get loss 0 and are left out of the mean.
    Formula: per row log1p(s) - d_t (indices) or -sum_i t_i log_softmax(x)_i with 0 * log 0 = 0
    (probabilities); every term is >= 0, so nothing cancels. Masked (-inf) target logit: +inf; all
    -inf row: +inf; +inf logits: log(k) at one of the k +inf entries, +inf elsewhere; NaN: NaN.
    reduction: "mean" (over non-ignored rows; NaN if none), "sum" or "none".
    Derivative: softmax - target (`cross_entropy_backward`).
    """
    logits, target, axis, reduction, hard = _check_ce(logits, target, axis, reduction, ignore_index)
    if _backend.is_tensor(logits):
        return _functions().CrossEntropy.apply(logits, target, axis, reduction, ignore_index)
    rows, valid, halves = _ce_rows_np(logits, target, axis, hard, ignore_index)
    return _finish_np(_reduce(rows, reduction, valid, halves), logits.dtype)


def kl_div(p, q, axis=-1, reduction="mean", log_input=False):
    """KL(p || q) = sum p log(p / q) along axis, per row; p and q probabilities (log-probabilities with log_input).

    Probabilities: KL = sum_i A_i + sum_i (p_i - q_i) with A_i = p_i log(p_i/q_i) - (p_i - q_i) >= 0.
    The A_i never cancel in the sum, and each is computed without cancellation: a series in
    u = (p - q)/(p + q) near p = q, a double-double log(p/q) further out. The second sum, where
    rounded rows that should sum to 1 leave ~n*eps, is exact (TwoSum of exact differences). Only
    rows where the two parts still cancel (KL itself ~n*eps) are re-evaluated with mpmath.
    Log-probabilities: terms exp(lp) (lp - lq) with lp - lq exact, rows whose terms cancel redone in
    np.longdouble or mpmath. p_i = 0 terms contribute 0; q_i = 0 with p_i > 0 gives +inf; NaN: NaN.
    reduction: "mean" averages the rows (torch's "batchmean"), "sum" adds them, "none" returns them.
    Derivatives: `kl_div_backward`.
    """
    p, q, axis, reduction, log_input = _check_kl(p, q, axis, reduction, log_input)
    if _backend.is_tensor(p):
        return _functions().KLDiv.apply(p, q, axis, reduction, log_input)
    rows = _kl_rows(p, q, axis, log_input)
    return _finish_np(reduce_loss(rows, reduction), p.dtype)


# ---------------------------------------------------------------- derivatives

def cross_entropy_backward(logits, target, grad_output, axis=-1, reduction="mean", ignore_index=None):
    """d loss / d logits = w (softmax(logits) * sum(t) - t) per row, in logits' dtype.

    w is grad_output (per row for "none"), divided by the number of non-ignored rows for "mean".
    For class indices, p_t - 1 is computed as expm1(log_softmax_t): when the prediction is
    confident, 1 - p_t is tiny and p_t rounded to 1 would lose it.
    """
    logits, target, axis, reduction, hard = _check_ce(logits, target, axis, reduction, ignore_index)
    g = _check_grad_output(logits, grad_output, reduction, _without(logits.shape, axis))
    return _ce_grad(logits, target, g, axis, reduction, hard, ignore_index)


def kl_div_backward(p, q, grad_output, axis=-1, reduction="mean", log_input=False):
    """(dp, dq) of KL(p || q): w (log(p/q) + 1) and -w p/q; with log_input w exp(lp)(lp - lq + 1) and -w exp(lp).

    w is grad_output (per row for "none"), divided by the number of rows for "mean". log(p/q) + 1
    is formed in double-double where log(p/q) ~ -1 would cancel. At p = 0: dp = -inf (the one-sided
    limit), dq = 0; with log_input, lp = -inf gives 0 for both.
    """
    p, q, axis, reduction, log_input = _check_kl(p, q, axis, reduction, log_input)
    g = _check_grad_output(p, grad_output, reduction, _without(p.shape, axis))
    return _kl_grad(p, q, g, axis, reduction, log_input)


# ---------------------------------------------------------------- argument checks

def _without(shape, axis):
    return tuple(shape[:axis]) + tuple(shape[axis + 1:])


def _check_ce(logits, target, axis, reduction, ignore_index):
    logits = validate.check_float_array(logits, "logits")
    axis = validate.normalize_axis(axis, logits.ndim)
    reduction = validate.check_reduction(reduction)
    if ignore_index is not None and (isinstance(ignore_index, (bool, np.bool_)) or not isinstance(ignore_index, (int, np.integer))):
        raise TypeError(f"ignore_index must be an int or None, got {type(ignore_index).__name__}")
    if isinstance(target, np.generic):
        target = np.asarray(target)
    if not (_backend.is_tensor(target) or isinstance(target, np.ndarray)):
        raise TypeError(f"target must be a NumPy array or a torch tensor, got {type(target).__name__}; "
                        f"wrap class indices with np.asarray(target) (probabilities with dtype=np.float64)")
    validate.check_same_kind(logits, target, ("logits", "target"))
    kind = _dtype_kind(target)
    if kind not in "iuf":
        raise TypeError(f"target must hold integer class indices or float probabilities, got dtype {target.dtype}; "
                        f"convert class indices with target.astype(np.int64) (or .long() for a tensor)")
    if kind == "f":
        _check_soft_target(logits, target, axis, ignore_index)
        return logits, target, axis, reduction, False
    _check_class_indices(logits, target, axis, ignore_index)
    return logits, target, axis, reduction, True


def _dtype_kind(a) -> str:
    if _backend.is_tensor(a):
        import torch

        if a.dtype == torch.bool or a.is_complex():
            return "b"
        return "f" if a.is_floating_point() else "i"
    return a.dtype.kind


def _check_class_indices(logits, target, axis, ignore_index):
    expected, n_classes = _without(logits.shape, axis), logits.shape[axis]
    if tuple(target.shape) != expected:
        raise ValueError(f"target (class indices) must have shape {expected}, the shape of logits {tuple(logits.shape)} "
                         f"without axis {axis}, got {tuple(target.shape)}; for probabilities pass a float target "
                         f"of shape {tuple(logits.shape)}")
    bad = (target < 0) | (target >= n_classes)
    if ignore_index is not None:
        bad &= target != ignore_index
    if validate.any_true(bad):
        value = int(target[bad].reshape(-1)[0])
        hint = " (pass ignore_index=-100 to skip padded rows)" if value == -100 and ignore_index is None else ""
        raise ValueError(f"target holds class index {value}, outside [0, {n_classes}) for logits with {n_classes} "
                         f"classes along axis {axis}{hint}")


def _check_soft_target(logits, target, axis, ignore_index):
    if ignore_index is not None:
        raise ValueError("ignore_index applies to class-index targets, but target holds probabilities; "
                         "drop ignore_index or give those rows zero weight")
    validate.check_same_shape(logits, target, ("logits", "target (probabilities)"))
    validate.check_in_unit_interval(target, "target")
    sums = _backend.to_working(target.detach() if _backend.is_tensor(target) else target).sum(axis)
    tolerance = PROBABILITY_SUM_TOLERANCE_EPS * float(_backend.finfo(target.dtype).eps)
    off = abs(sums - 1.0) > tolerance  # NaN rows compare False: they propagate instead
    if validate.any_true(off):
        value = float(sums[off].reshape(-1)[0])
        raise ValueError(f"target probabilities must sum to 1 along axis {axis} (within {tolerance:.2g}), "
                         f"a row sums to {value!r}; normalize it with target / target.sum({axis}, keepdims=True)")


def _check_kl(p, q, axis, reduction, log_input):
    p = validate.check_float_array(p, "p")
    q = validate.check_float_array(q, "q")
    validate.check_same_kind(p, q, ("p", "q"))
    validate.check_same_shape(p, q, ("p", "q"))
    axis = validate.normalize_axis(axis, p.ndim)
    reduction = validate.check_reduction(reduction)
    if not isinstance(log_input, (bool, np.bool_)):
        raise TypeError(f"log_input must be a bool, got {type(log_input).__name__}")
    for a, name in ((p, "p"), (q, "q")):
        if not log_input:
            validate.check_in_unit_interval(a, name)
        elif validate.any_true(a > 0):
            value = float(a[a > 0].reshape(-1)[0])
            raise ValueError(f"with log_input=True {name} must hold log-probabilities (<= 0), got a value "
                             f"{value!r}; pass probabilities with log_input=False")
    return p, q, axis, reduction, bool(log_input)


def _check_grad_output(like, grad_output, reduction, row_shape):
    if isinstance(grad_output, (int, float)) and not isinstance(grad_output, bool):  # a reduced loss's 1.0
        grad_output = lse._torch().tensor(float(grad_output), dtype=lse._torch().float64, device=like.device) \
            if _backend.is_tensor(like) else np.float64(grad_output)
    g = validate.check_float_array(grad_output, "grad_output")
    validate.check_same_kind(like, g, ("input", "grad_output"))
    expected = row_shape if reduction == "none" else ()
    if tuple(g.shape) != expected:
        raise ValueError(f"grad_output must have the loss's shape {expected} for reduction={reduction!r}, "
                         f"got {tuple(g.shape)}")
    return g


# ---------------------------------------------------------------- reductions and results

def _reduce(rows, reduction, valid, halves=None):
    """Reduce float64 per-row losses; `valid` (None: all rows) masks ignored rows out of the mean.

    halves (see `_fix_overflow`) holds rows / 2 exactly where a row overflowed: their mean may be in range.
    """
    if reduction != "mean" or (valid is None and halves is None):
        return reduce_loss(rows, reduction)
    count = rows.shape[0] if valid is None else valid.sum()
    if halves is not None:
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            return 2 * (halves / count).sum()
    total = rows.sum()
    return total / count if _backend.is_tensor(rows) else (total / count if count else np.float64("nan"))


def _finish_np(values, dtype):
    with np.errstate(over="ignore"):  # a loss beyond the dtype's range rounds to inf
        return lse._scalar_if_0d(_backend.from_working(values, dtype))


def _row_weights(g, reduction, n_rows, valid):
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


# ---------------------------------------------------------------- cross-entropy: rows

def _ce_rows_np(logits, target, axis, hard, ignore_index):
    """float64 losses per row (shape of logits without axis) and the non-ignored mask (None: all rows)."""
    x2, moved = lse._as_rows_np(logits, axis)
    if not hard:
        t2, _ = lse._as_rows_np(target, axis)
        log_p = np.empty(x2.shape)
        lse._kernel_np(x2, "log_softmax", log_p)
        ce, halves = _fix_overflow(_soft_ce(t2, log_p), x2, t2)
        return ce.reshape(moved[:-1]), None, halves
    t, valid = _flat_targets(target, ignore_index)
    m, log_sum = lse._kernel_np(x2, None)
    ce = _ce_from_parts(x2[np.arange(x2.shape[0]), t], m, log_sum, x2.dtype == np.float64)
    limit = np.flatnonzero(np.isinf(m))
    if limit.size:
        log_p = lse._limit_rows(np.asarray(x2[limit], dtype=np.float64), "log_softmax")
        ce[limit] = -log_p[np.arange(limit.size), t[limit]]
    if valid is not None:
        ce[~valid] = 0.0
    ce, halves = _fix_overflow(ce, x2, t)
    return ce.reshape(moved[:-1]), valid, halves


def _numpy_target(target):
    """A NumPy view of a CPU target tensor (class indices as they are, probabilities as float)."""
    return lse.numpy_view(target) if target.is_floating_point() else target.detach().numpy()


def _flat_targets(target, ignore_index):
    """Class indices flattened (ignored entries pointing at class 0) and the non-ignored mask."""
    t = target.reshape(-1)
    if ignore_index is None:
        return (t.long() if _backend.is_tensor(t) else t.astype(np.intp)), None
    valid = t != ignore_index
    t = t.where(valid, 0).long() if _backend.is_tensor(t) else np.where(valid, t, 0).astype(np.intp)
    return t, valid


def _ce_from_parts(x_t, m, log_sum, wide):
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


def _soft_ce(t, log_p):
    """-sum_i t_i log_p_i per row with 0 * log 0 = 0 (a masked entry with zero target weight adds nothing)."""
    t = _backend.to_working(t)
    if _backend.is_tensor(t):
        return -((t * log_p).where(t != 0, 0.0)).sum(-1)
    with np.errstate(invalid="ignore"):  # 0 * -inf, replaced by 0 below
        terms = t * log_p
    return -np.where(t != 0, terms, 0.0).sum(-1)


def _fix_overflow(ce, x2, target):
    """Rows of float64 logits whose loss overflowed on the way (x_i - m beyond the range: logits near +-max).

    Their half loss, sum_i t_i (log1p(s)/2 - (x_i/2 - m/2)), is recomputed from halved logits (exact
    scalings) and the loss set to twice it (inf only if the loss itself is beyond the range). Returns
    (ce, halves): halves is ce / 2 with those rows exact, for a mean that is back in range, or None
    when no row overflowed. target: flat class indices or 2-D probability rows.
    """
    torch = lse._torch() if _backend.is_tensor(ce) else None
    if x2.dtype != (torch.float64 if torch else np.float64):  # narrower logits cannot overflow float64
        return ce, None
    rows = _exact.flagged(ce == math.inf)
    if not rows.size:
        return ce, None
    x = _exact.rows_to_numpy(x2, rows)
    m, log_sum = lse._kernel_np(x, None)
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


def _ce_rows_torch(logits, target, dim, hard, ignore_index):
    """float64 losses per row (flat) and the non-ignored mask, for tensors."""
    torch = lse._torch()
    x2, outer = _exact.flatten_rows(logits, dim)
    if not hard:
        t2, _ = _exact.flatten_rows(target, dim)
        ce, halves = _fix_overflow(_soft_ce(t2, lse._log_softmax64_torch(x2, 1)), x2, t2)
        return ce, None, halves
    t, valid = _flat_targets(target, ignore_index)
    if logits.dtype == torch.float64:
        ce = _ce_exact_torch(x2, t)
    else:
        # torch's fused float64 kernel is within ~2**-53 absolute: rows below TORCH_FUSED_MIN_LOG_SUM
        # (and NaN rows, which may be limit rows) take the log1p path
        ce = torch.nn.functional.cross_entropy(x2.double(), t, reduction="none")
        redo = ~(ce >= lse.TORCH_FUSED_MIN_LOG_SUM)
        if bool(redo.any()):
            ce = ce.where(~redo, _ce_exact_torch(x2, t))
    if valid is not None:
        ce = ce.where(valid, 0.0)
    ce, halves = _fix_overflow(ce, x2, t)
    return ce, valid, halves


def _ce_exact_torch(x2, t):
    """log1p(s) - d_t per row of a 2-D tensor (any dtype), limit rows by convention."""
    m, _, hi, lo, e = lse._parts_torch(x2, 1)
    log_sum = e.sum(1).log1p_().where(~m[:, 0].isinf(), 0.0)
    rows = t[:, None]
    ce = (log_sum - hi.gather(1, rows)[:, 0])
    if lo is not None:
        ce = ce - lo.gather(1, rows)[:, 0]
    limit = m[:, 0].isinf()
    if bool(limit.any()):
        ce = ce.where(~limit, -lse._limit_rows(x2.double(), "log_softmax").gather(1, rows)[:, 0])
    return ce


# ---------------------------------------------------------------- cross-entropy: gradient

def _ce_grad(logits, target, g, axis, reduction, hard, ignore_index, ce_rows=None, out_dtype=None):
    """dlogits in logits' dtype (or out_dtype); ce_rows (float64 per-row losses, flat) saves recomputing log_softmax_t."""
    if _backend.is_tensor(logits):
        torch = lse._torch()
        if lse.on_numpy(logits) and not torch.is_grad_enabled():
            rows = None if ce_rows is None else ce_rows.numpy()
            dx = _ce_grad(lse.numpy_view(logits), _numpy_target(target), lse.numpy_view(g), axis, reduction, hard,
                          ignore_index, rows, np.float64)
            return lse.from_numpy(dx, logits.dtype)
        return _ce_grad_torch(logits, target, g, axis, reduction, hard, ignore_index, ce_rows)
    x2, moved = lse._as_rows_np(logits, axis)
    n_rows = x2.shape[0]
    p = np.empty(x2.shape)
    m, log_sum = lse._kernel_np(x2, "softmax", p)
    if hard:
        t, valid = _flat_targets(target, ignore_index)
        w = _row_weights(g, reduction, n_rows, valid)
        rows = np.arange(n_rows)
        if ce_rows is None:
            ce_rows = _ce_from_parts(x2[rows, t], m, log_sum, x2.dtype == np.float64)
        with np.errstate(invalid="ignore"):
            at_t = np.where(np.isinf(m), p[rows, t] - 1.0, np.expm1(-ce_rows))  # p_t - 1
        p *= w[:, None]
        p[rows, t] = at_t * w
    else:
        t2 = _backend.to_working(lse._as_rows_np(target, axis)[0])
        w = _row_weights(g, reduction, n_rows, None)
        p *= t2.sum(1, keepdims=True)
        p -= t2
        p *= w[:, None]
    dx = np.moveaxis(p.reshape(moved), -1, axis)
    return _finish_np(dx, logits.dtype if out_dtype is None else out_dtype)


def _ce_grad_torch(logits, target, g, dim, reduction, hard, ignore_index, ce_rows):
    torch = lse._torch()
    x2, outer = _exact.flatten_rows(logits, dim)
    n_rows = x2.shape[0]
    building = torch.is_grad_enabled()  # double backward: differentiable formulas
    p = lse._softmax64(x2, 1)
    if hard:
        t, valid = _flat_targets(target, ignore_index)
        w = _row_weights(g, reduction, n_rows, valid)
        if building or ce_rows is None:
            log_p_t = lse.log_softmax(x2, 1).double().gather(1, t[:, None])[:, 0]
        else:
            log_p_t = -ce_rows
        p = p.scatter(1, t[:, None], log_p_t.expm1()[:, None])  # p_t - 1 without cancellation
        dx = p * w[:, None]
    else:
        t2 = _backend.to_working(_exact.flatten_rows(target, dim)[0])
        w = _row_weights(g, reduction, n_rows, None)
        dx = (p * t2.sum(1, keepdim=True) - t2) * w[:, None]
    shape = tuple(outer) + (logits.shape[dim],)
    return dx.reshape(shape).movedim(-1, dim).to(logits.dtype)


# ---------------------------------------------------------------- KL divergence: rows

def _kl_rows(p, q, axis, log_input):
    """float64 KL per row (shape of p without axis), NumPy or torch; cancelling rows redone exactly."""
    p2, outer = _exact.flatten_rows(p, axis)
    q2, _ = _exact.flatten_rows(q, axis)
    wide = p.dtype == (lse._torch().float64 if _backend.is_tensor(p) else np.float64)
    if _backend.is_tensor(p):
        value, scale = _kl_row_sums(_backend.to_working(p2), _backend.to_working(q2), log_input, wide)
    else:
        value, scale = _kl_row_sums_blocked(p2, q2, log_input, wide)
    limit = lse._cancellation_limit(p.dtype, 53, KL_TERM_ERROR_UNITS)
    with np.errstate(invalid="ignore"):
        cancels = scale / limit > abs(value)  # NaN and inf rows compare False
    rows = _exact.flagged(cancels)
    if rows.size:
        fixed = _kl_exact_rows(_exact.rows_to_numpy(p2, rows), _exact.rows_to_numpy(q2, rows), log_input, p.dtype)
        value = _exact.put_rows(value.clone() if _backend.is_tensor(value) else value, rows, fixed)
    return value.reshape(outer)


def _kl_row_sums(p, q, log_input, wide):
    """(value, scale) per row of 2-D float64 p, q: value the KL, scale the size of what adds up in it."""
    if log_input:
        return _kl_log_terms(p, q)
    excess, d_hi, d_lo = _kl_excess_terms(p, q, wide)
    a = excess.sum(-1)
    b = _exact.sum2(_cat(d_hi, d_lo), -1, guard=False)  # p - q, summed exactly enough
    return a + b, a + abs(b)


def _kl_row_sums_blocked(p2, q2, log_input, wide):
    """`_kl_row_sums` over cache-sized blocks of rows of 2-D NumPy arrays (any float dtype)."""
    n_rows, n = p2.shape
    value, scale = np.empty(n_rows), np.empty(n_rows)
    per_block = max(1, lse.BLOCK // max(n, 1))
    for start in range(0, n_rows, per_block):
        stop = min(start + per_block, n_rows)
        rows = slice(start, stop)
        value[rows], scale[rows] = _kl_row_sums(np.asarray(p2[rows], np.float64), np.asarray(q2[rows], np.float64),
                                                log_input, wide)
    return value, scale


def _cat(a, b):
    return lse._torch().cat([a, b], -1) if _backend.is_tensor(a) else np.concatenate([a, b], -1)


def _kl_excess_terms(p, q, wide):
    """A = p log(p/q) - (p - q) >= 0 elementwise, and p - q = d_hi + d_lo exactly (float64, NumPy or torch).

    wide: the inputs were float64, whose far terms need log(p/q) in double-double; narrower inputs
    have 29 spare bits in float64 for the <= 3.6x cancellation there.
    """
    s, s_lo = _exact.two_sum(p, q, guard=False)  # probabilities: no overflow
    d_hi, d_lo = _exact.two_sum(p, -q, guard=False)
    xp = _xp(p)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore", under="ignore"):
        u = d_hi / s
        u = u - u * (s_lo / s)  # d / (s + s_lo): p + q exactly
        close = abs(u) <= KL_SERIES_MAX_U
        far = _kl_far(p, q, d_hi, d_lo) if wide else _kl_plain(p, q, d_hi)
        excess = xp.where(close, _kl_series(u, d_hi, p), far)
        excess = xp.where(s == 0, xp.zeros_like(excess), excess)  # p = q = 0: nothing
    return excess, d_hi, d_lo


def _kl_series(u, d, p):
    """u (p - q) + 2 p u^3 P(u^2), P(z) = sum_k z^k / (2k + 3): the excess p log(p/q) - (p - q) near p = q."""
    z = u * u
    poly = 0.0 * z + 1.0 / (2 * KL_SERIES_TERMS + 1)
    for k in range(KL_SERIES_TERMS - 2, -1, -1):
        poly = poly * z + 1.0 / (2 * k + 3)
    return u * d + 2.0 * p * (u * z) * poly


def _kl_far(p, q, d_hi, d_lo):
    """p log(p/q) - (p - q) with log(p/q) in double-double where its rounding would show; p = 0 gives q."""
    xp = _xp(p)
    ratio = p / q
    in_range = (p >= KL_DD_MIN_ENTRY) & (q >= KL_DD_MIN_ENTRY) & \
        (ratio >= 2.0 ** -KL_DD_MAX_LOG2_RATIO) & (ratio <= 2.0 ** KL_DD_MAX_LOG2_RATIO)
    safe_p = xp.where(in_range, p, xp.ones_like(p))
    safe_q = xp.where(in_range, q, xp.ones_like(q))
    l_hi, l_lo = _exact.log_ratio_dd(safe_p, safe_q)
    prod, prod_lo = _exact.two_prod(safe_p, l_hi)
    dd = (prod - d_hi) + ((prod_lo + safe_p * l_lo) - d_lo)
    return xp.where(in_range, dd, _kl_plain(p, q, d_hi))


def _kl_plain(p, q, d):
    """p (log p - log q) - (p - q), with 0 log 0 = 0: where the cancellation is mild or the type wide enough."""
    xp = _xp(p)
    return xp.where(p == 0, q, p * (xp.log(p) - xp.log(q)) - d)


def _kl_log_terms(lp, lq):
    """(sum, sum of |terms|) of exp(lp) (lp - lq) per row, lp - lq exact (TwoSum); lp = -inf terms are 0."""
    xp = _xp(lp)
    with np.errstate(invalid="ignore", over="ignore"):
        hi, lo = _exact.two_diff(lp, lq)
        w = xp.exp(lp)
        terms = w * hi + w * lo
        terms = xp.where((lp == -math.inf) & ~xp.isnan(lq), xp.zeros_like(terms), terms)
    return terms.sum(-1), abs(terms).sum(-1)


def _xp(a):
    return lse._torch() if _backend.is_tensor(a) else np


def _kl_exact_rows(p_rows, q_rows, log_input, dtype):
    """KL of cancelling rows (float64 NumPy): np.longdouble for log inputs when enough, else mpmath."""
    out = np.empty(p_rows.shape[0])
    pending = np.arange(p_rows.shape[0])
    if log_input and _exact.LONGDOUBLE is not None:
        lp, lq = p_rows.astype(_exact.LONGDOUBLE), q_rows.astype(_exact.LONGDOUBLE)
        value, scale = _kl_log_terms(lp, lq)
        limit = lse._cancellation_limit(dtype, _exact.LONGDOUBLE_BITS, KL_TERM_ERROR_UNITS)
        ok = ~(scale / limit > abs(value))
        out[ok] = value[ok].astype(np.float64)
        pending = np.flatnonzero(~ok)
    bits = lse._precision_bits(dtype) + 3
    for i in pending:
        row = functools.partial(_kl_mp, p_rows[i].tolist(), q_rows[i].tolist(), log_input)
        out[i] = _exact.to_float64(_exact.adaptive_mp(row, bits))
    return out


def _kl_mp(ps, qs, log_input):
    """(sum p log(p/q), sum |terms|) at the current mpmath precision; inputs taken exactly."""
    import mpmath

    terms = []
    for a, b in zip(ps, qs):
        if log_input:
            terms.append(mpmath.exp(a) * mpmath.fsub(a, b, exact=True) if a != -math.inf else mpmath.mpf(0))
        elif a != 0:
            terms.append(mpmath.mpf(a) * mpmath.log(mpmath.mpf(a) / b) if b != 0 else mpmath.inf)
    return mpmath.fsum(terms), mpmath.fsum(terms, absolute=True)


# ---------------------------------------------------------------- KL divergence: gradient

def _kl_grad(p, q, g, axis, reduction, log_input):
    if _backend.is_tensor(p) and lse.on_numpy(p) and not lse._torch().is_grad_enabled():
        views = [lse.numpy_view(a) for a in (p, q, g)]
        dp, dq = _kl_grad(*(v.astype(np.float64) for v in views), axis, reduction, log_input)
        return lse.from_numpy(dp, p.dtype), lse.from_numpy(dq, q.dtype)
    xp = _xp(p)
    p2, outer = _exact.flatten_rows(p, axis)
    q2, _ = _exact.flatten_rows(q, axis)
    p64, q64 = _backend.to_working(p2), _backend.to_working(q2)
    w = _row_weights(g, reduction, p64.shape[0], None)[:, None]
    building = xp is not np and lse._torch().is_grad_enabled()  # double backward: differentiable formulas
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        if building:
            e = p64.exp() if log_input else None
            dp = e * (p64 - q64 + 1.0) if log_input else (p64.log() - q64.log()) + 1.0
            dq = -e if log_input else -(p64 / q64)
        elif log_input:
            hi, lo = _exact.two_diff(p64, q64)
            e = xp.exp(p64)
            dp = e * ((hi + 1.0) + lo)
            dp = xp.where(e == 0, xp.zeros_like(dp), dp)
            dq = -e
        else:
            l_hi, l_lo = _log_ratio(p64, q64)
            dp = (l_hi + 1.0) + l_lo
            dq = xp.where(p64 == 0, xp.zeros_like(p64), -(p64 / q64))
    shape = tuple(outer) + (p.shape[axis],)
    results = []
    for d, like in ((dp * w, p), (dq * w, q)):
        d = d.reshape(shape)
        d = d.movedim(-1, axis) if xp is not np else np.moveaxis(d, -1, axis)
        results.append(d.to(like.dtype) if xp is not np else _finish_np(d, like.dtype))
    return tuple(results)


def _log_ratio(p, q):
    """log(p/q) as (hi, lo): double-double where p, q allow it, log1p((p - q)/q) near 1, log p - log q at the extremes."""
    xp = _xp(p)
    ratio = p / q
    ok = (p >= KL_DD_MIN_ENTRY) & (q >= KL_DD_MIN_ENTRY) & (ratio >= 2.0 ** -KL_DD_MAX_LOG2_RATIO) & \
        (ratio <= 2.0 ** KL_DD_MAX_LOG2_RATIO)
    hi, lo = _exact.log_ratio_dd(xp.where(ok, p, xp.ones_like(p)), xp.where(ok, q, xp.ones_like(q)))
    plain = xp.log(p) - xp.log(q)
    return xp.where(ok, hi, plain), xp.where(ok, lo, xp.zeros_like(lo))


# ---------------------------------------------------------------- torch autograd Functions

@functools.cache
def _functions():
    """The autograd Functions, built on first use (a tensor exists, so torch is imported already)."""
    torch = lse._torch()

    class CrossEntropy(torch.autograd.Function):
        @staticmethod
        def forward(ctx, logits, target, dim, reduction, ignore_index):
            hard = not target.is_floating_point()
            ctx.args = (dim, reduction, hard, ignore_index)
            if lse.on_numpy(logits):
                rows, valid, halves = _ce_rows_np(lse.numpy_view(logits), _numpy_target(target), dim, hard, ignore_index)
                ctx.save_for_backward(logits, target, torch.from_numpy(rows.reshape(-1)))
                return lse.from_numpy(_reduce(rows, reduction, valid, halves), logits.dtype)
            rows, valid, halves = _ce_rows_torch(logits, target, dim, hard, ignore_index)
            ctx.save_for_backward(logits, target, rows)
            loss = _reduce(rows, reduction, valid, halves)
            return loss.reshape(_without(logits.shape, dim)).to(logits.dtype) if reduction == "none" else \
                loss.to(logits.dtype)

        @staticmethod
        def backward(ctx, grad_output):
            logits, target, rows = ctx.saved_tensors
            dim, reduction, hard, ignore_index = ctx.args
            dx = dt = None
            if ctx.needs_input_grad[0]:
                dx = _ce_grad(logits, target, grad_output, dim, reduction, hard, ignore_index, ce_rows=rows)
            if ctx.needs_input_grad[1] and not hard:  # d/dt of -sum t log_softmax = -w log_softmax
                x2, outer = _exact.flatten_rows(logits, dim)
                w = _row_weights(grad_output, reduction, x2.shape[0], None)[:, None]
                log_p = lse._log_softmax64_torch(x2, 1)
                shape = tuple(outer) + (logits.shape[dim],)
                dt = (-w * log_p).reshape(shape).movedim(-1, dim).to(target.dtype)
            return dx, dt, None, None, None

    class KLDiv(torch.autograd.Function):
        @staticmethod
        def forward(ctx, p, q, dim, reduction, log_input):
            ctx.save_for_backward(p, q)
            ctx.args = (dim, reduction, log_input)
            if lse.on_numpy(p):
                rows = _kl_rows(lse.numpy_view(p), lse.numpy_view(q), dim, log_input)
                return lse.from_numpy(reduce_loss(rows, reduction), p.dtype)
            return reduce_loss(_kl_rows(p, q, dim, log_input), reduction).to(p.dtype)

        @staticmethod
        def backward(ctx, grad_output):
            p, q = ctx.saved_tensors
            dim, reduction, log_input = ctx.args
            dp, dq = _kl_grad(p, q, grad_output, dim, reduction, log_input)
            return dp, dq, None, None, None

    return types.SimpleNamespace(CrossEntropy=CrossEntropy, KLDiv=KLDiv)
