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
  A vectorised test flags rows whose result is small next to log1p(s) (LOG_SUM_ERROR_UNITS,
  `_cancellation_limit`); only those are evaluated again in np.longdouble or, past its 11 extra
  bits, with mpmath at a rising precision.

Edge conventions: a row of all -inf has logsumexp -inf, softmax 0 (no mass: a fully masked row
contributes nothing, as in "safe softmax" attention kernels) and log_softmax -inf. +inf entries
share the mass equally: logsumexp +inf, softmax 1/k at the k +inf entries and 0 elsewhere,
log_softmax -log(k) there and -inf elsewhere. A NaN anywhere in a row makes that row NaN. -inf
entries (masks) get exactly 0 probability. An empty axis gives logsumexp -inf and empty outputs.

Where the work happens: NumPy arrays go through blocked kernels (`_kernel_np`) that keep their
float64 scratch in cache. CPU tensors use the same kernels on zero-copy NumPy views (`on_numpy`);
tensors on other devices use torch ops with the same formulas (`_parts_torch`), so CUDA works.
Each tensor function is a torch.autograd.Function whose backward is the matching *_backward below.
"""
from __future__ import annotations

import functools
import math
import types

import numpy as np

from nnstab import _backend
from nnstab.numerics import _exact, validate

# Elements per NumPy block: three float64 scratch blocks (512 KiB each) stay in a core's L2 cache (2 MiB),
# so the dozen passes over a block cost cache bandwidth, not memory bandwidth.
BLOCK = 1 << 16

# Bound on the relative error of the computed log1p(s), in units of 2**-53: exp, the (1 + lo)
# correction, the sum and log1p round about once each (TwoSum path).
LOG_SUM_ERROR_UNITS = 3.0
# The same bound for narrow inputs, which skip TwoSum: d_i rounds in float64 (relative 2**-53), so
# exp(d_i) errs by up to |d_i| units, and only terms with |d_i| < 745 are not 0: 1024 with margin.
LOG_SUM_ERROR_UNITS_NARROW = 1024.0

# torch's fused float64 kernels compute log(1 + s) instead of log1p(s): an absolute error of
# ~2**-53 in log_softmax and cross-entropy values, below 2**-33 relative once those exceed this
# (float32 needs 2**-25). Rows whose log-sum is smaller take the log1p path.
TORCH_FUSED_MIN_LOG_SUM = 2.0 ** -20

# exp(y) > 1/2 (y > -log 2) at most at one entry per row: there 1 - exp(y) is computed as -expm1(y).
LN2 = math.log(2.0)

# CPU tensors run the NumPy kernels through zero-copy views (see `on_numpy`).
NUMPY_ON_CPU = True

_PRECISION_BITS = {"float16": 11, "bfloat16": 8, "float32": 24, "float64": 53}


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
        return _functions().LogSumExp.apply(x, axis, keepdims)
    return _scalar_if_0d(_logsumexp_np(x, axis, keepdims))


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
        return _functions().Softmax.apply(x, axis)
    return _rows_np(x, axis, "softmax")


def log_softmax(x, axis=-1):
    """x_i - logsumexp(x) along axis, as (x_i - m) - log1p(s), an array or tensor like x.

    Both terms are <= 0 (no cancellation), and log1p keeps the winner's log-probability -s when
    one logit dominates (log(softmax) and scipy/torch give 0 there). All -inf row: -inf; +inf
    entries: -log(k) there, -inf elsewhere; NaN in a row: NaN. Derivative: `log_softmax_backward`.
    """
    x = validate.check_float_array(x, "x")
    axis = validate.normalize_axis(axis, x.ndim)
    if _backend.is_tensor(x):
        return _functions().LogSoftmax.apply(x, axis)
    return _rows_np(x, axis, "log_softmax")


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
    if not keepdims:
        g64 = g64.unsqueeze(axis) if _backend.is_tensor(g64) else np.expand_dims(g64, axis)
    return _scalar_if_0d(_backend.from_working(_softmax64(x, axis) * g64, x.dtype))


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
    if not _backend.is_tensor(y):
        return _rows_backward_np(_softmax_backward_block, y, g, axis)
    y64, g64 = _backend.to_working(y), _backend.to_working(g)
    if y64.shape[axis] == 0:
        return _backend.from_working(y64 * g64, y.dtype)
    top = _argmax(y64, axis)
    gy = g64 * y64
    gy_top, y_top, g_top = _take(gy, top, axis), _take(y64, top, axis), _take(g64, top, axis)
    others_gy = _sum(_put(_copy(gy), top, _zeros(gy_top), axis), axis)  # sum without the top term
    others_y = _sum(_put(_copy(y64), top, _zeros(y_top), axis), axis)
    dx = y64 * (g64 - (others_gy + gy_top))
    return _backend.from_working(_put(dx, top, y_top * (g_top * others_y - others_gy), axis), y.dtype)


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
    if not _backend.is_tensor(y):
        return _rows_backward_np(_log_softmax_backward_block, y, g, axis)
    y64, g64 = _backend.to_working(y), _backend.to_working(g)
    total = _sum(g64, axis)
    dx = g64 - _exp(y64) * total
    if y64.shape[axis] == 0:
        return _backend.from_working(dx, y.dtype)
    top = _argmax(y64, axis)
    y_top = _take(y64, top, axis)
    near_one = (_take(g64, top, axis) - total) - _expm1(y_top) * total
    at_top = _where(y_top > -LN2, near_one, _take(dx, top, axis))
    return _backend.from_working(_put(dx, top, at_top, axis), y.dtype)


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


# ---------------------------------------------------------------- array-or-tensor helpers

def _sum(a, axis):
    return a.sum(axis, keepdim=True) if _backend.is_tensor(a) else a.sum(axis, keepdims=True)


def _exp(a):
    return a.exp() if _backend.is_tensor(a) else np.exp(a)


def _expm1(a):
    return a.expm1() if _backend.is_tensor(a) else np.expm1(a)


def _zeros(a):
    return a.new_zeros(a.shape) if _backend.is_tensor(a) else np.zeros_like(a)


def _copy(a):
    """A copy to modify in place (NumPy); tensors are never modified in place here (`_put` scatters out of place)."""
    return a if _backend.is_tensor(a) else a.copy()


def _where(condition, a, b):
    return _torch().where(condition, a, b) if _backend.is_tensor(a) else np.where(condition, a, b)


def _argmax(a, axis):
    return a.argmax(axis, keepdim=True) if _backend.is_tensor(a) else np.expand_dims(np.argmax(a, axis), axis)


def _take(a, index, axis):
    return a.gather(axis, index) if _backend.is_tensor(a) else np.take_along_axis(a, index, axis)


def _put(a, index, values, axis):
    """a with a[index] = values along axis (a new tensor for torch: differentiable; in place for NumPy)."""
    if _backend.is_tensor(a):
        return a.scatter(axis, index, values)
    np.put_along_axis(a, index, values, axis)
    return a


def _scalar_if_0d(y):
    """A 0-d NumPy result becomes a NumPy scalar, as NumPy's own reductions return."""
    return y[()] if isinstance(y, np.ndarray) and y.ndim == 0 else y


