"""Fused loops (compiled with numba) for the cheap passes around NumPy's SIMD exp and log.

NumPy runs exp and log on float64 blocks with AVX-512 kernels; everything around them (casts,
differences, TwoSum, sums, scalings, compares) is a few flops per element, and as separate NumPy
passes it costs more than the exp itself. Each loop here does one such group in a single pass.
numba's own exp/log are scalar libm calls (no SVML), so transcendental functions stay in NumPy.

Floating-point contract: no fastmath except `reassoc` in the loops marked "narrow sum": those
accumulate float64 sums for float16/bfloat16/float32 results in several SIMD accumulators, whose
rounding (at most n * 2**-53 relative for n terms) is far below a float32 ULP (2**-24). Loops that
feed float64 results keep IEEE order (TwoSum relies on it; no FMA contraction either). NaN and
infinities keep their IEEE meaning everywhere (no `nnan`/`ninf`).

The float32 softmax/log_softmax backward loops do a row in two passes; the KL divergence's loops,
which evaluate whole terms, are in nnstab.numerics._fused_kl.

Compiled on first use (numba is imported then, not with nnstab) and cached on disk (cache=True):
compiling every loop once costs 7-10 s on a cold cache; a new process loads them from the cache
in about a second in all. numba caches a loop with the values of its own module's globals only: a
loop must not read constants from another module (a change there would not invalidate the cache).
"""
from __future__ import annotations

import functools
import math

import numba
import numpy as np

exact_jit = functools.partial(numba.njit, cache=True, boundscheck=False, error_model="numpy", nogil=True)
narrow_sum_jit = functools.partial(numba.njit, cache=True, boundscheck=False, error_model="numpy", nogil=True,
                                    fastmath={"reassoc"})


# ---------------------------------------------------------------- elementwise losses

@narrow_sum_jit
def sum_sq_diff(a, b):
    """Sum of (a_i - b_i)**2 over 1-D float32/float64 arrays, differences and squares in float64 (narrow sum)."""
    acc = 0.0
    for i in range(a.size):
        d = np.float64(a[i]) - np.float64(b[i])
        acc += d * d
    return acc


@exact_jit
def sq_diff_into(a, b, out):
    """out = (a - b)**2 in float64 per element (for a pairwise sum afterwards: float64 results)."""
    for i in range(a.size):
        d = np.float64(a[i]) - np.float64(b[i])
        out[i] = d * d


@exact_jit
def bce_grad(p, t, w, out, quotient, denominator):
    """out = ((p - t) / (p (1 - p))) w (w: one weight, size 1, or one per element); the quotient and p (1 - p)
    are kept for the rare repair (nnstab.numerics.elementwise._bce_grad_fix). Returns how many quotients are not finite."""
    one_weight = w.size == 1
    bad = 0
    for i in range(p.size):
        pi = np.float64(p[i])
        b = (1.0 - pi) * pi
        a = (pi - np.float64(t[i])) / b
        quotient[i] = a
        denominator[i] = b
        out[i] = a * np.float64(w[0] if one_weight else w[i])
        bad += 0 if (a - a) == 0.0 else 1
    return bad


@exact_jit
def mse_grad(p, t, w, out):
    """out = (2 (p - t)) w (w: one weight, size 1, or one per element); returns how many 2 (p - t) are infinite."""
    one_weight = w.size == 1
    over = 0
    for i in range(p.size):
        d = (np.float64(p[i]) - np.float64(t[i])) * 2.0
        out[i] = d * np.float64(w[0] if one_weight else w[i])
        over += 1 if abs(d) == np.inf else 0
    return over


# ---------------------------------------------------------------- the softmax family

