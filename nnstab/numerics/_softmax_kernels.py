"""The NumPy block kernels of the softmax family, forward and backward, in cache-sized float64 blocks of rows.

Per row they compute m = max(x) and log1p(s), and softmax or log_softmax, or a backward formula;
the formulas and the reasons for them are in nnstab.numerics.softmax_family. A 2-D array of rows
(`as_rows_np`) is processed a block of rows at a time in float64 scratch that stays in cache
(`kernel_np`, `rows_backward_np`). float64 rows take the exact difference x - m = hi + lo
(`_block_wide`); narrower rows have the spare bits to skip it (`_block_narrow`). Rows with an
infinite max get the limit conventions afterwards (`limit_rows`, which the torch path uses too).
NumPy does the exp, max and argmax passes (SIMD); the passes between them (casts, TwoSum,
sums, scalings) are fused loops of nnstab.numerics._fused, and float32 backward rows are one
fused loop each.
"""
from __future__ import annotations

import math

import numpy as np

from nnstab import _backend
from nnstab.numerics._cancellation import lse_from_parts
from nnstab.numerics._lazy import lazy_module

_fused = lazy_module("nnstab.numerics._fused")  # numba is imported with the first fused loop

# Elements per NumPy block: three float64 scratch blocks (512 KiB each) stay in a core's L2 cache (2 MiB),
# so the dozen passes over a block cost cache bandwidth, not memory bandwidth.
BLOCK = 1 << 16

# exp(y) > 1/2 (y > -log 2) at most at one entry per row: there 1 - exp(y) is computed as -expm1(y).
LN2 = math.log(2.0)


# ---------------------------------------------------------------- row layout

def scalar_if_0d(y):
    """A 0-d NumPy result becomes a NumPy scalar, as NumPy's own reductions return."""
    return y[()] if isinstance(y, np.ndarray) and y.ndim == 0 else y


def as_rows_np(x, axis):
    """x with axis last as a C-contiguous 2-D (rows, n) array (a view when it already is), and the moved shape."""
    moved = np.moveaxis(x, axis, -1)
    return np.ascontiguousarray(moved).reshape(math.prod(moved.shape[:-1]), moved.shape[-1]), moved.shape


# ---------------------------------------------------------------- forward

def logsumexp_np(x, axis, keepdims, out_dtype=None):
    x2, moved_shape = as_rows_np(x, axis)
    m, log_sum = kernel_np(x2, None)
    r = lse_from_parts(x2, m, log_sum, x.dtype)
    r = r.reshape(moved_shape[:-1])
    if keepdims:
        r = np.expand_dims(r, axis)
    with np.errstate(over="ignore"):  # beyond the dtype's range: inf, the correctly rounded value
        return _backend.from_working(r, x.dtype if out_dtype is None else out_dtype)


def rows_np(x, axis, mode, out_dtype=None, row_scale=None):
    x2, moved_shape = as_rows_np(x, axis)
    out = np.empty(x2.shape, dtype=x.dtype if out_dtype is None else out_dtype)
    with np.errstate(over="ignore", invalid="ignore"):  # scaled beyond a narrow range: inf; NaN weights
        kernel_np(x2, mode, out, row_scale)
    return np.moveaxis(out.reshape(moved_shape), -1, axis)