def _precision_bits(dtype) -> int:
    name = str(dtype).replace("torch.", "")
    return _PRECISION_BITS[name if name in _PRECISION_BITS else np.dtype(dtype).name]


def _cancellation_limit(dtype, working_bits: int, error_units: float) -> float:
    """The largest log1p(s) / |m + log1p(s)| whose result is still within the accuracy target.

    The computed log1p(s) has a relative error of error_units * 2**-working_bits; m is exact, so
    the result's error is that times log1p(s). The target allows 3.5 ULP for float64 (4 minus the
    final rounding) and half an ULP before the final rounding for narrower dtypes; one ULP of r
    is at least |r| * 2**-p.
    """
    p = _precision_bits(dtype)
    budget = 3.5 if p == 53 else 0.5
    return budget * 2.0 ** (working_bits - p) / error_units


# ---------------------------------------------------------------- NumPy kernel

def _as_rows_np(x, axis):
    """x with axis last as a C-contiguous 2-D (rows, n) array (a view when it already is), and the moved shape."""
    moved = np.moveaxis(x, axis, -1)
    return np.ascontiguousarray(moved).reshape(math.prod(moved.shape[:-1]), moved.shape[-1]), moved.shape


def _logsumexp_np(x, axis, keepdims, out_dtype=None):
    x2, moved_shape = _as_rows_np(x, axis)
    m, log_sum = _kernel_np(x2, None)
    r = _lse_from_parts(x2, m, log_sum, x.dtype)
    r = r.reshape(moved_shape[:-1])
    if keepdims:
        r = np.expand_dims(r, axis)
    with np.errstate(over="ignore"):  # beyond the dtype's range: inf, the correctly rounded value
        return _backend.from_working(r, x.dtype if out_dtype is None else out_dtype)