@narrow_sum_jit
def sum_without_one_max(e, s):
    """Per row of e = exp(x - max) (float64, 2-D; the max entries are exactly 1): s = the sum without one max
    term, as the sum of the entries below 1 plus the other entries equal to 1 (ties). NaN propagates (narrow sum).

    Summing the entries below 1 on their own keeps a tiny s (one dominant logit) that 1 + s would round away.
    """
    for r in range(e.shape[0]):
        acc = 0.0
        ones = 0.0
        for i in range(e.shape[1]):
            v = e[r, i]
            one = v == 1.0
            acc += 0.0 if one else v
            ones += 1.0 if one else 0.0
        s[r] = acc + (ones - 1.0)


@exact_jit
def two_diff_rows(x, shift, hi, lo):
    """hi = fl(x - shift) and lo = (x - shift) - hi exactly (TwoSum) per row of a 2-D float64 block.

    Where hi is infinite or NaN (a -inf entry, a difference beyond the range, a NaN) lo is -1, so that
    exp(hi) (1 + lo) stays exp(hi) = 0 instead of 0 * NaN (and NaN stays NaN).
    """
    for r in range(x.shape[0]):
        b = -shift[r]
        for i in range(x.shape[1]):
            a = x[r, i]
            h = a + b
            b_virtual = h - a
            err = (a - (h - b_virtual)) + (b - b_virtual)
            hi[r, i] = h
            lo[r, i] = err if err >= -1.0 else -1.0


@exact_jit
def times_one_plus(e, lo):
    """e <- e + e lo (two roundings, in this order), per element of 2-D float64 blocks: exp(hi) (1 + lo)."""
    for r in range(e.shape[0]):
        for i in range(e.shape[1]):
            v = e[r, i]
            e[r, i] = v + v * lo[r, i]


@exact_jit
def minus_log_sum_plus_lo(hi, lo, log_sum, out):
    """out = (hi - log_sum) + lo per row of 2-D float64 blocks: log_softmax from the exact difference hi + lo."""
    for r in range(hi.shape[0]):
        c = log_sum[r]
        for i in range(hi.shape[1]):
            out[r, i] = (hi[r, i] - c) + lo[r, i]


@exact_jit
def minus_rows(x, c, out):
    """out = float64(x) - c[row] per row of 2-D blocks (x float32/float64; the store rounds to out's dtype once)."""
    for r in range(x.shape[0]):
        v = c[r]
        for i in range(x.shape[1]):
            out[r, i] = np.float64(x[r, i]) - v


@exact_jit
def times_rows(x, c, out):
    """out = x * c[row] per row of 2-D float64 blocks (the store rounds to out's dtype once)."""
    for r in range(x.shape[0]):
        v = c[r]
        for i in range(x.shape[1]):
            out[r, i] = x[r, i] * v


# ---------------------------------------------------------------- softmax family backward, float32 rows

@narrow_sum_jit
def softmax_backward_rows(y, g, tops, out):
    """out = y (g - sum(g y)) per row of float32 y, g (float64 math, one rounding), the top entry (tops: the
    rows' argmax, from NumPy's SIMD argmax) as
    y_top (g_top sum_{j != top} y_j - sum_{j != top} g_j y_j) (nnstab.numerics.softmax_family.softmax_backward).
    Narrow sums: float32 results only."""
    for r in range(y.shape[0]):
        top = tops[r]
        y_top = np.float64(y[r, top])
        g_top = np.float64(g[r, top])
        others_gy = 0.0
        others_y = 0.0
        for i in range(y.shape[1]):
            yi = np.float64(y[r, i])
            keep = i != top
            others_gy += np.float64(g[r, i]) * yi if keep else 0.0
            others_y += yi if keep else 0.0
        total = others_gy + g_top * y_top
        for i in range(y.shape[1]):
            out[r, i] = np.float64(y[r, i]) * (np.float64(g[r, i]) - total)
        out[r, top] = y_top * (g_top * others_y - others_gy)


