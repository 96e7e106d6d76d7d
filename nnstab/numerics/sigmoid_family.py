"""Sigmoid, log-sigmoid and softplus (and their derivatives) for NumPy arrays and torch tensors, to the last bit.

All three are built on e = exp(-|x|), which lies in [0, 1] and never overflows:

    sigmoid(x)     = 1 / (1 + exp(-x))                  (exp(x) where exp(-x) would overflow)
    softplus(x)    = max(x, 0) + log1p(exp(-|x|))
    log_sigmoid(x) = min(x, 0) - log1p(exp(-|x|))       = -softplus(-x)
    sigmoid'(x)    = sigmoid(x) * sigmoid(-x)           = e / (1 + e (2 + e))
    softplus'(x)   = sigmoid(x),   log_sigmoid'(x) = sigmoid(-x)

plus sigmoid(x) - t, the derivative of binary cross-entropy with logits, which cancels for a soft
target t near sigmoid(x) and is then recomputed in extended precision.

Values are computed in float64 and rounded once to the input dtype (see nnstab._backend). NumPy
arrays are evaluated in cache-sized blocks (`map_blocks`), so the few float64 temporaries stay in
cache and a float32 input is never copied whole into float64; within a block NumPy does exp and
log1p and fused loops (nnstab.numerics._fused) the rest. CPU tensors (not bfloat16) run the same
blocks on zero-copy NumPy views (`on_numpy_kernels`); other devices use torch ops.
"""
from __future__ import annotations

import functools
import types

import numpy as np

from nnstab import _backend
from nnstab.numerics import _exact, validate
from nnstab.numerics._lazy import lazy_module
from nnstab.numerics.softmax_family import on_numpy

_fused = lazy_module("nnstab.numerics._fused")  # numba is imported with the first fused loop

# Below -708 the sigmoid is subnormal in float64, and below -709.78 exp(-x) overflows so that
# 1 / (1 + exp(-x)) flushes to 0. For every x < -37, 1 + exp(x) rounds to 1 (exp(-37) < 2**-53), so
# sigmoid(x) = exp(x) / (1 + exp(x)) equals exp(x) to the last bit: float64 entries below this
# threshold take exp(x) and keep their subnormal digits. (Narrow inputs need no fix: their results
# there round to 0 anyway.)
SIGMOID_IS_EXP_BELOW = -708.0

# torch's softplus kernel returns x itself above `threshold`; above 37 that is exact in float64
# (log1p(exp(-x)) < 2**-53 <= half an ULP of x), and below it log1p(exp(x)) cannot overflow.
TORCH_SOFTPLUS_THRESHOLD = 37.0

# Elements per NumPy block: a float64 scratch block (256 KiB) stays in the per-core L2 cache.
BLOCK = 1 << 15

_ONE = np.ones(1)  # the weight of a plain sigmoid in the fused loop that also serves grad_output * sigmoid


# ---------------------------------------------------------------- public functions

def sigmoid(x):
    """The logistic function 1 / (1 + exp(-x)), as an array or tensor like x.

    Formula: 1 / (1 + exp(-x)) in float64, rounded once. exp(-x) >= 0 makes the denominator a
    same-sign sum (no cancellation), and its overflow for x < -709.78 is harmless (1/inf = 0)
    except in float64, whose results there are subnormal: those entries take exp(x), equal to
    sigmoid(x) to the last bit below -37 (SIGMOID_IS_EXP_BELOW), so gradual underflow is kept
    where scipy.special.expit and torch.sigmoid flush to 0. Derivative: `sigmoid_backward`.
    """
    x = validate.check_float_array(x, "x")
    if _backend.is_tensor(x):
        return _functions().Sigmoid.apply(dense(x))
    return _scalar_if_0d(_sigmoid_np(x, sign=1.0))


