"""Elementwise losses: binary cross-entropy (from probabilities or logits) and mean squared error, with gradients.

Per element, for a target t in [0, 1]:

    bce(p, t)          = -(t log p + (1 - t) log1p(-p))          0 log 0 = 0 (xlogy)
    bce_logits(x, t)   = max(x, 0) (1 - t) - min(x, 0) t + log1p(exp(-|x|))
    mse(p, t)          = (p - t)**2

    d bce / dp         = (p - t) / (p (1 - p))
    d bce_logits / dx  = sigmoid(x) - t  =  (1 - t) - q for x >= 0,  -(t - q) for x < 0,  q = sigmoid(-|x|)
    d mse / dp         = 2 (p - t)

Values are computed in float64, reduced ("none", "mean", "sum") in float64, and rounded once to the
dtype of the first argument. NumPy arrays, and CPU tensors through zero-copy views (not bfloat16),
run blocked NumPy kernels with fused loops (nnstab.numerics._fused); other devices use torch ops. Gradients take grad_output of the loss's shape ("none") or a scalar
("mean", "sum") and return an array like the first argument.
"""
from __future__ import annotations

import functools
import types

import numpy as np

from nnstab import _backend
from nnstab.numerics import validate
from nnstab.numerics._lazy import lazy_module
from nnstab.numerics.reduce import reduce_loss
from nnstab.numerics.sigmoid_family import (
    RECOMPUTE_BELOW,
    TORCH_SOFTPLUS_THRESHOLD,
    _scalar_if_0d,
    dense,
    map_blocks,
    sum_blocks,
)
from nnstab.numerics.sigmoid_family import _functions as _sigmoid_functions
from nnstab.numerics.sigmoid_family import _sigmoid_minus_block, _sigmoid_minus_exact, _sigmoid_minus_torch, _tensor, _view, \
    on_numpy_kernels

_fused = lazy_module("nnstab.numerics._fused")  # numba is imported with the first fused loop

# A float64 sum of losses (all >= 0) that overflows while their mean would not is redone on values
# scaled by this power of two (exact), which keeps sums of up to 2**64 maximal values in range.
OVERFLOW_RESCALE = 2.0**-64


# ---------------------------------------------------------------- public functions

def binary_cross_entropy(probs, target, reduction="mean"):
    """-(t log p + (1 - t) log1p(-p)), reduced; probs and target in [0, 1].

    Both terms are >= 0, so the sum never cancels, and log1p(-p) keeps the digits of log(1 - p)
    for small p, where 1 - p would round first. 0 log 0 = 0 (xlogy), and the value is exact
    where it is infinite: p = 0 with t > 0 (or p = 1 with t < 1) gives inf. torch instead clamps
    each log at -100, which caps the loss and hides the saturation; the stable fix for a model
    is to pass logits to `binary_cross_entropy_with_logits`.
    """
    reduction = validate.check_reduction(reduction)
    p, t = _check_pair(probs, target, ("probs", "target"))
    p_lo, p_hi = _check_probabilities(p, "probs")
    _check_probabilities(t, "target")
    at_ends = p_lo == 0 or p_hi == 1  # where 0 log 0 (and 0/0 in the derivative) can arise
    if _backend.is_tensor(p):
        return _functions().BCE.apply(p, t, reduction, at_ends)
    return _bce_np(p, t, reduction, at_ends)


def binary_cross_entropy_with_logits(logits, target, reduction="mean"):
    """t softplus(-x) + (1 - t) softplus(x) = max(x, 0) (1 - t) - min(x, 0) t + log1p(exp(-|x|)), reduced.

    The textbook max(x, 0) - x t + log1p(exp(-|x|)) is exact for hard labels but cancels when x t
    is close to max(x, 0) (x > 0, soft t near 1). Split by the sign of x, one product is 0 and the
    terms are all >= 0, so hard and soft targets keep every digit, and exp(-|x|) <= 1 never
    overflows. torch's (1 - t) x - log_sigmoid(x) cancels for large |x|. target in [0, 1].
    """
    reduction = validate.check_reduction(reduction)
    x, t = _check_pair(logits, target, ("logits", "target"))
    _check_probabilities(t, "target")
    if _backend.is_tensor(x):
        return _functions().BCEWithLogits.apply(x, t, reduction, None)
    return _bce_logits_np(x, t, reduction)