def _lse_from_parts(x2, m, log_sum, dtype):
    """m + log1p(s) per row, with the rows where it cancels recomputed in higher precision (float64 result)."""
    with np.errstate(invalid="ignore"):  # inf + -inf cannot occur, but NaN rows compare quietly
        r = m + log_sum
        limit = _cancellation_limit(dtype, 53, LOG_SUM_ERROR_UNITS if dtype == np.float64 else LOG_SUM_ERROR_UNITS_NARROW)
        cancels = (m < 0) & (log_sum / limit > np.abs(r))
    rows = np.flatnonzero(cancels)
    if rows.size:
        r[rows] = _lse_exact_rows(np.asarray(x2[rows], dtype=np.float64), dtype)
    return r


def _rows_np(x, axis, mode, out_dtype=None):
    x2, moved_shape = _as_rows_np(x, axis)
    out = np.empty(x2.shape, dtype=x.dtype if out_dtype is None else out_dtype)
    _kernel_np(x2, mode, out)
    return np.moveaxis(out.reshape(moved_shape), -1, axis)


def _kernel_np(x2, mode, out=None):
    """Per row of a 2-D array: m and log1p(s); with mode "softmax"/"log_softmax" also that row result in out.

    Works block by block of rows in float64 scratch. Rows with an infinite max get the limit
    conventions afterwards (`_limit_rows`); NaN rows come out NaN by themselves.
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
    limit_rows = []
    for start in range(0, n_rows, per_block):
        stop = min(start + per_block, n_rows)
        bufs = [b[: stop - start] for b in scratch]
        block_out = None if out is None else out[start:stop]
        block = _block_wide if wide else _block_narrow
        m, log_sum = block(x2[start:stop], bufs, mode, block_out)
        m_all[start:stop], log_sum_all[start:stop] = m, log_sum
        if not np.isfinite(m).all():
            limit_rows.extend(start + np.flatnonzero(np.isinf(m)))
    if limit_rows:
        rows = np.asarray(limit_rows)
        log_sum_all[rows] = 0.0
        if out is not None:
            out[rows] = _limit_rows(np.asarray(x2[rows], dtype=np.float64), mode)
    return m_all, log_sum_all


def _rows_backward_np(block_fn, y, g, axis):
    """A row-wise backward formula over cache-sized blocks of rows: float64 scratch, one rounding to y's dtype."""
    y2, moved_shape = _as_rows_np(y, axis)
    g2, _ = _as_rows_np(g, axis)
    out = np.empty(y2.shape, dtype=y.dtype)
    n_rows, n = y2.shape
    if n and n_rows:
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


def _softmax_backward_block(y, g, gy):
    """g <- y (g - sum(g y)), the top entry as y_top sum_{j != top} y_j (g_top - g_j) (see softmax_backward)."""
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


def _log_softmax_backward_block(y, g, scratch):
    """g <- g - exp(y) sum(g), the top entry through expm1 (see log_softmax_backward)."""
    rows = np.arange(y.shape[0])
    total = g.sum(axis=1)
    top = np.argmax(y, axis=1)
    y_top, g_top = y[rows, top], g[rows, top]
    np.exp(y, out=scratch)
    scratch *= total[:, None]
    g -= scratch
    near_one = (g_top - total) - np.expm1(y_top) * total
    g[rows, top] = np.where(y_top > -LN2, near_one, g[rows, top])