def log_sigmoid(x):
    """log(sigmoid(x)) = min(x, 0) - log1p(exp(-|x|)), as an array or tensor like x.

    Both terms are <= 0, so the sum never cancels; log1p keeps the digits of the tiny correction
    where log(1 + e) would round 1 + e first (x > 37 gives -exp(-x) exactly, x < -745 gives x).
    Derivative: sigmoid(-x) (`log_sigmoid_backward`).
    """
    x = validate.check_float_array(x, "x")
    if _backend.is_tensor(x):
        return _functions().LogSigmoid.apply(dense(x))
    return _scalar_if_0d(_softplus_np(x, sign=-1.0))


def softplus(x):
    """log(1 + exp(x)) = max(x, 0) + log1p(exp(-|x|)), as an array or tensor like x.

    A same-sign sum (no cancellation) whose exp never overflows, unlike log(1 + exp(x)), and whose
    log1p keeps subnormal results for x < -708 (softplus(x) = exp(x) there).
    Derivative: sigmoid(x) (`softplus_backward`).
    """
    x = validate.check_float_array(x, "x")
    if _backend.is_tensor(x):
        return _functions().Softplus.apply(dense(x))
    return _scalar_if_0d(_softplus_np(x, sign=1.0))


def sigmoid_backward(x, grad_output):
    """grad_output * sigmoid'(x), with sigmoid'(x) = sigmoid(x) sigmoid(-x) = e / (1 + e)**2, e = exp(-|x|).

    Never s * (1 - s): for x > 37 the rounded s is 1 and 1 - s loses every digit (the true
    derivative is about exp(-x)). e / (1 + e)**2 is even in x, has no cancellation, and keeps
    subnormal results; its denominator is formed as 1 + e (2 + e), which rounds once less in
    its leading part (worst error 2.4 instead of 3.7 float64 ULP). Returned in x's dtype.
    torch: the second derivative is -sigmoid'(x) tanh(x / 2) (double backward).
    """
    x, g = _check_backward_args(x, grad_output)
    if _backend.is_tensor(x):
        return _functions().SigmoidGrad.apply(x, g)
    return _scalar_if_0d(map_blocks(_sigmoid_grad_block, (x, g), x.dtype, n_scratch=2))


def log_sigmoid_backward(x, grad_output):
    """grad_output * sigmoid(-x), the derivative of log_sigmoid, computed without 1 - sigmoid(x)."""
    x, g = _check_backward_args(x, grad_output)
    if _backend.is_tensor(x):
        return _sigmoid_times_torch(x, g, sign=-1.0)
    return _scalar_if_0d(_sigmoid_np(x, sign=-1.0, grad_output=g))


def softplus_backward(x, grad_output):
    """grad_output * sigmoid(x), the derivative of softplus."""
    x, g = _check_backward_args(x, grad_output)
    if _backend.is_tensor(x):
        return _sigmoid_times_torch(x, g, sign=1.0)
    return _scalar_if_0d(_sigmoid_np(x, sign=1.0, grad_output=g))


def _check_backward_args(x, grad_output):
    x = validate.check_float_array(x, "x")
    g = validate.check_float_array(grad_output, "grad_output")
    validate.check_same_kind(x, g, ("x", "grad_output"))
    validate.check_same_shape(x, g, ("x", "grad_output"))
    return dense(x), dense(g)


def dense(x):
    """A tensor in contiguous memory (NumPy arrays as they are).

    torch evaluates exp, log1p and friends with vectorised kernels on contiguous memory and with
    scalar ones on strided views, and the two round differently (by up to a float64 ULP): without
    this a view (x[:, ::2], x.t(), x.expand(...)) would not give bit for bit what its copy gives.
    """
    return x.contiguous() if _backend.is_tensor(x) else x


def _scalar_if_0d(y):
    """A 0-d NumPy result becomes a NumPy scalar, as NumPy's own ufuncs return."""
    return y[()] if isinstance(y, np.ndarray) and y.ndim == 0 else y


# ---------------------------------------------------------------- NumPy: blocked evaluation

