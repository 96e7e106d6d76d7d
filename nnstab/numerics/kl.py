"""KL divergence KL(p || q) of categorical distributions (and its derivatives), NumPy or torch, to the last bit.

KL(p || q) = sum p log(p/q) is split into terms that cannot cancel plus an exact sum (see `kl_div`),
computed in float64 and rounded once to the input dtype. The math is written once for NumPy arrays
and tensors; as for the softmax family, CPU tensors run it on zero-copy NumPy views (`on_numpy`),
and the tensor function is a torch.autograd.Function whose backward is `kl_div_backward`.
"""
from __future__ import annotations

import functools
import math

import numpy as np

from nnstab import _backend
from nnstab.numerics import _exact, validate
from nnstab.numerics._cancellation import cancellation_limit, precision_bits
from nnstab.numerics._loss_rows import check_grad_output, finish_np, row_weights, without
from nnstab.numerics._softmax_kernels import BLOCK
from nnstab.numerics.softmax_family import from_numpy, numpy_view, on_numpy
from nnstab.numerics.reduce import reduce_loss
from nnstab.numerics._lazy import lazy_module

_fused_kl = lazy_module("nnstab.numerics._fused_kl")  # numba is imported with the first fused loop

# The series and double-double ranges of the KL terms (KL_SERIES_*, KL_DD_*) are constants of the
# fused loops, nnstab.numerics._fused_kl (numba caches compiled code with the values of its own module only).

# Relative error of a row's sum of terms (units of 2**-53): about two roundings per term.
KL_TERM_ERROR_UNITS = 2.0
# Narrow inputs first try the plain terms p log(p/q) in float64. Their error, in units of 2**-53 |term|:
# the product rounds once and NumPy's log errs by up to 4 ULP of float64 (2 in practice), 8 in all with margin.
KL_PLAIN_LOG_ERROR_UNITS = 8.0
# The gradient's log(p/q) + 1 from the plain float64 log errs by about 3 2**-53 absolute; where it is at least
# 2**-20 that is below 2**-31 relative, far inside a float32 ULP; closer to 0 it is redone in double-double.
KL_GRAD_PLAIN_MIN = 2.0 ** -20
# A plain row is kept when its error bound is below 2**-27 of its value: a quarter of a float32 ULP
# (2**-24 relative at worst), so the one final rounding keeps it within the 1-ULP bound.
KL_PLAIN_MARGIN_BITS = 27


# ---------------------------------------------------------------- public functions

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
        return _kl_div_function().apply(p, q, axis, reduction, log_input)
    rows = _kl_rows(p, q, axis, log_input)
    return finish_np(reduce_loss(rows, reduction), p.dtype)


def kl_div_backward(p, q, grad_output, axis=-1, reduction="mean", log_input=False):
    """(dp, dq) of KL(p || q): w (log(p/q) + 1) and -w p/q; with log_input w exp(lp)(lp - lq + 1) and -w exp(lp).

    w is grad_output (per row for "none"), divided by the number of rows for "mean". log(p/q) + 1
    is formed in double-double where log(p/q) ~ -1 would cancel. At p = 0: dp = -inf (the one-sided
    limit), dq = 0; with log_input, lp = -inf gives 0 for both.
    """
    p, q, axis, reduction, log_input = _check_kl(p, q, axis, reduction, log_input)
    g = check_grad_output(p, grad_output, reduction, without(p.shape, axis))
    return _kl_grad(p, q, g, axis, reduction, log_input)


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
            values = a.detach() if _backend.is_tensor(a) else a  # float() of a tensor in a graph warns
            value = float(values[values > 0].reshape(-1)[0])
            raise ValueError(f"with log_input=True {name} must hold log-probabilities (<= 0), got a value "
                             f"{value!r}; pass probabilities with log_input=False")
    return p, q, axis, reduction, bool(log_input)


# ---------------------------------------------------------------- rows