def mse(pred, target, reduction="mean"):
    """(pred - target)**2, reduced.

    The difference of two floats rounds once (no cancellation of rounded values) and squares are
    >= 0, so the float64 sum keeps its digits; a float64 sum that overflows although the mean
    would not is redone scaled (OVERFLOW_RESCALE).
    """
    reduction = validate.check_reduction(reduction)
    p, t = _check_pair(pred, target, ("pred", "target"))
    if _backend.is_tensor(p):
        return _functions().MSE.apply(p, t, reduction, None)
    return _mse_np(p, t, reduction)


def binary_cross_entropy_backward(probs, target, grad_output, reduction="mean"):
    """d loss / d probs = w (p - t) / (p (1 - p)), w = grad_output (/ n for "mean").

    p - t and 1 - p round once each, so nothing cancels. At the ends the 0 log 0 term drops out:
    p = 0 gives w for t = 0 and -inf for t > 0; p = 1 gives -w for t = 1 and +inf for t < 1.
    (torch divides by max(p (1 - p), 1e-12) instead.)
    """
    reduction = validate.check_reduction(reduction)
    p, t = _check_pair(probs, target, ("probs", "target"))
    p_lo, p_hi = _check_probabilities(p, "probs")
    _check_probabilities(t, "target")
    w = _grad_weight(p, grad_output, reduction)
    if _backend.is_tensor(p):
        return _bce_grad_torch(p, t, w, p_lo == 0 or p_hi == 1).to(p.dtype)
    return _scalar_if_0d(_bce_grad_np(p, t, w))


def binary_cross_entropy_with_logits_backward(logits, target, grad_output, reduction="mean"):
    """d loss / d logits = w (sigmoid(x) - t), w = grad_output (/ n for "mean").

    With q = sigmoid(-|x|) <= 1/2, sigmoid(x) - t = (1 - t) - q for x >= 0 and -(t - q) for x < 0:
    hard targets never cancel (t = 1, x > 37 gives -q, where sigmoid(x) - 1 is 0). A soft target
    close to sigmoid(x) cancels inherently; those entries (RECOMPUTE_BELOW) are redone in extended
    precision, np.longdouble or mpmath (`_sigmoid_minus_exact`).
    """
    reduction = validate.check_reduction(reduction)
    x, t = _check_pair(logits, target, ("logits", "target"))
    _check_probabilities(t, "target")
    w = _grad_weight(x, grad_output, reduction)
    if _backend.is_tensor(x):
        return _bce_logits_grad_torch(x, t, w)
    return _scalar_if_0d(_bce_logits_grad_np(x, t, w))


def mse_backward(pred, target, grad_output, reduction="mean"):
    """d loss / d pred = 2 w (pred - target), w = grad_output (/ n for "mean")."""
    reduction = validate.check_reduction(reduction)
    p, t = _check_pair(pred, target, ("pred", "target"))
    w = _grad_weight(p, grad_output, reduction)
    if _backend.is_tensor(p):
        return _mse_grad_torch(p, t, w).to(p.dtype)
    return _scalar_if_0d(_mse_grad_np(p, t, w))


# ---------------------------------------------------------------- arguments

def _check_pair(a, b, names):
    a = validate.check_float_array(a, names[0])
    b = validate.check_float_array(b, names[1])
    validate.check_same_kind(a, b, names)
    validate.check_same_shape(a, b, names)
    return dense(a), dense(b)  # a view gives bit for bit what its copy gives (see sigmoid.dense)


def _check_probabilities(p, name):
    """(min, max) of p after checking that it lies in [0, 1]; NaN entries pass (they propagate)."""
    tensor = _backend.is_tensor(p)
    if (p.numel() if tensor else p.size) == 0:
        return 0.5, 0.5
    if tensor:
        import torch

        lo, hi = (float(v) for v in torch.aminmax(p.detach()))  # one pass, one host sync
    else:
        lo, hi = float(p.min()), float(p.max())
    if lo >= 0 and hi <= 1:
        return lo, hi
    if lo != lo or hi != hi:  # NaN hides the range: look again without it
        lo, hi = (float(v) for v in _nan_blind_range(p))
        if lo != lo or (lo >= 0 and hi <= 1):
            return lo, hi
    fix = ("pass logits to binary_cross_entropy_with_logits instead, or clip probs into [0, 1]" if name == "probs"
           else f"use labels 0/1 or soft labels in [0, 1] (for -1/+1 labels pass ({name} + 1) / 2)")
    raise ValueError(f"{name} must hold probabilities in [0, 1], got values in [{lo:g}, {hi:g}]; {fix}")


