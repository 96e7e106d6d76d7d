"""Cross-entropy of categorical distributions (and its derivative), NumPy or torch, to the last bit; KL re-exported.

cross_entropy builds on the logsumexp core (nnstab.numerics.softmax_family): with m the row max,
d = x - m and s the sum of exp(d) without the max term,

    -log_softmax(x)_t = log1p(s) - d_t          (two terms >= 0: no cancellation)

so a confident correct prediction (loss ~1e-20) keeps its digits where log(sum(exp)) - x_t
returns 0. It computes in float64 and rounds once to the input dtype. This module validates and
dispatches; the per-row math is in nnstab.numerics._cross_entropy. As in softmax_family.py, CPU tensors
run the NumPy code on zero-copy views and other devices run torch ops
(nnstab.numerics._cross_entropy_torch); the tensor function is a torch.autograd.Function whose
backward is cross_entropy_backward. kl_div and kl_div_backward live in nnstab.numerics.kl and are
importable from here too.
"""
from __future__ import annotations

import functools
import importlib

import numpy as np

from nnstab import _backend
from nnstab.numerics import validate
from nnstab.numerics._cross_entropy import ce_grad_np, ce_rows_np, reduce_rows
from nnstab.numerics._loss_rows import check_grad_output, finish_np, without
from nnstab.numerics.kl import kl_div, kl_div_backward  # re-exported: both categorical losses import from here

# Probability rows (soft targets) must sum to 1 within this many eps of their dtype: rounding each
# entry of an exact distribution moves the sum by at most eps/2, and a softmax computed in that dtype
# by a few eps more.
PROBABILITY_SUM_TOLERANCE_EPS = 32


# ---------------------------------------------------------------- public functions

def cross_entropy(logits, target, axis=-1, reduction="mean", *, ignore_index=None):
    """Cross-entropy of softmax(logits) along axis against class indices or probabilities.

    target: integer class indices with the shape of logits without `axis` (range-checked [0, C)),
    or probabilities with the shape of logits (values in [0, 1], rows summing to 1 within
    PROBABILITY_SUM_TOLERANCE_EPS * eps of their dtype). ignore_index (class indices only), like
    torch: rows with that target get loss 0 and are left out of the mean.
    Formula: per row log1p(s) - d_t (indices) or -sum_i t_i log_softmax(x)_i with 0 * log 0 = 0
    (probabilities); every term is >= 0, so nothing cancels. Masked (-inf) target logit: +inf; all
    -inf row: +inf; +inf logits: log(k) at one of the k +inf entries, +inf elsewhere; NaN: NaN.
    reduction: "mean" (over non-ignored rows; NaN if none), "sum" or "none".
    Derivative: softmax - target (`cross_entropy_backward`).
    """
    logits, target, axis, reduction, hard = _check_ce(logits, target, axis, reduction, ignore_index)
    if _backend.is_tensor(logits):
        return _torch_path().CrossEntropy.apply(logits, target, axis, reduction, ignore_index)
    rows, valid, halves = ce_rows_np(logits, target, axis, hard, ignore_index)
    return finish_np(reduce_rows(rows, reduction, valid, halves), logits.dtype)


def cross_entropy_backward(logits, target, grad_output, axis=-1, reduction="mean", ignore_index=None):
    """d loss / d logits = w (softmax(logits) * sum(t) - t) per row, in logits' dtype.

    w is grad_output (per row for "none"), divided by the number of non-ignored rows for "mean".
    For class indices, p_t - 1 is computed as expm1(log_softmax_t): when the prediction is
    confident, 1 - p_t is tiny and p_t rounded to 1 would lose it.
    """
    logits, target, axis, reduction, hard = _check_ce(logits, target, axis, reduction, ignore_index)
    g = check_grad_output(logits, grad_output, reduction, without(logits.shape, axis))
    if _backend.is_tensor(logits):
        return _torch_path().ce_grad_tensor(logits, target, g, axis, reduction, hard, ignore_index)
    return ce_grad_np(logits, target, g, axis, reduction, hard, ignore_index)