def _kl_rows(p, q, axis, log_input):
    """float64 KL per row (shape of p without axis), NumPy or torch; cancelling rows redone exactly."""
    p2, outer = _exact.flatten_rows(p, axis)
    q2, _ = _exact.flatten_rows(q, axis)
    wide = p.dtype == _xp(p).float64
    if _backend.is_tensor(p):
        value, scale = _kl_row_sums(_backend.to_working(p2), _backend.to_working(q2), log_input, wide)
    elif not (log_input or wide or q.dtype == np.float64):   # narrow p and q: p / q cannot overflow float64
        value, scale = _kl_narrow_rows(p2, q2)
    else:
        value, scale = _kl_row_sums_blocked(p2, q2, log_input, wide)
    limit = cancellation_limit(p.dtype, 53, KL_TERM_ERROR_UNITS)
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
    """`_kl_row_sums` over cache-sized blocks of rows of 2-D NumPy arrays (any float dtype).

    Probabilities take the fused loop `_fused_kl.kl_excess_rows` (the same terms as `_kl_excess_terms`,
    with log(p/q) in double-double wherever it is far from 0, for every input dtype).
    """
    n_rows, n = p2.shape
    value, scale = np.empty(n_rows), np.empty(n_rows)
    per_block = max(1, BLOCK // max(n, 1))
    shape = (min(per_block, n_rows), n)
    scratch = None if log_input else (np.empty(shape), np.empty(shape), np.empty(shape, np.int32), np.empty(shape))
    for start in range(0, n_rows, per_block):
        stop = min(start + per_block, n_rows)
        rows = slice(start, stop)
        p_rows, q_rows = np.asarray(p2[rows], np.float64), np.asarray(q2[rows], np.float64)
        if log_input:
            value[rows], scale[rows] = _kl_row_sums(p_rows, q_rows, log_input, wide)
            continue
        ratio, mant, expo, terms = (a[: stop - start] for a in scratch)
        # q = 0 (p/0, 0/0) or a ratio beyond float64 (p / subnormal q): the loop redoes those terms apart
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            np.divide(p_rows, q_rows, out=ratio)
        np.frexp(ratio, out=(mant, expo))
        mass_diff = np.empty(stop - start)
        _fused_kl.kl_excess_rows(np.ascontiguousarray(p_rows), np.ascontiguousarray(q_rows), ratio, mant, expo, terms,
                              mass_diff)
        a = terms.sum(-1)  # terms >= 0: the pairwise sum keeps its digits
        value[rows], scale[rows] = a + mass_diff, a + np.abs(mass_diff)
    return value, scale


def _kl_narrow_rows(p2, q2):
    """(value, scale) per row of narrow NumPy probabilities: the plain sum p log(p/q) in float64 where it is
    provably within half a narrow ULP, the cancellation-free `_kl_row_sums` for the other rows.

    The plain terms err by at most 2**-53 (p + KL_PLAIN_LOG_ERROR_UNITS |t|) each (the rounded ratio,
    the log, the product) and their sum by n 2**-53 sum |t|; a row is kept when that stays below
    2**-KL_PLAIN_MARGIN_BITS of its value, which fails only where the terms cancel (p close to q).
    """
    n_rows, n = p2.shape
    value, scale, mass = np.empty(n_rows), np.empty(n_rows), np.empty(n_rows)
    per_block = max(1, BLOCK // max(n, 1))
    scratch = [np.empty((min(per_block, n_rows), n)) for _ in range(3)]
    for start in range(0, n_rows, per_block):
        stop = min(start + per_block, n_rows)
        a, b, log_ratio = (buf[: stop - start] for buf in scratch)
        np.copyto(a, p2[start:stop])
        np.copyto(b, q2[start:stop])
        with np.errstate(divide="ignore", invalid="ignore"):  # p/0 = inf, 0/0 = NaN: the p = 0 terms are redone
            np.divide(a, b, out=log_ratio)
            np.log(log_ratio, out=log_ratio)
        _fused_kl.kl_plain_rows(a, b, log_ratio, value[start:stop], scale[start:stop], mass[start:stop])
    with np.errstate(invalid="ignore", over="ignore"):  # inf and NaN rows compare False: they are final
        bound = (mass + (KL_PLAIN_LOG_ERROR_UNITS + n) * scale) * 2.0 ** -53
        doubtful = np.flatnonzero(bound > np.abs(value) * 2.0 ** -KL_PLAIN_MARGIN_BITS)
    if doubtful.size:
        value[doubtful], scale[doubtful] = _kl_row_sums_blocked(p2[doubtful], q2[doubtful], False, False)
    return value, scale


def _cat(a, b):
    return _xp(a).cat([a, b], -1) if _backend.is_tensor(a) else np.concatenate([a, b], -1)


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
        close = abs(u) <= _fused_kl.KL_SERIES_MAX_U
        far = _kl_far(p, q, d_hi, d_lo) if wide else _kl_plain(p, q, d_hi)
        excess = xp.where(close, _kl_series(u, d_hi, p), far)
        excess = xp.where(s == 0, xp.zeros_like(excess), excess)  # p = q = 0: nothing
    return excess, d_hi, d_lo


def _kl_series(u, d, p):
    """u (p - q) + 2 p u^3 P(u^2), P(z) = sum_k z^k / (2k + 3): the excess p log(p/q) - (p - q) near p = q."""
    z = u * u
    poly = 0.0 * z + 1.0 / (2 * _fused_kl.KL_SERIES_TERMS + 1)
    for k in range(_fused_kl.KL_SERIES_TERMS - 2, -1, -1):
        poly = poly * z + 1.0 / (2 * k + 3)
    return u * d + 2.0 * p * (u * z) * poly


def _kl_far(p, q, d_hi, d_lo):
    """p log(p/q) - (p - q) with log(p/q) in double-double where its rounding would show; p = 0 gives q."""
    xp = _xp(p)
    ratio = p / q
    in_range = (p >= _fused_kl.KL_DD_MIN_ENTRY) & (q >= _fused_kl.KL_DD_MIN_ENTRY) & \
        (ratio >= 2.0 ** -_fused_kl.KL_DD_MAX_LOG2_RATIO) & (ratio <= 2.0 ** _fused_kl.KL_DD_MAX_LOG2_RATIO)
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
    """The array module of a: torch for a tensor (imported already), else NumPy."""
    return _backend.torch_module() if _backend.is_tensor(a) else np


def _kl_exact_rows(p_rows, q_rows, log_input, dtype):
    """KL of cancelling rows (float64 NumPy): np.longdouble for log inputs when enough, else mpmath."""
    out = np.empty(p_rows.shape[0])
    pending = np.arange(p_rows.shape[0])
    if log_input and _exact.LONGDOUBLE is not None:
        lp, lq = p_rows.astype(_exact.LONGDOUBLE), q_rows.astype(_exact.LONGDOUBLE)
        value, scale = _kl_log_terms(lp, lq)
        limit = cancellation_limit(dtype, _exact.LONGDOUBLE_BITS, KL_TERM_ERROR_UNITS)
        ok = ~(scale / limit > abs(value))
        out[ok] = value[ok].astype(np.float64)
        pending = np.flatnonzero(~ok)
    bits = precision_bits(dtype) + 3
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


# ---------------------------------------------------------------- gradient

def _kl_grad(p, q, g, axis, reduction, log_input):
    if _backend.is_tensor(p) and on_numpy(p) and not _backend.torch_module().is_grad_enabled():
        views = [numpy_view(a) for a in (p, q, g)]
        if not log_input and p.dtype == q.dtype == _backend.torch_module().float32:
            dp, dq = _kl_grad_narrow_np(*views, axis, reduction)
        else:
            dp, dq = _kl_grad(*(v.astype(np.float64) for v in views), axis, reduction, log_input)
        return from_numpy(dp, p.dtype), from_numpy(dq, q.dtype)
    if not (log_input or _backend.is_tensor(p)) and p.dtype == q.dtype == np.float32:
        return _kl_grad_narrow_np(p, q, g, axis, reduction)
    xp = _xp(p)
    p2, outer = _exact.flatten_rows(p, axis)
    q2, _ = _exact.flatten_rows(q, axis)
    p64, q64 = _backend.to_working(p2), _backend.to_working(q2)
    w = row_weights(g, reduction, p64.shape[0], None)[:, None]
    building = xp is not np and xp.is_grad_enabled()  # double backward: differentiable formulas
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
        results.append(d.to(like.dtype) if xp is not np else finish_np(d, like.dtype))
    return tuple(results)


def _kl_grad_narrow_np(p, q, g, axis, reduction):
    """(dp, dq) of float32 NumPy probabilities: log(p/q) + 1 from the plain float64 log (within 2**-31 of
    it wherever |log(p/q) + 1| >= KL_GRAD_PLAIN_MIN), the few entries closer to -1 in double-double."""
    p2, outer = _exact.flatten_rows(p, axis)
    q2, _ = _exact.flatten_rows(q, axis)
    n_rows, n = p2.shape
    w = row_weights(g, reduction, n_rows, None)
    dp, dq = np.empty(p2.shape, p.dtype), np.empty(q2.shape, q.dtype)
    per_block = max(1, BLOCK // max(n, 1))
    scratch = [np.empty((min(per_block, n_rows), n)) for _ in range(3)]
    for start in range(0, n_rows, per_block):
        stop = min(start + per_block, n_rows)
        a, ratio, log_ratio = (buf[: stop - start] for buf in scratch)
        np.copyto(a, p2[start:stop])
        with np.errstate(divide="ignore", invalid="ignore"):  # p/0 = inf, 0/0 = NaN, log 0 = -inf: the limits
            np.divide(a, q2[start:stop], out=ratio, dtype=np.float64)
            np.log(ratio, out=log_ratio)
        flagged = _fused_kl.kl_grad_plain_rows(a, ratio, log_ratio, w[start:stop], dp[start:stop], dq[start:stop],
                                            KL_GRAD_PLAIN_MIN)
        if flagged:
            rows, cols = np.nonzero(np.abs(log_ratio + 1.0) < KL_GRAD_PLAIN_MIN)
            pp, qq = a[rows, cols], np.asarray(q2[start:stop][rows, cols], np.float64)
            l_hi, l_lo = _log_ratio(pp, qq)
            dp[start + rows, cols] = ((l_hi + 1.0) + l_lo) * w[start + rows]
    results = []
    for d in (dp, dq):
        results.append(np.moveaxis(d.reshape(tuple(outer) + (n,)), -1, axis))
    return tuple(results)


def _log_ratio(p, q):
    """log(p/q) as (hi, lo): double-double where p, q allow it, log1p((p - q)/q) near 1, log p - log q at the extremes."""
    xp = _xp(p)
    ratio = p / q
    ok = (p >= _fused_kl.KL_DD_MIN_ENTRY) & (q >= _fused_kl.KL_DD_MIN_ENTRY) & (ratio >= 2.0 ** -_fused_kl.KL_DD_MAX_LOG2_RATIO) & \
        (ratio <= 2.0 ** _fused_kl.KL_DD_MAX_LOG2_RATIO)
    hi, lo = _exact.log_ratio_dd(xp.where(ok, p, xp.ones_like(p)), xp.where(ok, q, xp.ones_like(q)))
    plain = xp.log(p) - xp.log(q)
    return xp.where(ok, hi, plain), xp.where(ok, lo, xp.zeros_like(lo))


# ---------------------------------------------------------------- torch autograd Function

@functools.cache
def _kl_div_function():
    """The autograd Function, built on first use (a tensor exists, so torch is imported already)."""
    torch = _backend.torch_module()

    class KLDiv(torch.autograd.Function):
        @staticmethod
        def forward(ctx, p, q, dim, reduction, log_input):
            ctx.save_for_backward(p, q)
            ctx.args = (dim, reduction, log_input)
            if on_numpy(p):
                rows = _kl_rows(numpy_view(p), numpy_view(q), dim, log_input)
                return from_numpy(reduce_loss(rows, reduction), p.dtype)
            return reduce_loss(_kl_rows(p, q, dim, log_input), reduction).to(p.dtype)

        @staticmethod
        def backward(ctx, grad_output):
            p, q = ctx.saved_tensors
            dim, reduction, log_input = ctx.args
            dp, dq = _kl_grad(p, q, grad_output, dim, reduction, log_input)
            return dp, dq, None, None, None

    return KLDiv
