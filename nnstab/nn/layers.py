"""Dense, Perceptron, Flatten and Dropout: the layers of a first course, each with its derivative beside it."""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np

from nnstab.nn import _args
from nnstab.nn import init as nn_init
from nnstab.nn.errors import LayerInputError
from nnstab.nn.module import Module, Parameter, as_float_dtype


class Dense(Module):
    """y = x W^T + b, with W of shape (out_features, in_features) as in torch.nn.Linear.

    Input (N, in_features) or (..., in_features). `init` picks the weight's distribution (see
    nnstab.nn.init: "he" = he_normal_, "xavier" = xavier_uniform_, "normal" = N(0, 1),
    "scaled" = N(0, 1/fan_in), "uniform" = torch's default U(+-1/sqrt(fan_in))); the bias starts at 0.

    Derivatives: dL/dx = g W,  dL/dW = g^T x,  dL/db = sum over rows of g.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, init: str = "he", *,
                 dtype=np.float32, rng=None):
        super().__init__()
        dt = as_float_dtype(dtype)
        self.in_features = _args.size(in_features, "in_features", "Dense")
        self.out_features = _args.size(out_features, "out_features", "Dense")
        self.weight = Parameter(nn_init.initial_weight((self.out_features, self.in_features), init, dt, rng))
        self.bias = Parameter(np.zeros(self.out_features, dtype=dt)) if bias else None

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"

    def forward(self, x):
        w = self.weight.data
        self.check_array(x, w.dtype)
        if x.ndim == 0 or x.shape[-1] != self.in_features:
            raise LayerInputError(self, f"expected input of shape (N, {self.in_features}), got {x.shape}")
        y = np.matmul(x, w.T)
        if self.bias is not None:
            y += self.bias.data
        self._saved = x
        return y

    def _backward(self, g):
        x = self._saved
        g = self.check_grad_output(g, x.shape[:-1] + (self.out_features,), x.dtype)
        rows = math.prod(x.shape[:-1])   # spelled out: reshape(-1, 0) fails for a layer with no inputs or outputs
        x2, g2 = x.reshape(rows, self.in_features), g.reshape(rows, self.out_features)
        self.weight.accumulate_grad(np.matmul(g2.T, x2))
        if self.bias is not None:
            self.bias.accumulate_grad(g2.sum(axis=0))
        return np.matmul(g, self.weight.data)


class ConvergenceWarning(UserWarning):
    """The perceptron learning rule ran out of epochs with training points still misclassified."""


@dataclass
class PerceptronResult:
    """What `Perceptron.fit` did: `converged` is True when an epoch made no mistakes."""

    converged: bool
    epochs: int
    mistakes: list[int] = field(default_factory=list)   # misclassified points in each epoch


class Perceptron(Module):
    """Rosenblatt's (1958) threshold unit: y = step(w . x + b), step(z) = 1 if z > 0 else 0.

    Input (N, in_features); output (N,) of 0s and 1s in the weights' dtype. Weights start at zero.

    It learns with its own rule, not with gradients: `fit(x, y)` visits the points one at a time
    and, on a mistake, moves the boundary towards the point, w += lr (y - y_hat) x, b += lr (y - y_hat).
    On linearly separable data this stops after finitely many mistakes (Novikoff 1962) and
    `fit` returns `converged=True`; otherwise it stops after `epochs` passes, returns
    `converged=False` and warns with ConvergenceWarning. The step has zero derivative almost
    everywhere, so `backward` gives zero gradients (as `Step` does).
    """

    def __init__(self, in_features: int, *, dtype=np.float32):
        super().__init__()
        dt = as_float_dtype(dtype)
        self.in_features = _args.size(in_features, "in_features", "Perceptron")
        self.weight = Parameter(np.zeros(self.in_features, dtype=dt))
        self.bias = Parameter(np.zeros(1, dtype=dt))

    def extra_repr(self):
        return f"in_features={self.in_features}"

    def _check_x(self, x):
        self.check_array(x, self.weight.data.dtype)
        if x.ndim != 2 or x.shape[1] != self.in_features:
            raise LayerInputError(self, f"expected input of shape (N, {self.in_features}), got {x.shape}")

    def decision_function(self, x):
        """w . x + b for each row (its sign is the prediction)."""
        self._check_x(x)
        return x @ self.weight.data + self.bias.data[0]

    def forward(self, x):
        z = self.decision_function(x)
        self._saved = x
        return (z > 0).astype(x.dtype)

    def _backward(self, g):
        x = self._saved
        self.check_grad_output(g, x.shape[:1], x.dtype)
        self.weight.accumulate_grad(np.zeros_like(self.weight.data))
        self.bias.accumulate_grad(np.zeros_like(self.bias.data))
        return np.zeros_like(x)

    def fit(self, x, y, *, epochs: int = 100, lr: float = 1.0, shuffle: bool = True, rng=None) -> PerceptronResult:
        """Rosenblatt's learning rule until an epoch without mistakes, or `epochs` passes (then a warning)."""
        x = np.asarray(x, dtype=self.weight.data.dtype) if not isinstance(x, np.ndarray) else x
        self._check_x(x)
        epochs = _args.size(epochs, "epochs", "Perceptron.fit", minimum=1)
        lr = _args.real(lr, "lr", "Perceptron.fit", low=0.0)
        y = np.asarray(y)
        if y.shape != (x.shape[0],):
            raise ValueError(f"Perceptron.fit: y must have shape ({x.shape[0]},) (one label per row of x), "
                             f"got {y.shape}")
        if not np.isin(y, (0, 1)).all():
            raise ValueError("Perceptron.fit: labels y must be 0 or 1; map them first, "
                             "e.g. y = (labels == positive_class)")
        y = y.astype(x.dtype)
        gen = nn_init.resolve_rng(rng)
        w, b = self.weight.data, self.bias.data
        mistakes = []
        for _ in range(int(epochs)):
            order = gen.permutation(len(x)) if shuffle else range(len(x))
            count = 0
            for i in order:
                error = y[i] - (x[i] @ w + b[0] > 0)
                if error:
                    w += lr * error * x[i]
                    b += lr * error
                    count += 1
            mistakes.append(count)
            if count == 0:
                return PerceptronResult(True, len(mistakes), mistakes)
        warnings.warn(ConvergenceWarning(
            f"Perceptron.fit did not converge in {epochs} epochs ({mistakes[-1]} mistakes in the last); "
            f"the data may not be linearly separable: raise epochs, or use Dense + Sigmoid with BCELoss"),
            stacklevel=2)
        return PerceptronResult(False, len(mistakes), mistakes)


