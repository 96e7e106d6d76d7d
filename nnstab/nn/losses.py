"""Loss objects for nnstab.nn: `forward(out, y)` returns the loss, `backward()` returns dL/dout.

Each is a thin wrapper over nnstab's stable functions and their gradient functions (no second copy
of the math): the value comes from e.g. nnstab.cross_entropy and the gradient from
cross_entropy_backward, both computed in float64 and rounded once to the output's dtype.

    loss = loss_fn(out, y)            # a float for reduction "mean" / "sum", an array for "none"
    grad = loss_fn.backward()         # dL/dout, the output's shape and dtype

The target is checked here (shape, and for BCE the range [0, 1]; class indices are range-checked by
nnstab.cross_entropy) and errors name the loss and the fix. A float target is cast to the output's
dtype; class indices stay integers.
"""
from __future__ import annotations

import numpy as np

from nnstab.numerics.categorical import cross_entropy, cross_entropy_backward, kl_div, kl_div_backward
from nnstab.numerics.elementwise import (
    binary_cross_entropy,
    binary_cross_entropy_backward,
    binary_cross_entropy_with_logits,
    binary_cross_entropy_with_logits_backward,
    mse,
    mse_backward,
)
from nnstab.numerics.validate import check_reduction


class Loss:
    """Common protocol: validate, keep (out, y) for backward, return a float unless reduction="none"."""

    def __init__(self, reduction: str = "mean"):
        self.reduction = check_reduction(reduction)
        self._saved = None

    def __call__(self, out, y):
        return self.forward(out, y)

    def __repr__(self):
        return f"{type(self).__name__}(reduction={self.reduction!r})"

    def forward(self, out, y):
        out = self._check_out(out)
        y = self._target(out, y)
        self._saved = (out, y)
        value = self._value(out, y)
        return float(value) if self.reduction != "none" else np.asarray(value)  # an array also for 0-d out

    def backward(self, grad_output=None):
        """dL/dout for the last forward; grad_output defaults to 1 (or ones of the loss's shape for "none")."""
        if self._saved is None:
            raise RuntimeError(f"{type(self).__name__}.backward() was called before the loss was computed; "
                               f"call loss_fn(out, y) first")
        out, y = self._saved
        if grad_output is None:
            grad_output = np.ones(() if self.reduction != "none" else np.shape(self._value(out, y)), dtype=out.dtype)
        try:
            grad_output = np.asarray(grad_output, dtype=out.dtype)
        except (TypeError, ValueError) as e:
            raise TypeError(f"{type(self).__name__}.backward: grad_output must be a number or an array of numbers, "
                            f"got {type(grad_output).__name__}") from e
        return np.asarray(self._grad(out, y, grad_output))   # an array also for 0-d out

    def _check_out(self, out):
        if not isinstance(out, np.ndarray) or out.dtype.kind != "f":
            what = type(out).__name__ if not isinstance(out, np.ndarray) else f"dtype {out.dtype}"
            raise TypeError(f"{type(self).__name__}: the model output must be a floating-point NumPy array, got {what}")
        return out

    def _target(self, out, y):
        """A float target of the output's shape, in the output's dtype."""
        y = np.asarray(y)
        if y.dtype.kind not in "fiub":
            raise TypeError(f"{type(self).__name__}: target must be numeric, got dtype {y.dtype}")
        if y.shape != out.shape:
            raise ValueError(f"{type(self).__name__}: target shape {y.shape} differs from the output's {out.shape}; "
                             f"reshape it, e.g. y.reshape(out.shape)")
        return y.astype(out.dtype, copy=False)

    def _value(self, out, y):
        raise NotImplementedError

    def _grad(self, out, y, g):
        raise NotImplementedError


class MSELoss(Loss):
    """mean((out - y)^2) (nnstab.mse); dL/dout = 2 (out - y) / n."""

    def _value(self, out, y):
        return mse(out, y, reduction=self.reduction)

    def _grad(self, out, y, g):
        return mse_backward(out, y, g, reduction=self.reduction)


_OUTPUT_FIX = {"BCELoss": "end the model with Sigmoid, or use BCEWithLogitsLoss on the raw outputs",
               "KLDivLoss": "end the model with Softmax, or pass log-probabilities with log_input=True"}


def _check_unit_interval(loss, a, name: str):
    with np.errstate(invalid="ignore"):
        bad = (a < 0) | (a > 1)
    if bad.any():
        raise ValueError(f"{type(loss).__name__}: {name} must lie in [0, 1], got values in "
                         f"[{np.nanmin(a):g}, {np.nanmax(a):g}]; "
                         + (_OUTPUT_FIX.get(type(loss).__name__, "") if name == "the output"
                            else "use 0/1 labels or probabilities"))


