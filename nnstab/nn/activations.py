"""Activation layers: each states its function f and its derivative f' side by side, as torch computes them.

Sigmoid, Softplus, Softmax and LogSoftmax call the stable functions of nnstab and their gradient
functions (sigmoid_backward computes sigmoid(x) sigmoid(-x), never the cancelling 1 - sigmoid(x)).
Where a derivative has a kink (ReLU at 0, ELU at 0) the value chosen is torch's.
"""
from __future__ import annotations

import numpy as np

from nnstab.nn import _args
from nnstab.nn.errors import LayerInputError
from nnstab.nn.module import Module
from nnstab.numerics.softmax_family import log_softmax, log_softmax_backward, softmax, softmax_backward
from nnstab.numerics.sigmoid_family import sigmoid, sigmoid_backward, softplus, softplus_backward

SELU_ALPHA = 1.6732632423543772848170429916717   # Klambauer et al. (2017): the self-normalising fixed point
SELU_SCALE = 1.0507009873554804934193349852946


def pass_where(mask, g):
    """g where mask holds, exactly 0 elsewhere (np.where(mask, g, 0)), branch-free when g is finite.

    np.where on a random mask mispredicts branches and runs ~10x slower than a multiply; g * mask
    equals it whenever g is finite (an inf or NaN in g times False would give NaN, not 0).
    """
    if np.isfinite(g).all():
        return g * mask
    return np.where(mask, g, 0)


class _Activation(Module):
    """f applied to the input; subclasses give f(x) and df(x, y, g) = g * f'(x) (y = f(x), saved)."""

    def f(self, x):
        raise NotImplementedError

    def df(self, x, y, g):
        raise NotImplementedError

    def forward(self, x):
        self.check_array(x)
        y = np.asarray(self.f(x))   # an array also for 0-d x, where NumPy's functions return scalars
        self._saved = (x, y)
        return y

    def _backward(self, g):
        x, y = self._saved
        return np.asarray(self.df(x, y, self.check_grad_output(g, y.shape, y.dtype)))


class ReLU(_Activation):
    """max(x, 0);  f'(x) = 1 for x > 0, else 0 (0 at the kink, and NaN passes the gradient, as in torch)."""

    def f(self, x):
        return np.maximum(x, 0)

    def df(self, x, y, g):
        return pass_where(~(x <= 0), g)


class LeakyReLU(_Activation):
    """x for x > 0, else negative_slope * x;  f'(x) = 1 for x > 0, else negative_slope."""

    def __init__(self, negative_slope: float = 0.01):
        super().__init__()
        self.negative_slope = _args.real(negative_slope, "negative_slope", "LeakyReLU")

    def extra_repr(self):
        return f"negative_slope={self.negative_slope}"

    def f(self, x):
        return np.where(x > 0, x, x * self.negative_slope)

    def df(self, x, y, g):
        return np.where(x > 0, g, g * self.negative_slope)


class Sigmoid(_Activation):
    """1 / (1 + exp(-x)) by nnstab.sigmoid;  f'(x) = sigmoid(x) sigmoid(-x) by sigmoid_backward."""

    def f(self, x):
        return sigmoid(x)

    def df(self, x, y, g):
        return sigmoid_backward(x, g)


class Tanh(_Activation):
    """tanh(x);  f'(x) = 1 - tanh(x)^2, from the saved output."""

    def f(self, x):
        return np.tanh(x)

    def df(self, x, y, g):
        return g * (1 - y * y)


class _AlongAxis(_Activation):
    """An activation over one axis (Softmax, LogSoftmax): the input must have that axis."""

    def __init__(self, axis: int = -1):
        super().__init__()
        self.axis = _args.integer(axis, "axis", type(self).__name__)

    def extra_repr(self):
        return f"axis={self.axis}"

    def forward(self, x):
        self.check_array(x)
        if not -x.ndim <= self.axis < x.ndim:
            need = self.axis + 1 if self.axis >= 0 else -self.axis
            raise LayerInputError(self, f"expected an input with axis {self.axis} (at least {need} dimension(s)), "
                                        f"got shape {x.shape}")
        return super().forward(x)


class Softmax(_AlongAxis):
    """exp(x_i) / sum_j exp(x_j) along `axis` by nnstab.softmax;  vector-Jacobian product y * (g - sum(g * y))."""

    def f(self, x):
        return softmax(x, axis=self.axis)

    def df(self, x, y, g):
        return softmax_backward(y, g, axis=self.axis)


class LogSoftmax(_AlongAxis):
    """x_i - logsumexp(x) along `axis` by nnstab.log_softmax;  vector-Jacobian product g - exp(y) sum(g)."""

    def f(self, x):
        return log_softmax(x, axis=self.axis)

    def df(self, x, y, g):
        return log_softmax_backward(y, g, axis=self.axis)


class ELU(_Activation):
    """x for x > 0, else alpha (exp(x) - 1);  f'(x) = 1 for x > 0, else alpha exp(x) (alpha at 0, as torch)."""

    def __init__(self, alpha: float = 1.0):
        super().__init__()
        self.alpha = _args.real(alpha, "alpha", "ELU")

    def extra_repr(self):
        return f"alpha={self.alpha}"

    def f(self, x):
        return np.where(x > 0, x, self.alpha * np.expm1(np.minimum(x, 0)))   # expm1 keeps tiny |x| exact

    def df(self, x, y, g):
        return np.where(x > 0, g, g * self.alpha * np.exp(np.minimum(x, 0)))


class SELU(_Activation):
    """scale * ELU_alpha(x) with Klambauer et al.'s alpha and scale;  f'(x) = scale (x > 0), else scale alpha exp(x)."""

    def f(self, x):
        return np.where(x > 0, x * SELU_SCALE, np.expm1(np.minimum(x, 0)) * (SELU_ALPHA * SELU_SCALE))

    def df(self, x, y, g):
        return np.where(x > 0, g * SELU_SCALE, g * (SELU_ALPHA * SELU_SCALE) * np.exp(np.minimum(x, 0)))


class Softplus(_Activation):
    """log(1 + exp(x)) by nnstab.softplus (exact for all x, no threshold);  f'(x) = sigmoid(x)."""

    def f(self, x):
        return softplus(x)

    def df(self, x, y, g):
        return softplus_backward(x, g)


class Softsign(_Activation):
    """x / (1 + |x|);  f'(x) = 1 / (1 + |x|)^2."""

    def f(self, x):
        return x / (1 + np.abs(x))

    def df(self, x, y, g):
        d = 1 + np.abs(x)
        return g / (d * d)


class Identity(_Activation):
    """x;  f'(x) = 1."""

    def f(self, x):
        return x

    def df(self, x, y, g):
        return g


class Step(_Activation):
    """Heaviside step: 1 for x > 0, else 0 (the perceptron's threshold).

    Its derivative is 0 wherever it exists (and undefined at 0), so backward returns zeros: no
    gradient flows through a step, which is why gradient descent needs a smooth activation.
    """

    def f(self, x):
        return (x > 0).astype(x.dtype)

    def df(self, x, y, g):
        return np.zeros_like(g)