class Flatten(Module):
    """Merge dimensions start_dim..end_dim into one (torch.nn.Flatten); backward restores the shape."""

    def __init__(self, start_dim: int = 1, end_dim: int = -1):
        super().__init__()
        self.start_dim = _args.integer(start_dim, "start_dim", "Flatten")
        self.end_dim = _args.integer(end_dim, "end_dim", "Flatten")

    def extra_repr(self):
        return f"start_dim={self.start_dim}, end_dim={self.end_dim}"

    def forward(self, x):
        self.check_array(x)
        nd = max(x.ndim, 1)
        s, e = self.start_dim % nd, self.end_dim % nd
        if not -nd <= self.start_dim < nd or not -nd <= self.end_dim < nd or s > e:
            raise LayerInputError(self, f"expected an input with dimensions {self.start_dim}..{self.end_dim}, "
                                        f"got shape {x.shape}")
        y = x.reshape(x.shape[:s] + (math.prod(x.shape[s:e + 1]),) + x.shape[e + 1:])  # -1 fails on empty x
        self._saved = (x.shape, y.shape, x.dtype)
        return y

    def _backward(self, g):
        shape, out_shape, dtype = self._saved
        return self.check_grad_output(g, out_shape, dtype).reshape(shape)


class Dropout(Module):
    """Inverted dropout: in training, zero each entry with probability p and scale the rest by 1/(1-p).

    The expected output equals the input, so eval mode is the identity (no rescaling at test time).
    `rng` (a seed or np.random.Generator) makes the masks reproducible; without it the module-wide
    generator of nnstab.nn.init is used (reset by nnstab.nn.manual_seed). backward multiplies by the
    same mask and scale.
    """

    def __init__(self, p: float = 0.5, *, rng=None):
        super().__init__()
        self.p = _args.real(p, "p", "Dropout", low=0.0, high=1.0)  # the probability of zeroing an entry
        self._rng = None if rng is None else nn_init.resolve_rng(rng)

    def extra_repr(self):
        return f"p={self.p}"

    def forward(self, x):
        self.check_array(x)
        if not self.training or self.p == 0.0:
            self._saved = (1, x.shape, x.dtype)
            return x
        gen = nn_init.resolve_rng(None) if self._rng is None else self._rng
        keep = gen.random(x.shape, dtype=np.float32) >= self.p
        noise = keep.astype(x.dtype)
        if self.p < 1.0:
            noise /= x.dtype.type(1.0 - self.p)
        self._saved = (noise, x.shape, x.dtype)
        return np.asarray(x * noise)  # an array also for 0-d x (NumPy would return a scalar)

    def _backward(self, g):
        noise, shape, dtype = self._saved
        return np.asarray(self.check_grad_output(g, shape, dtype) * noise)
