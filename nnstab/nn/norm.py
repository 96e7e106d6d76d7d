"""BatchNorm for features (N, C) or (N, C, L) and for images (N, C, H, W), with running statistics like torch.

Training:  y = gamma * (x - mean) / sqrt(var + eps) + beta, mean and (biased) var over every axis but C;
           running_mean <- (1 - momentum) running_mean + momentum mean,
           running_var  <- (1 - momentum) running_var  + momentum var * n/(n-1)   (the unbiased estimate),
           with momentum=None meaning the cumulative average over the batches seen (torch's convention).
Eval:      the running statistics replace the batch's, so an example's output no longer depends on its batch.

Backward in training, with x_hat the normalised input, g_hat = gamma * g and sums over the reduced axes:
    dx = (1/sqrt(var + eps)) * (g_hat - mean(g_hat) - x_hat * mean(g_hat * x_hat)),
    dgamma = sum(g * x_hat),  dbeta = sum(g).
float16 inputs are normalised in float32 (their sums would lose the digits the statistics need).
"""
from __future__ import annotations

import numpy as np

from nnstab.nn import _args
from nnstab.nn.errors import LayerInputError
from nnstab.nn.module import Module, Parameter, as_float_dtype


EMPTY_BATCH = "empty batch"   # what forward saves for an input without rows: backward returns zeros


class BatchNorm(Module):
    """Batch normalisation over channel axis 1 (torch's BatchNorm1d and BatchNorm2d in one layer)."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True, *, dtype=np.float32):
        super().__init__()
        dt = as_float_dtype(dtype)
        self.num_features = _args.size(num_features, "num_features", "BatchNorm", minimum=1)
        self.eps = _args.real(eps, "eps", "BatchNorm", low=0.0)
        self.momentum = None if momentum is None else _args.real(momentum, "momentum", "BatchNorm", 0.0, 1.0)
        self.affine, self.track_running_stats = affine, track_running_stats
        self.weight = Parameter(np.ones(self.num_features, dtype=dt)) if affine else None
        self.bias = Parameter(np.zeros(self.num_features, dtype=dt)) if affine else None
        if track_running_stats:
            self.register_buffer("running_mean", np.zeros(self.num_features, dtype=dt))
            self.register_buffer("running_var", np.ones(self.num_features, dtype=dt))
            self.register_buffer("num_batches_tracked", np.zeros((), dtype=np.int64))
        self._dtype = dt

    def extra_repr(self):
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}"

    def to(self, dtype):
        super().to(dtype)
        self._dtype = as_float_dtype(dtype)
        return self

    def _shape(self, x):
        """Reduction axes and the shape that broadcasts a per-channel vector against x."""
        if x.ndim < 2 or x.shape[1] != self.num_features:
            raise LayerInputError(self, f"expected input of shape (N, {self.num_features}) or "
                                        f"(N, {self.num_features}, H, W), got {x.shape}")
        axes = (0,) + tuple(range(2, x.ndim))
        return axes, (1, self.num_features) + (1,) * (x.ndim - 2)

    def forward(self, x):
        self.check_array(x, self.weight.data.dtype if self.affine else self._dtype)
        axes, bshape = self._shape(x)
        xw = x.astype(np.promote_types(x.dtype, np.float32), copy=False)
        use_batch = self.training or not self.track_running_stats
        if use_batch and x.size == 0:   # an empty batch: nothing to normalise or to learn from (as torch)
            self._saved = (EMPTY_BATCH, x.shape, x.dtype)
            return x.copy()
        if use_batch:
            n = x.size // self.num_features
            if n < 2:
                raise LayerInputError(self, f"needs more than 1 value per channel in training, got input {x.shape}; "
                                            f"use a larger batch or call model.eval()")
            mean = xw.mean(axis=axes)
            var = xw.var(axis=axes)
            if self.training and self.track_running_stats:
                self._update_running(mean, var * (n / (n - 1)))
        else:
            mean, var = self.running_mean.astype(xw.dtype), self.running_var.astype(xw.dtype)
        invstd = 1.0 / np.sqrt(var + self.eps)
        x_hat = (xw - mean.reshape(bshape)) * invstd.reshape(bshape)
        y = x_hat
        if self.affine:
            y = x_hat * self.weight.data.reshape(bshape) + self.bias.data.reshape(bshape)
        self._saved = (x_hat, invstd, axes, bshape, use_batch, x.dtype)
        return y.astype(x.dtype, copy=False)

    def _update_running(self, mean, unbiased_var):
        self.num_batches_tracked += 1
        m = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        dt = self.running_mean.dtype
        self.running_mean = ((1 - m) * self.running_mean + m * mean).astype(dt)
        self.running_var = ((1 - m) * self.running_var + m * unbiased_var).astype(dt)

    def _backward(self, g):
        if isinstance(self._saved[0], str):        # the last forward had an empty batch
            return self._backward_empty(g)
        x_hat, invstd, axes, bshape, use_batch, dtype = self._saved
        g = self.check_grad_output(g, x_hat.shape, dtype).astype(x_hat.dtype, copy=False)
        if self.affine:
            self.weight.accumulate_grad((g * x_hat).sum(axis=axes).astype(dtype))
            self.bias.accumulate_grad(g.sum(axis=axes).astype(dtype))
            g_hat = g * self.weight.data.reshape(bshape)
        else:
            g_hat = g
        if not use_batch:   # running statistics are constants
            return (g_hat * invstd.reshape(bshape)).astype(dtype, copy=False)
        mean_g = g_hat.mean(axis=axes).reshape(bshape)
        mean_gx = (g_hat * x_hat).mean(axis=axes).reshape(bshape)
        return ((g_hat - mean_g - x_hat * mean_gx) * invstd.reshape(bshape)).astype(dtype, copy=False)

    def _backward_empty(self, g):
        _, shape, dtype = self._saved
        self.check_grad_output(g, shape, dtype)
        if self.affine:
            self.weight.accumulate_grad(np.zeros_like(self.weight.data))
            self.bias.accumulate_grad(np.zeros_like(self.bias.data))
        return np.zeros(shape, dtype=dtype)