def _top_and_max(w):
    """Index of each row's max (the first NaN if any: it poisons the row) and the max, shift-safe."""
    top = np.argmax(w, axis=1)
    m = w[np.arange(w.shape[0]), top]
    if np.isfinite(m).all():
        return top, m, m[:, None]
    shift = np.where(np.isinf(m), 0.0, m)  # an infinite max is patched later; shifting by it would make NaN
    return top, m, shift[:, None]


def _block_narrow(xb, bufs, mode, out):
    """float16/float32 rows: float64 is wide enough for x - m, no TwoSum needed."""
    w, e = bufs
    rows = np.arange(w.shape[0])
    np.copyto(w, xb)
    top, m, shift = _top_and_max(w)
    infinite = np.isinf(m)
    if infinite.any():
        w[infinite] = -np.inf  # silent placeholder rows; `_limit_rows` fills them in
    if mode == "softmax":
        w -= shift
        np.exp(w, out=w)
        w[rows, top] = 0.0
        s = w.sum(axis=1)
        w[rows, top] = 1.0
        w *= (1.0 / (1.0 + s))[:, None]  # two roundings in float64: far below a narrow ULP
        np.copyto(out, w)
        return m, np.log1p(s)
    w -= shift
    np.exp(w, out=e)
    e[rows, top] = 0.0
    log_sum = np.log1p(e.sum(axis=1))
    if mode == "log_softmax":
        w -= log_sum[:, None]
        with np.errstate(over="ignore"):  # below the dtype's range: -inf, the correctly rounded value
            np.copyto(out, w)
    return m, log_sum


def _block_wide(xb, bufs, mode, out):
    """float64 rows: d = x - m split exactly as hi + lo (TwoSum), terms exp(hi) * (1 + lo)."""
    hi, lo, e = bufs
    rows = np.arange(hi.shape[0])
    top, m, shift = _top_and_max(xb)
    _two_diff_into(xb, shift, hi, lo, e)
    infinite = np.isinf(m)
    if infinite.any():
        hi[infinite], lo[infinite] = -np.inf, 0.0  # silent placeholder rows; `_limit_rows` fills them in
    np.exp(hi, out=e)
    if mode == "log_softmax":
        e[rows, top] = 0.0
        log_sum = np.log1p(e.sum(axis=1) + np.einsum("ij,ij->i", e, lo))  # sum of exp(hi) (1 + lo)
        np.subtract(hi, log_sum[:, None], out=out)
        out += lo
        return m, log_sum
    np.multiply(e, lo, out=lo)
    e += lo
    e[rows, top] = 0.0
    s = e.sum(axis=1)
    if mode == "softmax":
        e[rows, top] = 1.0
        np.divide(e, (1.0 + s)[:, None], out=out)
    return m, np.log1p(s)


def _two_diff_into(x, shift, hi, lo, scratch):
    """hi = fl(x - shift) and lo = (x - shift) - hi exactly (TwoSum), into preallocated float64 blocks.

    Where hi is infinite (a -inf entry, or a difference beyond the float64 range) lo is -1:
    exp(hi) is 0 there, and exp(hi) * (1 + lo) stays 0 instead of 0 * NaN.
    """
    with np.errstate(invalid="ignore", over="ignore"):  # -inf - (-inf) inside TwoSum; x - m beyond range
        np.subtract(x, shift, out=hi)
        np.subtract(hi, x, out=scratch)  # b' = hi - x ~ -shift
        np.subtract(hi, scratch, out=lo)  # a' = hi - b'
        np.subtract(x, lo, out=lo)  # x - a'
        np.subtract(-shift, scratch, out=scratch)  # -shift - b'
        lo += scratch
    np.fmax(lo, -1.0, out=lo)  # NaN (infinite hi) -> -1; a finite lo is tiny