@narrow_sum_jit
def log_softmax_backward_rows(y, g, tops, exp_y, out, near_one_above):
    """out = g - exp(y) sum(g) per row of float32 y, g (exp_y: float64 exp(y) from NumPy), the top entry
    (tops: the rows' argmax) through expm1 where y_top > near_one_above (nnstab.numerics.softmax_family.log_softmax_backward). Narrow sums."""
    for r in range(y.shape[0]):
        total = 0.0
        for i in range(y.shape[1]):
            total += np.float64(g[r, i])
        for i in range(y.shape[1]):
            out[r, i] = np.float64(g[r, i]) - exp_y[r, i] * total
        top = tops[r]
        y_top = np.float64(y[r, top])
        if y_top > near_one_above:
            out[r, top] = (np.float64(g[r, top]) - total) - math.expm1(y_top) * total


# ---------------------------------------------------------------- sigmoid and binary cross-entropy (1-D blocks)

def has_dtypes(*arrays) -> bool:
    """Whether the fused loops take these arrays: numba has no float16."""
    return all(a.dtype != np.float16 for a in arrays)


@exact_jit
def neg_abs(x, out):
    """out = -|x| in float64 (exact), the argument of exp(-|x|) <= 1."""
    for i in range(x.size):
        out[i] = -abs(np.float64(x[i]))


@exact_jit
def bce_logits_values(x, t, log_term, out):
    """out = (max(x, 0) (1 - t) - min(x, 0) t) + log_term, log_term = log1p(exp(-|x|)) (nnstab.numerics.elementwise).

    One of the two products is 0, so their difference is exact; NaN in x reaches out through log_term.
    """
    for i in range(x.size):
        xi = np.float64(x[i])
        ti = np.float64(t[i])
        pos = xi if xi > 0.0 else 0.0
        neg = xi if xi < 0.0 else 0.0
        out[i] = (pos * (1.0 - ti) - neg * ti) + log_term[i]


@exact_jit
def sigmoid_minus(x, t, e, w, ratio, out, close):
    """out = w (sigmoid(x) - t) with e = exp(-|x|): q = e / (1 + e) = sigmoid(-|x|), sigmoid(x) - t as
    (1 - t) - q for x >= 0 and -(t - q) for x < 0; close = |sigmoid(x) - t| < ratio q, where that cancels.
    w: one weight (size 1) or one per element."""
    one_weight = w.size == 1
    for i in range(x.size):
        xi = np.float64(x[i])
        ti = np.float64(t[i])
        ei = e[i]
        q = ei / (ei + 1.0)
        r = -(ti - q) if xi < 0.0 else (1.0 - ti) - q
        close[i] = abs(r) < ratio * q
        out[i] = r * np.float64(w[0] if one_weight else w[i])


@exact_jit
def scaled(x, c, out):
    """out = c x in float64 (exact for c = +-1)."""
    for i in range(x.size):
        out[i] = c * np.float64(x[i])


@exact_jit
def weight_over_one_plus(e, w, out):
    """out = w / (1 + e) (w: one weight, size 1, or one per element): sigmoid from e = exp(-z), times grad_output."""
    one_weight = w.size == 1
    for i in range(e.size):
        out[i] = np.float64(w[0] if one_weight else w[i]) / (e[i] + 1.0)


@exact_jit
def softplus_values(x, log_term, sign, out):
    """out = max(x, 0) + log_term (sign 1: softplus) or min(x, 0) - log_term (sign -1: log_sigmoid),
    log_term = log1p(exp(-|x|)); NaN in x reaches out through log_term."""
    for i in range(x.size):
        xi = np.float64(x[i])
        if sign > 0.0:
            out[i] = (xi if xi > 0.0 else 0.0) + log_term[i]
        else:
            out[i] = (xi if xi < 0.0 else 0.0) - log_term[i]


@exact_jit
def sigmoid_grad_values(e, g, out):
    """out = (e g) / (1 + e (2 + e)) with e = exp(-|x|): g sigmoid'(x), the denominator (1 + e)**2 rounding once
    less in its leading part (nnstab.numerics.sigmoid_family.sigmoid_backward)."""
    for i in range(e.size):
        ei = e[i]
        out[i] = (ei * np.float64(g[i])) / ((ei + 2.0) * ei + 1.0)