def map_blocks(kernel, arrays, out_dtype, n_scratch=1):
    """Evaluate `kernel(out_block, *array_blocks, *scratch_blocks)` over flat, cache-sized blocks.

    The arrays share one shape (0-d entries after a first of another shape are passed whole to every
    block, as scalars); the kernel writes its result into out_block (of `out_dtype`, so its last ufunc
    rounds float64 to the output dtype once) and may use the float64 scratch blocks. Blocks run in order.
    """
    out = np.empty(arrays[0].shape, dtype=out_dtype)
    flat_out = out.reshape(-1)
    for blocks in _blocks(arrays, n_scratch):
        kernel(flat_out[blocks.start:blocks.stop], *blocks.args)
    return out


def sum_blocks(kernel, arrays, n_scratch=1):
    """The float64 sum of the values `kernel(values_block, *array_blocks, *scratch_blocks)` writes.

    values_block is float64 scratch; each block is summed pairwise (np.sum), then the block sums
    are: the same accuracy as one pairwise np.sum of all the values. A kernel may instead return
    its block's sum itself.
    """
    partial = [0.0]
    for blocks in _blocks(arrays, n_scratch + 1):
        values, *rest = blocks.scratch
        block_sum = kernel(values, *blocks.inputs, *rest)
        partial.append(values.sum() if block_sum is None else block_sum)
    return np.sum(partial, dtype=np.float64)


def _blocks(arrays, n_scratch):
    # Arrays of the first one's shape go block by block (0-d ones too: a 0-d `out=` operand cannot take a
    # block of shape (1,)); other 0-d entries are scalars passed whole.
    flats = [np.ravel(a) if np.ndim(a) or np.shape(a) == np.shape(arrays[0]) else a for a in arrays]
    n = flats[0].size
    scratch = [np.empty(min(n, BLOCK)) for _ in range(n_scratch)]
    for start in range(0, n, BLOCK):
        stop = min(start + BLOCK, n)
        inputs = [a[start:stop] if np.ndim(a) else a for a in flats]
        blocks = [s[: stop - start] for s in scratch]
        yield types.SimpleNamespace(start=start, stop=stop, inputs=inputs, scratch=blocks, args=inputs + blocks)


# ---------------------------------------------------------------- NumPy kernels

def _sigmoid_np(x, sign, grad_output=None):
    """sigmoid(sign * x) (times grad_output when given), rounded once to x's dtype."""
    arrays = (x,) if grad_output is None else (x, grad_output)
    with np.errstate(over="ignore"):  # exp(-x) = inf is expected: 1 / (1 + inf) = 0
        y = map_blocks(functools.partial(_sigmoid_block, sign=sign), arrays, x.dtype)
    if x.dtype == np.float64 and x.size:
        _keep_subnormal_sigmoid(y, x, sign, grad_output)
    return y


def _sigmoid_block(out, x, *rest, sign):
    *g, buf = rest
    if _fused.has_dtypes(out, x, *map(np.asarray, g)):
        _fused.scaled(x, -sign, buf)  # exact: a sign flip
        np.exp(buf, out=buf)
        _fused.weight_over_one_plus(buf, np.ravel(g[0]) if g else _ONE, out)
        return
    np.multiply(x, -sign, out=buf, dtype=np.float64)  # exact: a sign flip
    np.exp(buf, out=buf)
    buf += 1.0
    if g:
        np.divide(g[0], buf, out=out, dtype=np.float64)
    else:
        np.divide(1.0, buf, out=out)


def _keep_subnormal_sigmoid(y, x, sign, grad_output):
    """Redo the float64 entries where sigmoid(sign * x) is below 2**-1022: sigmoid(z) = exp(z) there."""
    z_min = -np.fmax.reduce(x, axis=None) if sign < 0 else np.fmin.reduce(x, axis=None)  # NaN-blind
    if not z_min < SIGMOID_IS_EXP_BELOW:
        return
    z = sign * x
    low = z < SIGMOID_IS_EXP_BELOW
    y[low] = np.exp(z[low]) if grad_output is None else grad_output[low] * np.exp(z[low])


def _softplus_np(x, sign):
    """sign * softplus(sign * x): softplus(x) for sign = 1, log_sigmoid(x) for sign = -1."""
    return map_blocks(functools.partial(_softplus_block, sign=sign), (x,), x.dtype, n_scratch=2)