def _nan_blind_range(p):
    if _backend.is_tensor(p):
        import torch

        finite = p.detach()[~torch.isnan(p.detach())]
        return torch.aminmax(finite) if finite.numel() else (float("nan"), float("nan"))
    return np.fmin.reduce(p, axis=None), np.fmax.reduce(p, axis=None)


def _grad_weight(x, grad_output, reduction):
    """The float64 weight of each element's derivative: grad_output (an array of x's shape for
    "none", else a scalar), divided by the element count for "mean"."""
    tensor = _backend.is_tensor(x)
    if isinstance(grad_output, (int, float)) and not isinstance(grad_output, bool) and reduction != "none":
        g = np.float64(grad_output)
    else:
        g = validate.check_float_array(grad_output, "grad_output")
        validate.check_same_kind(x, g, ("the loss input", "grad_output"))
        if reduction == "none":
            validate.check_same_shape(x, g, ("the loss (reduction='none')", "grad_output"))
            return g
        if tuple(g.shape) != ():
            raise ValueError(f"grad_output must be a scalar for reduction={reduction!r} (the loss is a scalar), "
                             f"got shape {tuple(g.shape)}; pass reduction='none' for per-element weights")
        g = _backend.to_working(g) if tensor else np.float64(g)
    if reduction == "sum":
        return g
    n = x.numel() if tensor else x.size
    return g / n if n else g * np.nan


# ---------------------------------------------------------------- NumPy

def _bce_np(p, t, reduction, at_ends):
    kernel = functools.partial(_bce_block, at_ends=at_ends)
    with np.errstate(divide="ignore", invalid="ignore"):  # log 0 = -inf is the exact value there
        return _loss_np(kernel, p, t, reduction, n_scratch=3)


def _bce_logits_np(x, t, reduction):
    with np.errstate(invalid="ignore"):  # 0 * inf at infinite logits is redone below
        loss = _loss_np(_bce_logits_block, x, t, reduction, n_scratch=2)
    if np.isnan(loss).any():  # NaN inputs, or infinite logits (0 * inf in the products): redo those
        with np.errstate(invalid="ignore"):
            values = _at_infinite_logits(x, t, map_blocks(_bce_logits_block, (x, t), np.float64, n_scratch=2))
        with np.errstate(over="ignore"):  # beyond the dtype's range: inf
            loss = _scalar_if_0d(_backend.from_working(reduce_loss(values, reduction), x.dtype))
    return loss


def _mse_np(p, t, reduction):
    with np.errstate(over="ignore", invalid="ignore"):  # a square beyond float64 is inf exactly; inf - inf is NaN
        return _loss_np(_mse_block, p, t, reduction, n_scratch=1, sum_kernel=_mse_sum_block)


def _bce_grad_np(p, t, w):
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):  # 1/0 = inf is exact at p = 0, 1
        return map_blocks(_bce_grad_block, (p, t, w), p.dtype, n_scratch=2)


def _bce_logits_grad_np(x, t, w):
    close = np.empty(x.shape, dtype=bool)  # filled blockwise: where the float64 difference cancels
    kernel = functools.partial(_sigmoid_minus_block, ratio=RECOMPUTE_BELOW[x.dtype.name])
    with np.errstate(invalid="ignore", over="ignore"):  # NaN inputs; w r beyond a narrow dtype is inf
        dx = map_blocks(kernel, (x, t, w, close), x.dtype, n_scratch=2)
    if close.any():
        exact = _sigmoid_minus_exact(x[close], t[close], x.dtype.name)
        dx[close] = exact * (w[close] if np.ndim(w) else w)
    return dx


def _mse_grad_np(p, t, w):
    with np.errstate(over="ignore", invalid="ignore"):  # a derivative beyond the dtype's range rounds to inf
        return map_blocks(_mse_grad_block, (p, t, w), p.dtype, n_scratch=1)


