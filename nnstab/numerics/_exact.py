"""Error-free transformations and the exact fallback for ill-conditioned rows, shared by the numeric functions.

Three tools, one hazard each:

- `two_sum(a, b)` (Knuth): s = fl(a + b) and the rounding error e, with a + b = s + e exactly.
  x - max(x) rounds for entries far below the max, and exp turns that absolute error into a
  relative one (|x - max| * 2**-53): 350 ULP of softmax on a row spanning 700. exp(s) * (1 + e)
  restores the lost digits.
- `sum2(x, axis)`: a sum as if computed in twice the working precision (pairwise TwoSum, Ogita,
  Rump & Oishi 2005), for sums whose terms cancel but are themselves exact.
- `adaptive_mp(compute, target_bits)` and the extended type `LONGDOUBLE`: where a result cancels
  (logsumexp near 0, a KL divergence of p ~ q), its row is evaluated again with more bits: in
  `np.longdouble` (64 significand bits on x86) when the cancellation is moderate, with mpmath at a
  precision that rises until the cancelled bits are covered otherwise. Only rows flagged by a cheap
  vectorised condition test take these paths; the fast path stays a few NumPy/torch passes.

Every function accepts NumPy arrays (any float dtype, np.longdouble included) or torch tensors.
"""
from __future__ import annotations

import functools
import math

import numpy as np

from nnstab import _backend

# Significand bits of np.longdouble: 64 on x86 Linux (x87 extended), 53 where long double is double.
LONGDOUBLE_BITS = np.finfo(np.longdouble).nmant + 1
LONGDOUBLE = np.longdouble if LONGDOUBLE_BITS >= 64 else None  # None: the mpmath path does its work

# Bits carried beyond the target in the mpmath path, so the last roundings never reach the result.
GUARD_BITS = 24
# The mpmath precision stops rising here; only contrived inputs cancel more than ~1000 digits.
MAX_EXACT_BITS = 4096


# ---------------------------------------------------------------- error-free transformations

def _xp(a):
    if _backend.is_tensor(a):
        import torch

        return torch
    return np


def two_sum(a, b, guard=True):
    """(s, e) with s = fl(a + b) and a + b = s + e exactly, elementwise; any magnitudes, no branch.

    Knuth's TwoSum (6 flops): s = a + b; b' = s - a; a' = s - b'; e = (a - a') + (b - b').
    Exact in binary floating point with round-to-nearest unless s overflows. Where s is +-inf or
    NaN, e is 0 (the recipe would give NaN there: inf - inf), so exp(s) * (1 + e) and s + e keep
    the infinite or NaN value of s. guard=False skips that fix (two passes) for callers whose sums
    cannot be infinite. Works on NumPy arrays (any float dtype) and torch tensors.
    """
    xp = _xp(a)
    with np.errstate(invalid="ignore", over="ignore"):
        s = a + b
        b_virtual = s - a
        e = (a - (s - b_virtual)) + (b - b_virtual)
    if not guard:
        return s, e
    if xp is np:
        e = np.where(np.isfinite(s), e, np.zeros_like(e))
        return s, e
    return s, xp.where(xp.isfinite(s), e, xp.zeros_like(e))


def two_diff(a, b):
    """(d, e) with d = fl(a - b) and a - b = d + e exactly (two_sum of a and -b)."""
    return two_sum(a, -b)