def _limit_rows(rows, mode):
    """Rows with an infinite max: the limit conventions (mass shared by the +inf entries, none for all -inf)."""
    xp = np if isinstance(rows, np.ndarray) else _torch()
    pos = rows == math.inf
    k = pos.sum(-1, keepdims=True) if xp is np else pos.sum(-1, keepdim=True)
    if mode == "softmax":
        return xp.where(k > 0, pos / xp.where(k > 0, k, 1), 0.0) if xp is np else \
            xp.where(k > 0, pos / k.clamp(min=1), xp.zeros_like(rows))
    if xp is np:
        return np.where(pos, -np.log(np.maximum(k, 1)), -np.inf)
    return xp.where(pos, -xp.log(k.clamp(min=1).to(rows.dtype)), xp.full_like(rows, -math.inf))


# ---------------------------------------------------------------- rows that cancel: extended / multiple precision

def _lse_exact_rows(rows, dtype):
    """logsumexp of float64 rows (finite max) that cancel: np.longdouble where its 11 extra bits suffice, else mpmath."""
    result = np.empty(rows.shape[0])
    pending = np.arange(rows.shape[0])
    if _exact.LONGDOUBLE is not None:
        m, log_sum = _lse_longdouble(rows)
        r = m + log_sum
        limit = _cancellation_limit(dtype, _exact.LONGDOUBLE_BITS, LOG_SUM_ERROR_UNITS)
        ok = (m >= 0) | (log_sum / limit <= np.abs(r))
        result[ok] = r[ok].astype(np.float64)
        pending = np.flatnonzero(~ok)
    target_bits = _precision_bits(dtype) + 3
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


# ---------------------------------------------------------------- torch kernels

def _torch():
    import torch

    return torch


def on_numpy(t) -> bool:
    """Whether tensor t takes the NumPy kernels: a CPU tensor shares its memory with a NumPy view.

    The blocked NumPy kernels keep their float64 scratch in cache; torch's CPU allocator hands out
    fresh pages for every float64 temporary, and its float64 exp is slower, so on the CPU the NumPy
    path is 2-3x faster. Other devices (CUDA) use the torch-op kernels below; NUMPY_ON_CPU = False
    sends CPU tensors there too (tests check both paths).
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


def _numpy_out_dtype(t):
    """The NumPy dtype a kernel writes for tensor t: t's own, or float64 for bfloat16 (rounded by torch once)."""
    return np.float64 if t.dtype == _torch().bfloat16 else None


def _parts_torch(x, dim):
    """(m, top, hi, lo, e) for a tensor: m the max (keepdim), hi + lo = x - m (lo None for narrow dtypes),
    e = exp(hi) * (1 + lo) with the max term set to 0. All float64."""
    torch = _torch()
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
    """lo = (x - shift) - hi exactly (TwoSum); -1 where hi is infinite (see `_two_diff_into`)."""
    b = hi - x
    lo = (x - (hi - b)).add_(-shift - b)
    return lo.nan_to_num_(nan=-1.0)


def _patch_limit_rows_torch(y, x, m, dim, mode):
    """Rows of y whose max m is infinite get the limit conventions (one host sync to find out if any)."""
    torch = _torch()
    bad = m.isinf()
    if not bool(bad.any()):
        return y
    x_rows = _backend.to_working(x).movedim(dim, -1)
    rows = bad.movedim(dim, -1).expand_as(x_rows)
    limit = _limit_rows(x_rows, mode)
    return torch.where(rows, limit.to(y.dtype), y.movedim(dim, -1)).movedim(-1, dim)


def _logsumexp64_torch(x, dim):
    """logsumexp along dim in float64 (keepdim), cancelling rows recomputed exactly."""
    torch = _torch()
    m, _, _, _, e = _parts_torch(x, dim)
    log_sum = e.sum(dim, keepdim=True).log1p_()
    log_sum = torch.where(m.isinf(), torch.zeros_like(log_sum), log_sum)  # inf max: e holds inf/NaN
    r = m + log_sum
    limit = _cancellation_limit(x.dtype, 53, LOG_SUM_ERROR_UNITS if x.dtype == torch.float64 else LOG_SUM_ERROR_UNITS_NARROW)
    cancels = ((m < 0) & (log_sum / limit > r.abs())).movedim(dim, -1).flatten()
    rows = _exact.flagged(cancels)
    if rows.size:
        x_rows, _ = _exact.flatten_rows(x, dim)
        fixed = _lse_exact_rows(_exact.rows_to_numpy(x_rows, rows), x.dtype)
        r_rows = r.movedim(dim, -1).reshape(-1, 1).clone()
        _exact.put_rows(r_rows, rows, fixed[:, None])
        r = r_rows.reshape(r.movedim(dim, -1).shape).movedim(-1, dim)
    return r