class BCELoss(Loss):
    """-(y log p + (1 - y) log(1 - p)) for probabilities p = out (nnstab.binary_cross_entropy).

    Exact, so p = 0 with y = 1 gives inf (torch clamps the logs at -100); BCEWithLogitsLoss on the
    logits is the stable way to train a sigmoid output.
    """

    def _target(self, out, y):
        y = super()._target(out, y)
        _check_unit_interval(self, out, "the output")
        _check_unit_interval(self, y, "the target")
        return y

    def _value(self, out, y):
        return binary_cross_entropy(out, y, reduction=self.reduction)

    def _grad(self, out, y, g):
        return binary_cross_entropy_backward(out, y, g, reduction=self.reduction)


class BCEWithLogitsLoss(Loss):
    """BCE of sigmoid(out) computed from the logits out (nnstab.binary_cross_entropy_with_logits);
    dL/dout = sigmoid(out) - y, without forming log(sigmoid)."""

    def _target(self, out, y):
        y = super()._target(out, y)
        _check_unit_interval(self, y, "the target")
        return y

    def _value(self, out, y):
        return binary_cross_entropy_with_logits(out, y, reduction=self.reduction)

    def _grad(self, out, y, g):
        return binary_cross_entropy_with_logits_backward(out, y, g, reduction=self.reduction)


class _Categorical(Loss):
    """Losses over a class axis: torch's class dimension 1 by default (0 for a single unbatched row)."""

    def __init__(self, reduction: str = "mean", axis: int | None = None):
        super().__init__(reduction)
        self.axis = axis

    def class_axis(self, out) -> int:
        if self.axis is not None:
            return self.axis
        return 1 if out.ndim >= 2 else 0

    def __repr__(self):
        return f"{type(self).__name__}(reduction={self.reduction!r}, axis={self.axis})"


class CrossEntropyLoss(_Categorical):
    """-log softmax(out)[y] averaged over rows (nnstab.cross_entropy); dL/dout = softmax(out) - onehot(y).

    out: logits (N, C) or (N, C, ...); y: class indices (N,) / (N, ...) of an integer dtype, or
    probabilities of out's shape. `ignore_index` (like torch's, whose default is -100) drops rows
    with that label from the loss and the mean; None (the default) ignores nothing.
    """

    def __init__(self, reduction: str = "mean", axis: int | None = None, ignore_index: int | None = None):
        super().__init__(reduction, axis)
        self.ignore_index = ignore_index

    def _target(self, out, y):
        y = np.asarray(y)
        if y.dtype.kind in "iu":
            axis = self.class_axis(out) % max(out.ndim, 1)
            want = out.shape[:axis] + out.shape[axis + 1:]
            if y.shape != want:
                raise ValueError(f"CrossEntropyLoss: class-index target must have shape {want} (the output "
                                 f"{out.shape} without the class axis {axis}), got {y.shape}")
            return y
        if y.dtype.kind == "b":
            raise TypeError("CrossEntropyLoss: target must be integer class indices or float probabilities, "
                            "got booleans; convert with y.astype(np.int64)")
        axis = self.class_axis(out) % max(out.ndim, 1)
        if y.shape != out.shape and y.shape == out.shape[:axis] + out.shape[axis + 1:]:
            raise TypeError(f"CrossEntropyLoss: class-index target must have an integer dtype, got {y.dtype}; "
                            f"convert it with y.astype(np.int64)")
        return super()._target(out, y)

    def _value(self, out, y):
        return cross_entropy(out, y, axis=self.class_axis(out), reduction=self.reduction,
                             ignore_index=self.ignore_index)

    def _grad(self, out, y, g):
        return cross_entropy_backward(out, y, g, axis=self.class_axis(out), reduction=self.reduction,
                                      ignore_index=self.ignore_index)


class KLDivLoss(_Categorical):
    """KL(y || out) = sum y log(y / out) along the class axis, averaged over rows (nnstab.kl_div).

    The output is the model's distribution q, the target the reference p. Both are probabilities,
    or both log-probabilities with log_input=True (a model ending in LogSoftmax); torch's
    equivalent is KLDivLoss(reduction="batchmean", log_target=True)(log q, log p).
    """

    def __init__(self, reduction: str = "mean", axis: int | None = None, log_input: bool = False):
        super().__init__(reduction, axis)
        self.log_input = bool(log_input)

    def _target(self, out, y):
        y = super()._target(out, y)
        if self.log_input:
            for a, name in ((out, "the output"), (y, "the target")):
                with np.errstate(invalid="ignore"):
                    if (a > 0).any():
                        raise ValueError(f"KLDivLoss(log_input=True): {name} must hold log-probabilities (<= 0), "
                                         f"got a maximum of {np.nanmax(a):g}; end the model with LogSoftmax")
        else:
            _check_unit_interval(self, out, "the output")
            _check_unit_interval(self, y, "the target")
        return y

    def _value(self, out, y):
        return kl_div(y, out, axis=self.class_axis(out), reduction=self.reduction, log_input=self.log_input)

    def _grad(self, out, y, g):
        _, dq = kl_div_backward(y, out, g, axis=self.class_axis(out), reduction=self.reduction,
                                log_input=self.log_input)
        return dq