def sum2(x, axis=-1, keepdims=False, guard=True):
    """sum(x, axis) as if computed in twice the working precision (pairwise TwoSum cascade).

    Each level adds neighbouring pairs with `two_sum` and keeps the exact rounding errors, whose
    own sum is tiny and added once at the end: |result - exact| <= u |exact| + (log2(n) u)**2 sum|x|
    (u the unit roundoff), instead of log2(n) u sum|x| for a plain pairwise sum. For sums of exact
    terms that cancel (sum p - sum q of nearly equal distributions).
    Infinite or NaN terms give the plain sum's inf/NaN (guard=False: NaN for infinite terms, faster).
    """
    xp = _xp(x)
    moved = xp.moveaxis(x, axis, -1)
    n = moved.shape[-1]
    if n == 0:
        total = moved.sum(-1)
    else:
        errors = xp.zeros_like(moved[..., 0])
        level = moved
        while level.shape[-1] > 1:
            half = level.shape[-1] // 2
            s, e = two_sum(level[..., :half], level[..., half:2 * half], guard)
            errors = errors + e.sum(-1)
            if level.shape[-1] % 2:
                s = xp.concatenate([s, level[..., -1:]], -1)
            level = s
        total = level[..., 0] + errors
    if keepdims:
        total = xp.expand_dims(total, axis) if xp is np else total.unsqueeze(axis)
    return total


# ---------------------------------------------------------------- multiple precision

def cancelled_bits(value, scale) -> float:
    """Bits lost when terms of magnitude `scale` add up to `value` (mpf or float); inf for a zero value."""
    import mpmath

    if not scale or not mpmath.isfinite(scale) or not mpmath.isfinite(value):
        return 0.0
    if not value:
        return math.inf
    return max(0.0, float(mpmath.mag(scale) - mpmath.mag(value)) + 1.0)


def adaptive_mp(compute, target_bits: int):
    """The mpf that compute() returns, evaluated at a precision covering its own cancellation.

    compute() -> (value, scale) runs under mpmath.workprec; scale bounds the magnitudes whose
    roundings add up in value (error ~ 2**-prec * scale). The precision starts at target_bits +
    GUARD_BITS and rises by the cancelled bits until log2(scale/|value|) + target_bits fit with a
    guard (or MAX_EXACT_BITS is reached: then the last value is returned). A value that is exactly
    zero must come with scale 0, otherwise the loop stops at MAX_EXACT_BITS.
    """
    import mpmath

    bits = target_bits + GUARD_BITS
    while True:
        with mpmath.workprec(bits):
            value, scale = compute()
        lost = cancelled_bits(value, scale)
        if lost + target_bits + GUARD_BITS // 2 <= bits or bits >= MAX_EXACT_BITS:
            return value
        bits = min(MAX_EXACT_BITS, int(target_bits + GUARD_BITS + min(lost, MAX_EXACT_BITS) + 8))


def to_float64(value) -> float:
    """An mpf rounded once to the nearest float64 (inf beyond the range, 0 below half the smallest subnormal)."""
    return float(value)


# ---------------------------------------------------------------- rows: flagging and patching

def flatten_rows(x, axis):
    """x with `axis` moved last and the other axes flattened: a 2-D (rows, n) view or copy, plus the outer shape."""
    moved = _xp(x).moveaxis(x, axis, -1)
    outer = tuple(moved.shape[:-1])
    return moved.reshape(math.prod(outer), moved.shape[-1]), outer


def rows_to_numpy(x2d, rows):
    """The selected rows of a 2-D NumPy array or tensor as a float64 NumPy array (one host copy for a tensor)."""
    if _backend.is_tensor(x2d):
        import torch

        index = torch.as_tensor(rows, device=x2d.device)
        return x2d.index_select(0, index).detach().to(device="cpu", dtype=torch.float64).numpy()
    return np.asarray(x2d[rows], dtype=np.float64)


def put_rows(target, rows, values):
    """target[rows] = values (NumPy float64 values), for a NumPy array or a tensor (values moved to its device)."""
    if _backend.is_tensor(target):
        import torch

        index = torch.as_tensor(rows, device=target.device)
        target[index] = torch.as_tensor(values, dtype=target.dtype, device=target.device)
    else:
        target[rows] = values
    return target


def flagged(mask):
    """Indices of the True entries of a 1-D boolean NumPy array or tensor, as a NumPy int64 array (empty if none)."""
    if _backend.is_tensor(mask):
        if not bool(mask.any()):
            return np.empty(0, dtype=np.int64)
        return mask.nonzero().flatten().cpu().numpy()
    return np.flatnonzero(mask)


# ---------------------------------------------------------------- double-double products and logarithms

