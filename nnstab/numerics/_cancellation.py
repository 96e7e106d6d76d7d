"""Rows whose result cancels: the bound that flags them, and logsumexp's re-evaluation in np.longdouble or mpmath.

logsumexp = m + log1p(s) cancels when m < 0 < log1p(s) and the sum is near 0 (a row of
log-probabilities): the relative error of log1p(s) is then magnified by log1p(s) / |m + log1p(s)|.
A vectorised test (`cancellation_limit`) flags the rows where that ratio exceeds the accuracy
budget; only those are evaluated again with more bits (`lse_exact_rows`). The KL divergence
(nnstab.numerics.kl) flags its cancelling rows with the same bound.
"""
from __future__ import annotations

import functools

import numpy as np

from nnstab.numerics import _exact

# Bound on the relative error of the computed log1p(s), in units of 2**-53: exp, the (1 + lo)
# correction, the sum and log1p round about once each (TwoSum path).
LOG_SUM_ERROR_UNITS = 3.0
# The same bound for narrow inputs, which skip TwoSum: d_i rounds in float64 (relative 2**-53), so
# exp(d_i) errs by up to |d_i| units, and only terms with |d_i| < 745 are not 0: 1024 with margin.
# The NumPy kernels add n units for a row of n (their SIMD sum, `_fused.sum_without_one_max`).
LOG_SUM_ERROR_UNITS_NARROW = 1024.0

_PRECISION_BITS = {"float16": 11, "bfloat16": 8, "float32": 24, "float64": 53}


def precision_bits(dtype) -> int:
    name = str(dtype).replace("torch.", "")
    return _PRECISION_BITS[name if name in _PRECISION_BITS else np.dtype(dtype).name]


def cancellation_limit(dtype, working_bits: int, error_units: float) -> float:
    """The largest log1p(s) / |m + log1p(s)| whose result is still within the accuracy target.

    The computed log1p(s) has a relative error of error_units * 2**-working_bits; m is exact, so
    the result's error is that times log1p(s). The target allows 3.5 ULP for float64 (4 minus the
    final rounding) and half an ULP before the final rounding for narrower dtypes; one ULP of r
    is at least |r| * 2**-p.
    """
    p = precision_bits(dtype)
    budget = 3.5 if p == 53 else 0.5
    return budget * 2.0 ** (working_bits - p) / error_units


def lse_from_parts(x2, m, log_sum, dtype):
    """m + log1p(s) per row, with the rows where it cancels recomputed in higher precision (float64 result)."""
    with np.errstate(invalid="ignore"):  # inf + -inf cannot occur, but NaN rows compare quietly
        r = m + log_sum
        units = LOG_SUM_ERROR_UNITS if dtype == np.float64 else LOG_SUM_ERROR_UNITS_NARROW + x2.shape[-1]
        limit = cancellation_limit(dtype, 53, units)
        cancels = (m < 0) & (log_sum / limit > np.abs(r))
    rows = np.flatnonzero(cancels)
    if rows.size:
        r[rows] = lse_exact_rows(np.asarray(x2[rows], dtype=np.float64), dtype)
    return r


def lse_exact_rows(rows, dtype):
    """logsumexp of float64 rows (finite max) that cancel: np.longdouble where its 11 extra bits suffice, else mpmath."""
    result = np.empty(rows.shape[0])
    pending = np.arange(rows.shape[0])
    if _exact.LONGDOUBLE is not None:
        m, log_sum = _lse_longdouble(rows)
        r = m + log_sum
        limit = cancellation_limit(dtype, _exact.LONGDOUBLE_BITS, LOG_SUM_ERROR_UNITS)
        ok = (m >= 0) | (log_sum / limit <= np.abs(r))
        result[ok] = r[ok].astype(np.float64)
        pending = np.flatnonzero(~ok)
    target_bits = precision_bits(dtype) + 3
    for i in pending:
        row = rows[i]
        result[i] = _exact.to_float64(_exact.adaptive_mp(functools.partial(_lse_mp, row), target_bits))
    return result


def _lse_longdouble(rows):
    """(m, log1p(s)) per row in np.longdouble, with TwoSum differences as in the float64 path."""
    x = rows.astype(_exact.LONGDOUBLE)
    idx = np.arange(x.shape[0])
    top = np.argmax(x, axis=1)
    m = x[idx, top]
    hi, lo = _exact.two_diff(x, m[:, None])
    e = np.exp(hi) * (1 + lo)
    e[idx, top] = 0
    return m, np.log1p(e.sum(axis=1))


def _lse_mp(row):
    """(m + log1p(s), scale) for one row at the current mpmath precision; x_i - m is formed exactly."""
    import mpmath

    top = int(np.argmax(row))
    m = mpmath.mpf(float(row[top]))
    terms = [mpmath.exp(mpmath.fsub(float(v), m, exact=True)) for i, v in enumerate(row.tolist()) if i != top]
    log_sum = mpmath.log1p(mpmath.fsum(terms))
    return m + log_sum, max(abs(m), log_sum)