def _softplus_block(out, x, buf, edge, *, sign):
    if _fused.has_dtypes(out, x):
        _fused.neg_abs(x, buf)
        np.exp(buf, out=buf)  # e = exp(-|x|) in [0, 1]: no overflow; underflow to subnormals is wanted
        np.log1p(buf, out=buf)
        _fused.softplus_values(x, buf, sign, out)
        return
    np.abs(x, out=buf, dtype=np.float64)
    np.negative(buf, out=buf)
    np.exp(buf, out=buf)  # e = exp(-|x|) in [0, 1]: no overflow; underflow to subnormals is wanted
    np.log1p(buf, out=buf)
    if sign > 0:
        np.maximum(x, 0.0, out=edge, dtype=np.float64)
        np.add(edge, buf, out=out)
    else:
        np.minimum(x, 0.0, out=edge, dtype=np.float64)
        np.subtract(edge, buf, out=out)


def _sigmoid_grad_block(out, x, g, e, d):
    if _fused.has_dtypes(out, x, g) and np.ndim(g):
        _fused.neg_abs(x, e)
        np.exp(e, out=e)  # e = exp(-|x|) in [0, 1]
        _fused.sigmoid_grad_values(e, g, out)
        return
    np.abs(x, out=e, dtype=np.float64)
    np.negative(e, out=e)
    np.exp(e, out=e)  # e = exp(-|x|) in [0, 1]
    np.add(e, 2.0, out=d)  # (1 + e)**2 as 1 + e (2 + e): one rounding less in the larger part
    d *= e
    d += 1.0
    np.multiply(e, g, out=e, dtype=np.float64)
    np.divide(e, d, out=out)


# ---------------------------------------------------------------- torch kernels (float64 working type)

def _sigmoid_torch(x, sign=1.0):
    """sigmoid(sign * x) in float64 (torch.sigmoid: 1 / (1 + exp(-z)), plus the subnormal range)."""
    import torch

    z = _backend.to_working(x)
    if sign < 0:
        z = -z
    y = torch.sigmoid(z)
    if x.dtype == torch.float64:
        y = torch.where(z < SIGMOID_IS_EXP_BELOW, torch.exp(z), y)
    return y


def _sigmoid_times_torch(x, g, sign):
    """grad_output * sigmoid(sign * x), differentiable when a graph is being built (double backward)."""
    import torch

    if torch.is_grad_enabled() and (x.requires_grad or g.requires_grad):
        return g * _functions().Sigmoid.apply(sign * x)
    if on_numpy_kernels(x, g):
        return _tensor(_sigmoid_np(_view(x), sign, grad_output=_view(g)))
    return (_sigmoid_torch(x, sign) * g).to(x.dtype)


# ---------------------------------------------------------------- CPU tensors on the NumPy kernels

def on_numpy_kernels(*tensors) -> bool:
    """Whether these tensors run the NumPy kernels on zero-copy views: CPU tensors of a NumPy dtype.

    NumPy's float64 exp and log are SIMD kernels, several times faster than torch's float64 ones
    on the CPU, and the blocked kernels keep their float64 scratch in cache. bfloat16 (no NumPy
    dtype: its results must round once from float64) and other devices use the torch ops.
    """
    bfloat16 = _backend.torch_module().bfloat16  # a tensor exists: torch is imported
    return all(on_numpy(t) and t.dtype != bfloat16 for t in tensors)


def _view(t):
    """A NumPy view of a CPU tensor (0-d tensors as 0-d arrays)."""
    return t.detach().numpy()


def _tensor(a):
    """A tensor sharing the memory of a NumPy result (a NumPy scalar becomes a 0-d tensor)."""
    import torch

    return torch.from_numpy(np.asarray(a))