# Veltkamp's splitter 2**27 + 1: a = hi + lo with 26-bit halves, so hi * hi' is exact (Dekker's TwoProduct).
# Valid for |a| < 2**996 (the product with the splitter must not overflow).
_SPLITTER = 134217729.0


def _split(a):
    c = _SPLITTER * a
    hi = c - (c - a)
    return hi, a - hi


def two_prod(a, b):
    """(p, e) with p = fl(a * b) and a * b = p + e exactly (Dekker; no FMA in NumPy): float64, |a|, |b| < 2**996.

    Exact unless the product underflows (|a * b| below ~2**-969, where e would be subnormal)."""
    p = a * b
    ah, al = _split(a)
    bh, bl = _split(b)
    return p, ((ah * bh - p) + ah * bl + al * bh) + al * bl


# log(c_j) for c_j = 1 + j/32 as double-double, and ln 2 split so that k * LN2_HI is exact for |k| < 2**11.
LOG_TABLE_SIZE = 32


@functools.cache
def _log_constants():
    import mpmath

    with mpmath.workprec(240):
        ln2 = mpmath.log(2)
        ln2_hi = float(mpmath.floor(ln2 * 2 ** 42) / 2 ** 42)
        ln2_lo = float(ln2 - ln2_hi)
        logs = [mpmath.log(1 + mpmath.mpf(j) / LOG_TABLE_SIZE) for j in range(LOG_TABLE_SIZE)]
        hi = [float(v) for v in logs]
        lo = [float(v - h) for v, h in zip(logs, hi)]
    return ln2_hi, ln2_lo, np.array(hi), np.array(lo)


def log_dd(r):
    """(hi, lo) with hi + lo = log(r) to about 2**-57 absolute, for positive normal float64 r (NumPy or torch).

    r = 2**k * f with f in [1, 2) (exact), f = c_j (1 + t) with c_j = 1 + j/32 <= f (f - c_j is exact,
    t < 1/32), and log r = k ln2 + log(c_j) + log1p(t): the first two come from double-double
    constants, log1p(t) is tiny so its own rounding is 2**-58 at most. For sums like
    p log(p/q) - (p - q) that cancel a few bits, where a correctly rounded log is not enough.
    """
    xp = _xp(r)
    ln2_hi, ln2_lo, table_hi, table_lo = _log_constants()
    mant, k = xp.frexp(r)
    f, k = mant * 2.0, (k - 1).to(r.dtype) if xp is not np else (k - 1).astype(np.float64)
    j = xp.floor((f - 1.0) * LOG_TABLE_SIZE)
    c = 1.0 + j / LOG_TABLE_SIZE
    t = xp.log1p((f - c) / c)
    if xp is np:
        j = j.astype(np.intp)
        log_c_hi, log_c_lo = table_hi[j], table_lo[j]
    else:
        j = j.long()
        log_c_hi = xp.as_tensor(table_hi, dtype=r.dtype, device=r.device)[j]
        log_c_lo = xp.as_tensor(table_lo, dtype=r.dtype, device=r.device)[j]
    s, e1 = two_sum(k * ln2_hi, log_c_hi, guard=False)  # all finite for positive normal r
    hi, e2 = two_sum(s, t, guard=False)
    lo = ((e1 + e2) + (k * ln2_lo + log_c_lo))
    total = hi + lo
    return total, lo - (total - hi)


def log_ratio_dd(p, q):
    """(hi, lo) with hi + lo = log(p / q) to about 2**-56 absolute, for positive float64 p, q whose ratio is in [2**-60, 2**60] and that are above 2**-900.

    The ratio is taken exactly as r + rr (rr from the residual p - r q, exact with `two_prod`),
    and log(p/q) = log_dd(r) + rr / r.
    """
    r = p / q
    prod, prod_err = two_prod(r, q)
    rr = ((p - prod) - prod_err) / q  # p - prod is exact: prod is within an ULP of p
    hi, lo = log_dd(r)
    lo = lo + rr / r
    total = hi + lo
    return total, lo - (total - hi)