def _loss_np(kernel, a, b, reduction, n_scratch, sum_kernel=None):
    """The reduced loss: blockwise pairwise float64 sums (as reduce_loss does), rounded once.

    sum_kernel(values, a, b, scale=1.0) may replace kernel for the sums (returning a block sum or
    leaving values to be summed); it must multiply the losses by `scale` exactly.
    """
    if reduction == "none":
        return _scalar_if_0d(map_blocks(kernel, (a, b), a.dtype, n_scratch=n_scratch))
    if sum_kernel is None:
        sum_kernel = functools.partial(_scaled_losses, kernel=kernel)
    with np.errstate(over="ignore"):  # an overflowing float64 sum is handled below
        total = sum_blocks(sum_kernel, (a, b), n_scratch=n_scratch)
    if reduction == "mean":
        n = a.size
        if np.isinf(total) and a.dtype == np.float64:  # the sum is beyond float64; the mean may not be
            with np.errstate(over="ignore"):
                rescaled = functools.partial(sum_kernel, scale=OVERFLOW_RESCALE)
                scaled = sum_blocks(rescaled, (a, b), n_scratch=n_scratch)
            total = scaled / n / OVERFLOW_RESCALE if np.isfinite(scaled) else total / n
        else:
            total = total / n if n else np.float64(np.nan)
    with np.errstate(over="ignore"):  # a loss beyond the dtype's range rounds to inf, its correctly rounded value
        return _backend.from_working(np.float64(total), a.dtype)


def _scaled_losses(values, *rest, kernel, scale=1.0):
    kernel(values, *rest)
    if scale != 1.0:
        values *= scale


def _bce_block(out, p, t, a, b, c, *, at_ends):
    np.log(p, out=a, dtype=np.float64)
    a *= t  # t log p <= 0
    np.negative(p, out=b, dtype=np.float64)
    np.log1p(b, out=b)
    np.subtract(1.0, t, out=c, dtype=np.float64)
    b *= c  # (1 - t) log1p(-p) <= 0
    if at_ends:  # 0 * -inf = NaN where xlogy says 0 (a NaN input still propagates through the other term)
        np.copyto(a, 0.0, where=(t == 0) & (p == 0))
        np.copyto(b, 0.0, where=(t == 1) & (p == 1))
    a += b
    np.negative(a, out=out)


def _at_infinite_logits(x, t, values):
    """Exact losses at x = +-inf: 0 where the weight of the infinite softplus (1 - t, or t) is 0, else inf."""
    infinite = (x == np.inf) | (x == -np.inf)
    weight = _where(x > 0, 1.0 - _backend.to_working(t), _backend.to_working(t))
    fixed = _where(weight == 0, 0.0 * weight, weight * np.inf)
    return _where(infinite & (weight == weight), fixed, values)


def _where(condition, a, b):
    if _backend.is_tensor(condition):
        import torch

        return torch.where(condition, a, b)
    return np.where(condition, a, b)


def _bce_logits_block(out, x, t, a, b):
    if _fused.has_dtypes(out, x, t):
        _fused.neg_abs(x, a)
        np.exp(a, out=a)  # exp(-|x|) <= 1
        np.log1p(a, out=a)
        _fused.bce_logits_values(x, t, a, out)
        return
    np.maximum(x, 0.0, out=b, dtype=np.float64)
    np.subtract(1.0, t, out=a, dtype=np.float64)
    b *= a  # max(x, 0) (1 - t) >= 0
    np.minimum(x, 0.0, out=a, dtype=np.float64)
    a *= t
    b -= a  # - min(x, 0) t >= 0; one of the two products is 0, so this is exact
    np.abs(x, out=a, dtype=np.float64)
    np.negative(a, out=a)
    np.exp(a, out=a)  # exp(-|x|) <= 1
    np.log1p(a, out=a)
    np.add(b, a, out=out)


def _mse_block(out, p, t, d):
    np.subtract(p, t, out=d, dtype=np.float64)
    np.square(d, out=out)


def _mse_sum_block(values, p, t, d, scale=1.0):
    """The block's sum of squares; float32 inputs in one fused pass (float64 differences and squares,
    a SIMD sum whose error, below 2**-37 for a block, is far below their ULP), float64 ones square
    and sum pairwise."""
    if p.dtype == np.float32 and scale == 1.0 and _fused.has_dtypes(t):
        return _fused.sum_sq_diff(p, t)
    if p.dtype == t.dtype == np.float64 and scale == 1.0:
        _fused.sq_diff_into(p, t, values)  # summed pairwise by the caller
        return None
    np.copyto(d, p)
    d -= t
    if scale != 1.0:
        d *= np.sqrt(scale)  # scales the squares by `scale`, exactly (a power of 4), before they overflow
    if p.dtype == np.float64:
        np.square(d, out=values)
        return None
    return np.einsum("i,i->", d, d)