def _softplus_torch(x, sign=1.0):
    """sign * softplus(sign * x) in float64.

    torch's softplus kernel computes log1p(exp(z)) below its threshold, exactly the formula
    above for z <= 0 and a same-sign form for 0 < z <= 37 (log1p(E) with E = exp(z) >= 1 has
    a relative condition number <= 1/log 2); above the threshold it returns z.
    """
    import torch.nn.functional as F

    z = _backend.to_working(x)
    if sign < 0:
        return -F.softplus(-z, beta=1.0, threshold=TORCH_SOFTPLUS_THRESHOLD)
    return F.softplus(z, beta=1.0, threshold=TORCH_SOFTPLUS_THRESHOLD)


def _sigmoid_grad_torch(x, g):
    """g * e / (1 + e (2 + e)) with e = exp(-|x|), in float64."""
    import torch

    e = torch.exp(-_backend.to_working(x).abs())
    return g * e / (2.0 + e).mul_(e).add_(1.0)


# ---------------------------------------------------------------- sigmoid(x) - t (d bce_logits / dx)

# sigmoid(x) - t cancels for a soft target close to sigmoid(x). The float64 path errs by about 1.5
# float64 ULPs of q = sigmoid(-|x|); where |sigmoid(x) - t| < RECOMPUTE_BELOW[dtype] * q that would
# exceed the dtype's ULP bound, so those entries are redone in extended precision. (float64 bound 4:
# |r| >= q keeps the error near 2.5 ULP; narrow dtypes only need 6 * 2**(p - 52), p their precision.)
RECOMPUTE_BELOW = {"float64": 1.0, "float32": 2.0**-25, "float16": 2.0**-38, "bfloat16": 2.0**-41}
# _exact.LONGDOUBLE carries this many bits beyond float64 (11 on x86), so it serves entries down to
# RECOMPUTE_BELOW * 2**-bits * q; closer cancellations go to mpmath.
LONGDOUBLE_EXTRA_BITS = _exact.LONGDOUBLE_BITS - 53 if _exact.LONGDOUBLE is not None else 0


def _sigmoid_minus_block(out, x, t, w, close, q, r, *, ratio):
    """out = w (sigmoid(x) - t), r = sigmoid(x) - t as (1 - t) - q for x >= 0 and -(t - q) for x < 0."""
    if _fused.has_dtypes(out, x, t, np.asarray(w)):
        _fused.neg_abs(x, q)
        np.exp(q, out=q)
        _fused.sigmoid_minus(x, t, q, np.ravel(w), ratio, out, close)
        return
    np.abs(x, out=q, dtype=np.float64)
    np.negative(q, out=q)
    np.exp(q, out=q)
    np.add(q, 1.0, out=r)
    np.divide(q, r, out=q)  # q = sigmoid(-|x|) = e / (1 + e), subnormals kept
    neg = x < 0
    np.subtract(1.0, t, out=r, dtype=np.float64)
    np.copyto(r, t, where=neg, casting="same_kind")
    r -= q
    np.negative(r, out=r, where=neg)
    np.less(np.abs(r), ratio * q, out=close)
    np.multiply(r, w, out=out, dtype=np.float64)


def _sigmoid_minus_exact(x, t, dtype_name):
    """sigmoid(x) - t for 1-d float64 x, t that cancel: np.longdouble, then mpmath for what is left."""
    x, t = np.asarray(x, dtype=np.float64), np.asarray(t, dtype=np.float64)
    out = np.empty(x.shape)
    deep = np.ones(x.shape, dtype=bool)
    if LONGDOUBLE_EXTRA_BITS >= 8:
        xl, tl = x.astype(_exact.LONGDOUBLE), t.astype(_exact.LONGDOUBLE)
        with np.errstate(over="ignore", under="ignore"):
            e = np.exp(-np.abs(xl))
        q = e / (1 + e)
        r = np.where(xl < 0, q - tl, (1 - tl) - q)
        deep = np.abs(r) < RECOMPUTE_BELOW[dtype_name] * 2.0**-LONGDOUBLE_EXTRA_BITS * q
        out[~deep] = r[~deep]
    out[deep] = [_exact.to_float64(_exact.adaptive_mp(functools.partial(_sigmoid_minus_mp, a, b), 64))
                 for a, b in zip(x[deep].tolist(), t[deep].tolist())]
    return out