# ---------------------------------------------------------------- argument checks

def _check_ce(logits, target, axis, reduction, ignore_index):
    logits = validate.check_float_array(logits, "logits")
    axis = validate.normalize_axis(axis, logits.ndim)
    reduction = validate.check_reduction(reduction)
    if ignore_index is not None and (isinstance(ignore_index, (bool, np.bool_)) or not isinstance(ignore_index, (int, np.integer))):
        raise TypeError(f"ignore_index must be an int or None, got {type(ignore_index).__name__}")
    if isinstance(target, np.generic):
        target = np.asarray(target)
    if not (_backend.is_tensor(target) or isinstance(target, np.ndarray)):
        raise TypeError(f"target must be a NumPy array or a torch tensor, got {type(target).__name__}; "
                        f"wrap class indices with np.asarray(target) (probabilities with dtype=np.float64)")
    validate.check_same_kind(logits, target, ("logits", "target"))
    kind = _dtype_kind(target)
    if kind not in "iuf":
        raise TypeError(f"target must hold integer class indices or float probabilities, got dtype {target.dtype}; "
                        f"convert class indices with target.astype(np.int64) (or .long() for a tensor)")
    if kind == "f":
        _check_soft_target(logits, target, axis, ignore_index)
        return logits, target, axis, reduction, False
    _check_class_indices(logits, target, axis, ignore_index)
    return logits, target, axis, reduction, True


def _dtype_kind(a) -> str:
    if _backend.is_tensor(a):
        import torch

        if a.dtype == torch.bool or a.is_complex():
            return "b"
        return "f" if a.is_floating_point() else "i"
    return a.dtype.kind


def _check_class_indices(logits, target, axis, ignore_index):
    expected, n_classes = without(logits.shape, axis), logits.shape[axis]
    if tuple(target.shape) != expected:
        raise ValueError(f"target (class indices) must have shape {expected}, the shape of logits {tuple(logits.shape)} "
                         f"without axis {axis}, got {tuple(target.shape)}; for probabilities pass a float target "
                         f"of shape {tuple(logits.shape)}")
    bad = (target < 0) | (target >= n_classes)
    if ignore_index is not None:
        bad &= target != ignore_index
    if validate.any_true(bad):
        value = int(target[bad].reshape(-1)[0])
        hint = " (pass ignore_index=-100 to skip padded rows)" if value == -100 and ignore_index is None else ""
        raise ValueError(f"target holds class index {value}, outside [0, {n_classes}) for logits with {n_classes} "
                         f"classes along axis {axis}{hint}")


def _check_soft_target(logits, target, axis, ignore_index):
    if ignore_index is not None:
        raise ValueError("ignore_index applies to class-index targets, but target holds probabilities; "
                         "drop ignore_index or give those rows zero weight")
    validate.check_same_shape(logits, target, ("logits", "target (probabilities)"))
    validate.check_in_unit_interval(target, "target")
    sums = _backend.to_working(target.detach() if _backend.is_tensor(target) else target).sum(axis)
    tolerance = PROBABILITY_SUM_TOLERANCE_EPS * float(_backend.finfo(target.dtype).eps)
    off = abs(sums - 1.0) > tolerance  # NaN rows compare False: they propagate instead
    if validate.any_true(off):
        value = float(sums[off].reshape(-1)[0])
        raise ValueError(f"target probabilities must sum to 1 along axis {axis} (within {tolerance:.2g}), "
                         f"a row sums to {value!r}; normalize it with target / target.sum({axis}, keepdims=True)")


@functools.cache
def _torch_path():
    """The torch-op rows, gradient and autograd Function, imported with the first tensor (torch is imported already)."""
    return importlib.import_module("nnstab.numerics._cross_entropy_torch")