def _bce_grad_block(out, p, t, w, a, b):
    if _fused.has_dtypes(out, p, t, np.asarray(w)):
        if _fused.bce_grad(p, t, np.ravel(w), out, a, b):  # rare: the ends, or a quotient beyond float64
            _bce_grad_fix(out, p, t, w, a, b)
        return
    np.subtract(p, t, out=a, dtype=np.float64)
    np.subtract(1.0, p, out=b, dtype=np.float64)
    b *= p
    a /= b  # divided before w multiplies, which could round a subnormal p - t
    np.multiply(a, w, out=out, dtype=np.float64)
    if not np.isfinite(a).all():  # rare: the ends, or a quotient beyond float64
        _bce_grad_fix(out, p, t, w, a, b)


def _bce_grad_fix(out, p, t, w, quotient, b):
    """At p = t = 0 (1) the derivative is w (-w), not 0/0; where (p - t) / (p (1 - p)) overflowed
    although p (1 - p) > 0, w (p - t) / (p (1 - p)) in that order may still be finite."""
    w = np.broadcast_to(w, p.shape)
    ends = (p == t) & ((p == 0) | (p == 1))
    out[ends] = np.where(p[ends] == 0, 1.0, -1.0) * w[ends]
    over = np.isinf(quotient) & (b > 0)
    out[over] = (p[over] - np.asarray(t[over], np.float64)) * w[over] / b[over]


def _mse_grad_block(out, p, t, w, d):
    if _fused.has_dtypes(out, p, t, np.asarray(w)) and not (
            _fused.mse_grad(p, t, np.ravel(w), out) and p.dtype == np.float64):
        return
    np.subtract(p, t, out=d, dtype=np.float64)
    d *= 2.0
    np.multiply(d, w, out=out, dtype=np.float64)
    if p.dtype == np.float64 and np.isinf(d).any():  # p - t beyond float64; 4 w (p/2 - t/2) may not be
        over = np.isinf(d) & np.isfinite(p) & np.isfinite(t)
        out[over] = 4.0 * np.broadcast_to(w, p.shape)[over] * (0.5 * p[over] - 0.5 * t[over])


# ---------------------------------------------------------------- torch (float64 working type)

def _bce_torch(p, t):
    """Per-element BCE in float64; xlogy/xlog1py give 0 log 0 = 0 and keep NaN."""
    import torch

    p64, t64 = _backend.to_working(p), _backend.to_working(t)
    return -(torch.xlogy(t64, p64) + torch.special.xlog1py(1.0 - t64, -p64))


def _bce_logits_torch(x, t):
    import torch
    import torch.nn.functional as F

    x64, t64 = _backend.to_working(x), _backend.to_working(t)
    tail = F.softplus(-x64.abs(), beta=1.0, threshold=TORCH_SOFTPLUS_THRESHOLD)  # log1p(exp(-|x|))
    loss = torch.addcmul(tail, x64.clamp(min=0.0), 1.0 - t64)
    loss = torch.addcmul(loss, x64.clamp(max=0.0), t64, value=-1.0)
    if bool(torch.isinf(x).any()):  # 0 * inf in the products
        loss = _at_infinite_logits(x64, t64, loss)
    return loss


def _mse_torch(p, t, scale=1.0):
    """Per-element squares in float64; `scale` (a power of 4) is applied before squaring, exactly."""
    import torch

    d = _backend.to_working(p) - t
    return torch.square(d if scale == 1.0 else d * scale**0.5)


def _bce_grad_torch(p, t, w, at_ends=True):
    import torch

    p64, t64 = _backend.to_working(p), _backend.to_working(t)
    b = p64 * (1.0 - p64)
    dp = (p64 - t64) / b * w  # divided before w multiplies, which could round a subnormal p - t
    if p.dtype == torch.float64:  # the quotient can overflow where w (p - t) / b does not
        dp = torch.where(torch.isinf(dp) & (b > 0), (p64 - t64) * w / b, dp)
    if at_ends:  # 0/0 where the 0 log 0 term dropped out: w at p = t = 0, -w at p = t = 1
        ends = (p64 == t64) & ((p64 == 0) | (p64 == 1))
        dp = torch.where(ends, torch.where(p64 == 0, 1.0, -1.0) * w, dp)
    return dp


def _bce_target_grad_torch(p, w):
    """d bce / d t = log1p(-p) - log(p) = log1p((1 - 2p) / p), the latter near p = 1/2 where the
    former cancels (1 - 2p is exact for p in [1/4, 3/4])."""
    import torch

    p64 = _backend.to_working(p)
    near_half = (p64 - 0.5).abs() <= 0.25
    return torch.where(near_half, torch.log1p((1.0 - 2.0 * p64) / p64), torch.log1p(-p64) - torch.log(p64)) * w