def _sigmoid_minus_mp(x, t):
    """(sigmoid(x) - t, scale) = tanh(x/2)/2 + (1/2 - t): exact for x near 0 (sigmoid(x) - 1/2 = x/4
    for tiny x, where 1/(1 + exp(-x)) would need hundreds of digits); zero only with scale 0."""
    import mpmath

    half_tanh, offset = mpmath.tanh(mpmath.mpf(x) / 2) / 2, mpmath.mpf(0.5) - t
    return half_tanh + offset, abs(half_tanh) + abs(offset)


def _sigmoid_minus_torch(x, t):
    """sigmoid(x) - t in float64 from q = sigmoid(-|x|), with the cancelling entries redone exactly."""
    import torch

    x64, t64 = _backend.to_working(x), _backend.to_working(t)
    a = x64.abs()
    q = torch.sigmoid(-a)
    if x.dtype == torch.float64:
        q = torch.where(a > -SIGMOID_IS_EXP_BELOW, torch.exp(-a), q)
    neg = x64 < 0
    r = torch.where(neg, t64, 1.0 - t64) - q
    r = torch.where(neg, -r, r)
    name = _dtype_name(x.dtype)
    close = r.abs() < RECOMPUTE_BELOW[name] * q
    if close.any():  # rare outside float64; a host round trip for those entries only
        exact = _sigmoid_minus_exact(x64[close].cpu().numpy(), t64[close].cpu().numpy(), name)
        r[close] = torch.from_numpy(exact).to(r.device)
    return r


def _dtype_name(dtype):
    return str(dtype).rsplit(".", 1)[-1]


# ---------------------------------------------------------------- torch autograd Functions

@functools.cache
def _functions():
    """The autograd Functions, built on first use (a tensor exists, so torch is imported already)."""
    import torch

    class Sigmoid(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            if on_numpy_kernels(x):
                return _tensor(_sigmoid_np(_view(x), sign=1.0))
            return _sigmoid_torch(x).to(x.dtype)

        @staticmethod
        def backward(ctx, grad_output):
            (x,) = ctx.saved_tensors
            return SigmoidGrad.apply(x, grad_output)

    class SigmoidGrad(torch.autograd.Function):
        """(x, g) -> g * sigmoid'(x); its own backward uses sigmoid''(x) = -sigmoid'(x) * tanh(x / 2)."""

        @staticmethod
        def forward(ctx, x, g):
            ctx.save_for_backward(x, g)
            if on_numpy_kernels(x, g) and x.shape == g.shape:
                xv = _view(x)
                return _tensor(map_blocks(_sigmoid_grad_block, (xv, _view(g)), xv.dtype, n_scratch=2))
            return _sigmoid_grad_torch(x, g).to(x.dtype)

        @staticmethod
        def backward(ctx, gg):
            x, g = ctx.saved_tensors
            dx = dg = None
            if ctx.needs_input_grad[0]:
                dx = -SigmoidGrad.apply(x, gg * g) * torch.tanh(0.5 * x)
            if ctx.needs_input_grad[1]:
                dg = SigmoidGrad.apply(x, gg).to(g.dtype)
            return dx, dg

    class LogSigmoid(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            if on_numpy_kernels(x):
                return _tensor(_softplus_np(_view(x), sign=-1.0))
            return _softplus_torch(x, sign=-1.0).to(x.dtype)

        @staticmethod
        def backward(ctx, grad_output):
            (x,) = ctx.saved_tensors
            return _sigmoid_times_torch(x, grad_output, sign=-1.0)

    class Softplus(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            if on_numpy_kernels(x):
                return _tensor(_softplus_np(_view(x), sign=1.0))
            return _softplus_torch(x).to(x.dtype)

        @staticmethod
        def backward(ctx, grad_output):
            (x,) = ctx.saved_tensors
            return _sigmoid_times_torch(x, grad_output, sign=1.0)

    return types.SimpleNamespace(Sigmoid=Sigmoid, SigmoidGrad=SigmoidGrad, LogSigmoid=LogSigmoid, Softplus=Softplus)