def kernel_np(x2, mode, out=None, row_scale=None):
    """Per row of a 2-D array: m and log1p(s); with mode "softmax"/"log_softmax" also that row result in out.

    row_scale (float64, one per row; mode "softmax" only) multiplies each row of the softmax before
    its one rounding into out (a loss gradient's weight).

    Works block by block of rows in float64 scratch. Rows with an infinite max get the limit
    conventions afterwards (`limit_rows`). A NaN row has the NaN as its max (argmax finds it), so
    its shifted terms are all NaN, the max term included: NaN rows come out NaN by themselves.
    An empty axis gives m = -inf and log1p(s) = 0 (the sum of nothing).
    """
    n_rows, n = x2.shape
    m_all, log_sum_all = np.empty(n_rows), np.empty(n_rows)
    if n == 0:
        m_all.fill(-np.inf)
        log_sum_all.fill(0.0)
        return m_all, log_sum_all
    wide = x2.dtype == np.float64
    per_block = max(1, min(n_rows, BLOCK // n))
    scratch = [np.empty((per_block, n)) for _ in range(3 if wide else 2)]
    infinite_rows = []
    for start in range(0, n_rows, per_block):
        stop = min(start + per_block, n_rows)
        bufs = [b[: stop - start] for b in scratch]
        block_out = None if out is None else out[start:stop]
        block = _block_wide if wide else _block_narrow
        block_scale = None if row_scale is None else row_scale[start:stop]
        m, log_sum = block(x2[start:stop], bufs, mode, block_out, block_scale)
        m_all[start:stop], log_sum_all[start:stop] = m, log_sum
        if not np.isfinite(m).all():
            infinite_rows.extend(start + np.flatnonzero(np.isinf(m)))
    if infinite_rows:
        rows = np.asarray(infinite_rows)
        log_sum_all[rows] = 0.0
        if out is not None:
            limit = limit_rows(np.asarray(x2[rows], dtype=np.float64), mode)
            out[rows] = limit if row_scale is None else limit * row_scale[rows, None]
    return m_all, log_sum_all


def _top_and_max(w):
    """Index of each row's max (the first NaN if any: it poisons the row) and the max, shift-safe."""
    top = np.argmax(w, axis=1)
    m = w[np.arange(w.shape[0]), top]
    if np.isfinite(m).all():
        return top, m, m[:, None]
    shift = np.where(np.isinf(m), 0.0, m)  # an infinite max is patched later; shifting by it would make NaN
    return top, m, shift[:, None]


def _block_narrow(xb, bufs, mode, out, row_scale=None):
    """float16/float32 rows: float64 is wide enough for x - m, no TwoSum needed.

    The max term is left out of s by summing the entries of exp(x - m) below 1 and counting the
    others (`_fused.sum_without_one_max`), so no argmax pass is needed.
    """
    w, e = bufs
    m = xb.max(axis=1).astype(np.float64)  # a NaN row has NaN as its max: its shifted terms, and results, are NaN
    finite = np.isfinite(m).all()
    shift = m if finite else np.where(np.isinf(m), 0.0, m)  # shifting by an infinite max would make NaN
    _minus_rows(xb, shift, w)  # exact: float64 holds any difference of two float16/float32 values
    if not finite:
        w[np.isinf(m)] = -np.inf  # silent placeholder rows; `limit_rows` fills them in
    s = np.empty(w.shape[0])
    if mode == "softmax":
        np.exp(w, out=w)
        _fused.sum_without_one_max(w, s)
        with np.errstate(divide="ignore", invalid="ignore"):  # placeholder rows (s = -1) are replaced later
            _times_rows(w, (1.0 if row_scale is None else row_scale) / (1.0 + s), out)  # float64: far below a narrow ULP
            return m, np.log1p(s)
    np.exp(w, out=w if mode is None else e)  # log_softmax still needs the differences in w
    _fused.sum_without_one_max(w if mode is None else e, s)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):  # placeholder rows; below the range: -inf
        log_sum = np.log1p(s)
        if mode == "log_softmax":
            _minus_rows(w, log_sum, out)
    return m, log_sum


def _minus_rows(x, c, out):
    """out = x - c[row], in one fused pass where numba has the dtypes (not float16)."""
    if x.dtype == np.float16 or out.dtype == np.float16:
        np.subtract(x, c[:, None], out=out, dtype=np.float64)
    else:
        _fused.minus_rows(x, c, out)


def _times_rows(x, c, out):
    """out = x * c[row], in one fused pass where numba has the dtypes (not float16)."""
    if out.dtype == np.float16:
        np.multiply(x, c[:, None], out=out)
    else:
        _fused.times_rows(x, c, out)


def _block_wide(xb, bufs, mode, out, row_scale=None):
    """float64 rows: d = x - m split exactly as hi + lo (TwoSum), terms exp(hi) * (1 + lo)."""
    hi, lo, e = bufs
    rows = np.arange(hi.shape[0])
    top, m, shift = _top_and_max(xb)
    _fused.two_diff_rows(xb, np.ascontiguousarray(shift[:, 0]), hi, lo)
    infinite = np.isinf(m)
    if infinite.any():
        hi[infinite], lo[infinite] = -np.inf, 0.0  # silent placeholder rows; `limit_rows` fills them in
    np.exp(hi, out=e)
    _fused.times_one_plus(e, lo)
    top_term = e[rows, top]  # exp(0) = 1, or NaN in a NaN row (whose max is the NaN)
    e[rows, top] = 0.0
    s = e.sum(axis=1)  # pairwise: the float64 results need its few-ULP accuracy
    log_sum = np.log1p(s)
    if mode == "log_softmax":
        _fused.minus_log_sum_plus_lo(hi, lo, log_sum, out)
    elif mode == "softmax":
        e[rows, top] = top_term
        if row_scale is None:
            np.divide(e, (1.0 + s)[:, None], out=out)
        else:
            np.multiply(e, (row_scale / (1.0 + s))[:, None], out=out)
    return m, log_sum


def limit_rows(rows, mode):
    """Rows with an infinite max: the limit conventions (mass shared by the +inf entries, none for all -inf)."""
    xp = np if isinstance(rows, np.ndarray) else _backend.torch_module()  # a tensor: torch is imported
    pos = rows == math.inf
    k = pos.sum(-1, keepdims=True) if xp is np else pos.sum(-1, keepdim=True)
    if mode == "softmax":
        return xp.where(k > 0, pos / xp.where(k > 0, k, 1), 0.0) if xp is np else \
            xp.where(k > 0, pos / k.clamp(min=1), xp.zeros_like(rows))
    if xp is np:
        return np.where(pos, -np.log(np.maximum(k, 1)), -np.inf)
    return xp.where(pos, -xp.log(k.clamp(min=1).to(rows.dtype)), xp.full_like(rows, -math.inf))


# ---------------------------------------------------------------- backward

def rows_backward_np(block_fn, y, g, axis):
    """A row-wise backward formula over cache-sized blocks of rows: float64 scratch, one rounding to y's dtype."""
    y2, moved_shape = as_rows_np(y, axis)
    g2, _ = as_rows_np(g, axis)
    out = np.empty(y2.shape, dtype=y.dtype)
    n_rows, n = y2.shape
    if n and n_rows and y2.dtype == np.float32 and g2.dtype == np.float32:
        _rows_backward_float32(block_fn, y2, g2, out)
    elif n and n_rows:
        per_block = max(1, min(n_rows, BLOCK // n))
        scratch = [np.empty((per_block, n)) for _ in range(3)]
        for start in range(0, n_rows, per_block):
            stop = min(start + per_block, n_rows)
            a, b, c = (buf[: stop - start] for buf in scratch)
            np.copyto(a, y2[start:stop])
            np.copyto(b, g2[start:stop])
            with np.errstate(invalid="ignore", over="ignore"):  # inf * 0 from an infinite grad_output is NaN
                block_fn(a, b, c)
                np.copyto(out[start:stop], b)  # beyond a narrow dtype's range: inf, correctly rounded
    return np.moveaxis(out.reshape(moved_shape), -1, axis)


def _rows_backward_float32(block_fn, y2, g2, out):
    """float32 rows: the fused loops of nnstab.numerics._fused (float64 math, SIMD sums, one rounding)."""
    tops = y2.argmax(axis=1)
    if block_fn is softmax_backward_block:
        _fused.softmax_backward_rows(y2, g2, tops, out)
        return
    per_block = max(1, min(y2.shape[0], BLOCK // y2.shape[1]))
    exp_y = np.empty((per_block, y2.shape[1]))
    for start in range(0, y2.shape[0], per_block):
        stop = min(start + per_block, y2.shape[0])
        e = exp_y[: stop - start]
        np.exp(y2[start:stop], out=e, dtype=np.float64)
        _fused.log_softmax_backward_rows(y2[start:stop], g2[start:stop], tops[start:stop], e, out[start:stop], -LN2)


def softmax_backward_block(y, g, gy):
    """g <- y (g - sum(g y)), the top entry as y_top sum_{j != top} y_j (g_top - g_j) (see logsumexp.softmax_backward)."""
    rows = np.arange(y.shape[0])
    top = np.argmax(y, axis=1)
    y_top, g_top = y[rows, top], g[rows, top]
    np.multiply(g, y, out=gy)
    gy_top = gy[rows, top]
    gy[rows, top] = 0.0
    others_gy = gy.sum(axis=1)
    y[rows, top] = 0.0
    others_y = y.sum(axis=1)
    y[rows, top] = y_top
    g -= (others_gy + gy_top)[:, None]
    g *= y
    g[rows, top] = y_top * (g_top * others_y - others_gy)


def log_softmax_backward_block(y, g, scratch):
    """g <- g - exp(y) sum(g), the top entry through expm1 (see logsumexp.log_softmax_backward)."""
    rows = np.arange(y.shape[0])
    total = g.sum(axis=1)
    top = np.argmax(y, axis=1)
    y_top, g_top = y[rows, top], g[rows, top]
    np.exp(y, out=scratch)
    scratch *= total[:, None]
    g -= scratch
    near_one = (g_top - total) - np.expm1(y_top) * total
    g[rows, top] = np.where(y_top > -LN2, near_one, g[rows, top])
