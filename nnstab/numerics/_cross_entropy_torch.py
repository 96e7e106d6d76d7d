"""Cross-entropy of tensors: the torch-op rows and gradient (any device, CUDA included), and its autograd Function.

CPU tensors run the NumPy code of nnstab.numerics._cross_entropy on zero-copy views (`on_numpy`);
other devices use the torch-op kernels of the softmax family (nnstab.numerics._logsumexp_torch).
This module is imported with the first tensor, so a NumPy-only user never imports torch.
"""
from __future__ import annotations

import numpy as np
import torch

from nnstab import _backend
from nnstab.numerics import _exact
from nnstab.numerics._cross_entropy import ce_grad_np, ce_rows_np, fix_overflow, flat_targets, reduce_rows, soft_ce
from nnstab.numerics._logsumexp_torch import TORCH_FUSED_MIN_LOG_SUM, log_softmax64_torch, parts_torch, softmax64
from nnstab.numerics._loss_rows import row_weights, without
from nnstab.numerics._softmax_kernels import limit_rows
from nnstab.numerics.softmax_family import from_numpy, log_softmax, numpy_view, on_numpy


def _numpy_target(target):
    """A NumPy view of a CPU target tensor (class indices as they are, probabilities as float)."""
    return numpy_view(target) if target.is_floating_point() else target.detach().numpy()


# ---------------------------------------------------------------- rows

def _ce_rows_torch(logits, target, dim, hard, ignore_index):
    """float64 losses per row (flat) and the non-ignored mask, for tensors."""
    x2, outer = _exact.flatten_rows(logits, dim)
    if not hard:
        t2, _ = _exact.flatten_rows(target, dim)
        ce, halves = fix_overflow(soft_ce(t2, log_softmax64_torch(x2, 1)), x2, t2)
        return ce, None, halves
    t, valid = flat_targets(target, ignore_index)
    if x2.shape[1] == 0:  # no classes: validation lets through only ignored rows, whose loss is 0
        ce = x2.new_zeros(x2.shape[0], dtype=torch.float64)
    elif logits.dtype == torch.float64:
        ce = _ce_exact_torch(x2, t)
    else:
        # torch's fused float64 kernel is within ~2**-53 absolute: rows below TORCH_FUSED_MIN_LOG_SUM
        # (and NaN rows, which may be limit rows) take the log1p path
        ce = torch.nn.functional.cross_entropy(x2.double(), t, reduction="none")
        redo = ~(ce >= TORCH_FUSED_MIN_LOG_SUM)
        if bool(redo.any()):
            ce = ce.where(~redo, _ce_exact_torch(x2, t))
    if valid is not None:
        ce = ce.where(valid, 0.0)
    ce, halves = fix_overflow(ce, x2, t)
    return ce, valid, halves


def _ce_exact_torch(x2, t):
    """log1p(s) - d_t per row of a 2-D tensor (any dtype), limit rows by convention."""
    m, _, hi, lo, e = parts_torch(x2, 1)
    log_sum = e.sum(1).log1p_().where(~m[:, 0].isinf(), 0.0)
    rows = t[:, None]
    ce = (log_sum - hi.gather(1, rows)[:, 0])
    if lo is not None:
        ce = ce - lo.gather(1, rows)[:, 0]
    limit = m[:, 0].isinf()
    if bool(limit.any()):
        ce = ce.where(~limit, -limit_rows(x2.double(), "log_softmax").gather(1, rows)[:, 0])
    return ce


# ---------------------------------------------------------------- gradient

def ce_grad_tensor(logits, target, g, dim, reduction, hard, ignore_index, ce_rows=None):
    """dlogits of tensors in logits' dtype: the NumPy formulas on CPU views unless a graph is built, else torch ops.

    ce_rows (float64 per-row losses, flat) saves recomputing log_softmax_t.
    """
    if on_numpy(logits) and not torch.is_grad_enabled():
        rows = None if ce_rows is None else ce_rows.numpy()
        dx = ce_grad_np(numpy_view(logits), _numpy_target(target), numpy_view(g), dim, reduction, hard,
                        ignore_index, rows, np.float64 if logits.dtype == torch.bfloat16 else None)
        return from_numpy(dx, logits.dtype)
    return _ce_grad_torch(logits, target, g, dim, reduction, hard, ignore_index, ce_rows)


def _ce_grad_torch(logits, target, g, dim, reduction, hard, ignore_index, ce_rows):
    """dlogits with torch ops; differentiable while a graph is built (double backward)."""
    x2, outer = _exact.flatten_rows(logits, dim)
    n_rows = x2.shape[0]
    building = torch.is_grad_enabled()  # double backward: differentiable formulas
    p = softmax64(x2, 1)
    shape = tuple(outer) + (logits.shape[dim],)
    if x2.shape[1] == 0:  # no classes (no rows, or only ignored ones): an empty gradient
        return p.reshape(shape).movedim(-1, dim).to(logits.dtype)
    if hard:
        t, valid = flat_targets(target, ignore_index)
        w = row_weights(g, reduction, n_rows, valid)
        if building or ce_rows is None:
            log_p_t = log_softmax(x2, 1).double().gather(1, t[:, None])[:, 0]
        else:
            log_p_t = -ce_rows
        p = p.scatter(1, t[:, None], log_p_t.expm1()[:, None])  # p_t - 1 without cancellation
        dx = p * w[:, None]
    else:
        t2 = _backend.to_working(_exact.flatten_rows(target, dim)[0])
        w = row_weights(g, reduction, n_rows, None)
        dx = (p * t2.sum(1, keepdim=True) - t2) * w[:, None]
    return dx.reshape(shape).movedim(-1, dim).to(logits.dtype)


# ---------------------------------------------------------------- autograd Function

class CrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, target, dim, reduction, ignore_index):
        hard = not target.is_floating_point()
        ctx.args = (dim, reduction, hard, ignore_index)
        if on_numpy(logits):
            rows, valid, halves = ce_rows_np(numpy_view(logits), _numpy_target(target), dim, hard, ignore_index)
            ctx.save_for_backward(logits, target, torch.from_numpy(rows.reshape(-1)))
            return from_numpy(reduce_rows(rows, reduction, valid, halves), logits.dtype)
        rows, valid, halves = _ce_rows_torch(logits, target, dim, hard, ignore_index)
        ctx.save_for_backward(logits, target, rows)
        loss = reduce_rows(rows, reduction, valid, halves)
        return loss.reshape(without(logits.shape, dim)).to(logits.dtype) if reduction == "none" else \
            loss.to(logits.dtype)

    @staticmethod
    def backward(ctx, grad_output):
        logits, target, rows = ctx.saved_tensors
        dim, reduction, hard, ignore_index = ctx.args
        dx = dt = None
        if ctx.needs_input_grad[0]:
            dx = ce_grad_tensor(logits, target, grad_output, dim, reduction, hard, ignore_index, ce_rows=rows)
        if ctx.needs_input_grad[1] and not hard:  # d/dt of -sum t log_softmax = -w log_softmax
            x2, outer = _exact.flatten_rows(logits, dim)
            w = row_weights(grad_output, reduction, x2.shape[0], None)[:, None]
            log_p = log_softmax64_torch(x2, 1)
            shape = tuple(outer) + (logits.shape[dim],)
            dt = (-w * log_p).reshape(shape).movedim(-1, dim).to(target.dtype)
        return dx, dt, None, None, None