def _bce_logits_grad_torch(x, t, w):
    """w (sigmoid(x) - t) in x's dtype; differentiable (through nnstab's sigmoid) when a graph is built."""
    import torch

    with torch.no_grad():
        value = _sigmoid_minus_torch(x, t) * w
    if not (torch.is_grad_enabled() and any(_requires_grad(v) for v in (x, t, w))):
        return value.to(x.dtype)
    sig = _sigmoid_functions().Sigmoid.apply
    graph = torch.where(x < 0, sig(x) - t, (1.0 - t) - sig(-x)) * w
    return (graph + (value - graph).detach()).to(x.dtype)  # exact value, differentiable graph


def _requires_grad(v):
    return _backend.is_tensor(v) and v.requires_grad


def _mse_grad_torch(p, t, w):
    import torch

    d = _backend.to_working(p) - t
    dp = 2.0 * d * w
    if p.dtype == torch.float64:  # p - t beyond float64; 4 w (p/2 - t/2) may not be
        over = torch.isinf(d) & torch.isfinite(p) & torch.isfinite(t)
        dp = torch.where(over, 4.0 * w * (0.5 * p - 0.5 * t), dp)
    return dp


# ---------------------------------------------------------------- torch autograd Functions

def _reduced(values_fn, a, b, reduction):
    """reduce_loss in float64, rounded once; a float64 mean whose sum overflowed is redone scaled."""
    import torch

    out = reduce_loss(values_fn(a, b), reduction)
    if reduction == "mean" and a.dtype == torch.float64 and bool(torch.isinf(out)):
        scaled = reduce_loss(_scaled_values(values_fn, a, b), "mean")
        out = torch.where(torch.isfinite(scaled), scaled / OVERFLOW_RESCALE, out)
    return out.to(a.dtype)


def _scaled_values(values_fn, a, b):
    if values_fn is _mse_torch:
        return _mse_torch(a, b, scale=OVERFLOW_RESCALE)
    return values_fn(a, b) * OVERFLOW_RESCALE


@functools.cache
def _functions():
    """The autograd Functions, built on first use (a tensor exists, so torch is imported already)."""
    import torch

    def loss_function(values_fn, grad_fns, values_np, grad_np):
        """values_np(a, b, reduction, flags) and grad_np(a, b, w) (NumPy) serve CPU tensors (`on_numpy_kernels`)."""
        class Loss(torch.autograd.Function):
            @staticmethod
            def forward(ctx, a, b, reduction, flags):
                ctx.save_for_backward(a, b)
                ctx.reduction, ctx.flags = reduction, flags
                if on_numpy_kernels(a, b):
                    return _tensor(values_np(_view(a), _view(b), reduction, flags))
                return _reduced(values_fn, a, b, reduction)

            @staticmethod
            def backward(ctx, grad_output):
                a, b = ctx.saved_tensors
                w = _grad_weight(a, grad_output, ctx.reduction)
                da = db = None
                if ctx.needs_input_grad[0] and on_numpy_kernels(a, b, w) and not torch.is_grad_enabled():
                    da = _tensor(grad_np(_view(a), _view(b), _view(w)))
                elif ctx.needs_input_grad[0]:
                    da = grad_fns[0](a, b, w, ctx.flags).to(a.dtype)
                if ctx.needs_input_grad[1]:
                    db = grad_fns[1](a, b, w, ctx.flags).to(b.dtype)
                return da, db, None, None
        return Loss

    return types.SimpleNamespace(
        BCE=loss_function(_bce_torch, (_bce_grad_torch, lambda p, t, w, _: _bce_target_grad_torch(p, w)),
                          _bce_np, _bce_grad_np),
        BCEWithLogits=loss_function(_bce_logits_torch, (lambda x, t, w, _: _bce_logits_grad_torch(x, t, w),
                                                        lambda x, t, w, _: -_backend.to_working(x) * w),
                                    lambda x, t, reduction, _: _bce_logits_np(x, t, reduction), _bce_logits_grad_np),
        MSE=loss_function(_mse_torch, (lambda p, t, w, _: _mse_grad_torch(p, t, w),
                                       lambda p, t, w, _: -_mse_grad_torch(p, t, w)),
                          lambda p, t, reduction, _: _mse_np(p, t, reduction), _mse_grad_np),
    )
