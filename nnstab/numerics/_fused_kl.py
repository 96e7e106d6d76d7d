"""Fused loops (numba) of the KL divergence: its plain float32 rows, its exact float64 terms, its float32 gradient.

The loops follow nnstab.numerics._fused's floating-point contract (its `exact_jit` keeps IEEE
order; `narrow_sum_jit` sums for float16/bfloat16/float32 results only). `kl_excess_rows` evaluates
the float64 KL terms whole: the series near p = q and the double-double log(p/q) further out are
both computed on SIMD lanes and the right one selected; the log is nnstab.numerics._exact.log_dd's
table method, with the exponent from np.frexp and log1p of the small remainder as its series.
numba caches a loop with the values of this module's globals, so the constants the loops read live
here (a change here invalidates the cache; one elsewhere would not).
"""
from __future__ import annotations

import math

import numpy as np

from nnstab.numerics import _exact
from nnstab.numerics._fused import exact_jit, narrow_sum_jit


# ---------------------------------------------------------------- float32 rows (the plain sum) and gradient

@narrow_sum_jit
def kl_plain_rows(p, q, log_ratio, value, scale, mass):
    """Per row of 2-D float64 blocks: value = sum p log(p/q), scale = sum |p log(p/q)|, mass = sum p (narrow sum).

    log_ratio holds log(p/q) (from NumPy's log of p/q). p = 0 terms are 0 (0 * q, so a NaN q still
    propagates); q = 0 with p > 0 gives +inf through log(p/0) = inf.
    """
    for r in range(p.shape[0]):
        v = 0.0
        s = 0.0
        w = 0.0
        for i in range(p.shape[1]):
            pi = p[r, i]
            t = pi * log_ratio[r, i] if pi != 0.0 else 0.0 * q[r, i]
            v += t
            s += abs(t)
            w += pi
        value[r] = v
        scale[r] = s
        mass[r] = w


@exact_jit
def kl_grad_plain_rows(p, ratio, log_ratio, w, dp, dq, close_to_minus_one):
    """Per row of 2-D float64 blocks: dp = w (log(p/q) + 1), dq = -w p/q (0 where p = 0), with log_ratio = log(p/q)
    and ratio = p/q from NumPy; flags the entries where log(p/q) + 1 is below close_to_minus_one in magnitude
    (returns their count): there the rounding of the plain log shows, and they are redone in double-double."""
    flagged = 0
    for r in range(p.shape[0]):
        wr = w[r]
        for i in range(p.shape[1]):
            plus_one = log_ratio[r, i] + 1.0
            dp[r, i] = plus_one * wr
            dq[r, i] = (0.0 if p[r, i] == 0.0 else -ratio[r, i]) * wr
            flagged += 1 if abs(plus_one) < close_to_minus_one else 0
    return flagged


# ---------------------------------------------------------------- float64 terms

@exact_jit(inline="always")
def _two_sum(a, b):
    s = a + b
    b_virtual = s - a
    return s, (a - (s - b_virtual)) + (b - b_virtual)


@exact_jit(inline="always")
def _two_prod(a, b):
    """Dekker's TwoProduct with Veltkamp's splitter 2**27 + 1 (no FMA contraction here): a * b = p + e."""
    p = a * b
    c = 134217729.0 * a
    ah = c - (c - a)
    al = a - ah
    c = 134217729.0 * b
    bh = c - (c - b)
    bl = b - bh
    return p, ((ah * bh - p) + ah * bl + al * bh) + al * bl