def _softmax64(x, dim):
    """softmax along dim as a float64 tensor or array, accurate for x's dtype; differentiable for tensors."""
    if not _backend.is_tensor(x):
        return _rows_np(x, dim, "softmax", np.float64)
    torch = _torch()
    if on_numpy(x) and not (torch.is_grad_enabled() and x.requires_grad):
        return from_numpy(_rows_np(numpy_view(x), dim, "softmax", np.float64), torch.float64)
    if x.dtype == torch.float64:
        return _functions().Softmax.apply(x, dim)
    # narrow dtypes: torch's fused float64 softmax errs by a few 2**-53, far below their ULP
    y = torch.softmax(_backend.to_working(x), dim)
    return _patch_limit_rows_torch(y, x, x.detach().amax(dim, keepdim=True), dim, "softmax")


def _softmax_torch(x, dim):
    """softmax forward (no graph) in x's dtype."""
    torch = _torch()
    if on_numpy(x):
        return from_numpy(_rows_np(numpy_view(x), dim, "softmax", _numpy_out_dtype(x)), x.dtype)
    if x.dtype != torch.float64:
        return _softmax64(x, dim).to(x.dtype)
    m, top, _, _, e = _parts_torch(x, dim)
    s = e.sum(dim, keepdim=True)
    e.scatter_(dim, top, 1.0)
    return _patch_limit_rows_torch(e.div_(s.add_(1.0)), x, m, dim, "softmax")


def _log_softmax_torch(x, dim):
    """log_softmax forward (no graph) in x's dtype."""
    if on_numpy(x):
        return from_numpy(_rows_np(numpy_view(x), dim, "log_softmax", _numpy_out_dtype(x)), x.dtype)
    return _log_softmax64_torch(x, dim).to(x.dtype)


def _log_softmax64_torch(x, dim):
    """log_softmax (no graph) as a float64 tensor, accurate for x's dtype."""
    torch = _torch()
    if on_numpy(x):
        return from_numpy(_rows_np(numpy_view(x), dim, "log_softmax", np.float64), torch.float64)
    if x.dtype != torch.float64:
        # torch's fused float64 kernel is within 2**-53 absolute; rows whose winner has a log-sum
        # below TORCH_FUSED_MIN_LOG_SUM (one logit dominates) take the log1p path
        m, top = x.detach().max(dim, keepdim=True)
        y = torch.log_softmax(_backend.to_working(x), dim)
        small = (y.gather(dim, top) > -TORCH_FUSED_MIN_LOG_SUM) & ~m.isnan()
        if bool(small.any()):
            _, _, hi, _, e = _parts_torch(x, dim)
            y = torch.where(small, hi - e.sum(dim, keepdim=True).log1p_(), y)
        return _patch_limit_rows_torch(y, x, m, dim, "log_softmax")
    m, _, hi, lo, e = _parts_torch(x, dim)
    y = (hi - e.sum(dim, keepdim=True).log1p_()).add_(lo)
    return _patch_limit_rows_torch(y, x, m, dim, "log_softmax")


# ---------------------------------------------------------------- torch autograd Functions

@functools.cache
def _functions():
    """The autograd Functions, built on first use (a tensor exists, so torch is imported already)."""
    torch = _torch()

    class LogSumExp(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, dim, keepdim):
            ctx.save_for_backward(x)
            ctx.dim, ctx.keepdim = dim, keepdim
            if on_numpy(x):
                return from_numpy(_logsumexp_np(numpy_view(x), dim, keepdim, _numpy_out_dtype(x)), x.dtype)
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

    return types.SimpleNamespace(LogSumExp=LogSumExp, Softmax=Softmax, LogSoftmax=LogSoftmax)