# KL terms p log(p/q) - (p - q) with |u| <= 1/3, u = (p - q)/(p + q) (p/q in [1/2, 2]), use the series
# u (p - q) + 2 p u^3 sum_k u^(2k)/(2k + 3): 18 terms reach 2**-56 at u^2 = 1/9.
KL_SERIES_MAX_U = 1.0 / 3.0
KL_SERIES_TERMS = 18
_KL_SERIES_COEFFS = np.array([1.0 / (2 * k + 3) for k in range(KL_SERIES_TERMS)])  # frozen into the compiled code
# Beyond it, p log(p/q) cancels against (p - q) by up to ~3.6x: log(p/q) is taken in double-double
# (here, and `_exact.log_ratio_dd` for tensors) for ratios within 2**+-60 of entries above 2**-900;
# outside, log p - log q is exact enough (cancellation < 1.1x).
KL_DD_MAX_LOG2_RATIO = 60.0
KL_DD_MIN_ENTRY = 2.0 ** -900
# log(c_j) for c_j = 1 + j/32 (double-double, nnstab.numerics._exact.log_dd's table), and log1p on [0, 1/32)
# as its alternating series: 11 terms leave t**12/12 < 2**-63.
_LOG_TABLE_SIZE = 32
_LOG1P_TERMS = 11
_LOG1P_COEFFS = np.array([(-1.0) ** k / (k + 1) for k in range(_LOG1P_TERMS)])
# The tables are module constants, frozen into the compiled loop (as arguments their loads were 3x slower).
_LN2_HI, _LN2_LO, _LOG_TABLE_HI, _LOG_TABLE_LO = _exact._log_constants()
assert _LOG_TABLE_HI.size == _LOG_TABLE_SIZE


@exact_jit(inline="always")
def _kl_series(u, d, p):
    """u (p - q) + 2 p u^3 P(u^2), P(z) = sum_k z^k / (2k + 3): the excess p log(p/q) - (p - q) near p = q."""
    z = u * u
    poly = _KL_SERIES_COEFFS[KL_SERIES_TERMS - 1]
    for k in range(KL_SERIES_TERMS - 2, -1, -1):
        poly = poly * z + _KL_SERIES_COEFFS[k]
    return u * d + 2.0 * p * (u * z) * poly


@exact_jit(inline="always")
def _log_dd(mant, expo):
    """(hi, lo) = log(r) in double-double for a positive normal r = mant 2**expo (np.frexp), as
    nnstab.numerics._exact.log_dd: r = 2**k f, f in [1, 2), f = c_j (1 + t), log r = k ln2 + log(c_j) + log1p(t)."""
    f = mant * 2.0
    kf = np.float64(expo - 1)
    jj = np.int64((f - 1.0) * _LOG_TABLE_SIZE)  # truncation: floor, f - 1 >= 0
    c = 1.0 + jj / _LOG_TABLE_SIZE
    t = (f - c) / c
    poly = _LOG1P_COEFFS[_LOG1P_TERMS - 1]
    for k in range(_LOG1P_TERMS - 2, -1, -1):
        poly = poly * t + _LOG1P_COEFFS[k]
    log1p_t = t * poly
    s, e1 = _two_sum(kf * _LN2_HI, _LOG_TABLE_HI[jj])
    hi, e2 = _two_sum(s, log1p_t)
    lo = (e1 + e2) + (kf * _LN2_LO + _LOG_TABLE_LO[jj])
    total = hi + lo
    return total, lo - (total - hi)


@exact_jit
def kl_excess_rows(p, q, ratio, mant, expo, excess, mass_diff):
    """The terms of nnstab.numerics.kl._kl_excess_terms in one pass over 2-D float64 blocks of p and q.

    excess = p log(p/q) - (p - q) >= 0 per element (series in u = (p - q)/(p + q) near p = q, log(p/q) in
    double-double further out, p log p - p log q - (p - q) beyond the double-double range; see kl.py);
    mass_diff[row] = sum (p - q) with every p - q exact (TwoSum) and the sum compensated (Sum2).
    ratio = p / q and its np.frexp (mant, expo) come from NumPy. The main loop has no branch (both formulas, then a select), so it runs on SIMD lanes; the rare
    entries outside the double-double range are redone in a second, scalar loop.
    """
    ratio_lo, ratio_hi = 2.0 ** -KL_DD_MAX_LOG2_RATIO, 2.0 ** KL_DD_MAX_LOG2_RATIO
    for r in range(p.shape[0]):
        n_plain = 0
        for i in range(p.shape[1]):
            pi = p[r, i]
            qi = q[r, i]
            s, s_lo = _two_sum(pi, qi)
            d_hi, d_lo = _two_sum(pi, -qi)
            u = d_hi / s
            u = u - u * (s_lo / s)  # d / (s + s_lo): p + q exactly
            close = abs(u) <= KL_SERIES_MAX_U
            series = _kl_series(u, d_hi, pi)
            rat = ratio[r, i]
            in_range = (pi >= KL_DD_MIN_ENTRY) & (qi >= KL_DD_MIN_ENTRY) & (rat >= ratio_lo) & (rat <= ratio_hi)
            safe_p = pi if in_range else 1.0
            safe_q = qi if in_range else 1.0
            safe_ratio = rat if in_range else 1.0
            # log(p/q) = log_dd(ratio) + (p - ratio q) / p, the residual p - ratio q exact (TwoProduct); it is
            # below an ULP of p, so dividing by p instead of ratio q (one division less) changes it by 2**-53 of itself
            prod, prod_err = _two_prod(safe_ratio, safe_q)
            hi, lo = _log_dd(mant[r, i] if in_range else 0.5, expo[r, i] if in_range else 1)
            lo = lo + ((safe_p - prod) - prod_err) / safe_p
            l_hi = hi + lo
            l_lo = lo - (l_hi - hi)
            prod, prod_lo = _two_prod(pi, l_hi)
            far = (prod - d_hi) + ((prod_lo + pi * l_lo) - d_lo)
            value = series if close else far
            excess[r, i] = 0.0 if s == 0.0 else value
            n_plain += 0 if (close | in_range | (s == 0.0)) else 1
        if n_plain:
            for i in range(p.shape[1]):
                pi = p[r, i]
                qi = q[r, i]
                s, s_lo = _two_sum(pi, qi)
                d_hi, d_lo = _two_sum(pi, -qi)
                u = d_hi / s
                u = u - u * (s_lo / s)  # as above, so that the same entries count as plain
                rat = ratio[r, i]
                if s == 0.0 or abs(u) <= KL_SERIES_MAX_U or ((pi >= KL_DD_MIN_ENTRY) & (qi >= KL_DD_MIN_ENTRY)
                                                            & (rat >= ratio_lo) & (rat <= ratio_hi)):
                    continue
                excess[r, i] = qi if pi == 0.0 else pi * (math.log(pi) - math.log(qi)) - d_hi
        mass_diff[r] = _exact_diff_sum(p[r], q[r])


@exact_jit(inline="always")
def _cascade_add(total, comp, x):
    """One step of Ogita, Rump & Oishi's Sum2: total + x exactly as t + e (TwoSum, no branch), e into comp."""
    t, e = _two_sum(total, x)
    return t, comp + e


@exact_jit(inline="always")
def _exact_diff_sum(p, q):
    """sum(p - q) for 1-D float64 p, q: every difference exact (TwoSum), summed as if in twice the precision
    (Sum2: the TwoSum errors of the running sums are added up) in four interleaved chains (their adds overlap
    instead of waiting on one another), then the chains."""
    t0 = t1 = t2 = t3 = 0.0
    c0 = c1 = c2 = c3 = 0.0
    n4 = p.size - p.size % 4
    for i in range(0, n4, 4):
        d, e = _two_sum(p[i], -q[i])
        t0, c0 = _cascade_add(t0, c0 + e, d)
        d, e = _two_sum(p[i + 1], -q[i + 1])
        t1, c1 = _cascade_add(t1, c1 + e, d)
        d, e = _two_sum(p[i + 2], -q[i + 2])
        t2, c2 = _cascade_add(t2, c2 + e, d)
        d, e = _two_sum(p[i + 3], -q[i + 3])
        t3, c3 = _cascade_add(t3, c3 + e, d)
    for i in range(n4, p.size):
        d, e = _two_sum(p[i], -q[i])
        t0, c0 = _cascade_add(t0, c0 + e, d)
    total, comp = _cascade_add(t0, c0 + c1 + c2 + c3, t1)
    total, comp = _cascade_add(total, comp, t2)
    total, comp = _cascade_add(total, comp, t3)
    return total + comp
