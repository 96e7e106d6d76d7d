"""Conv2d, MaxPool2d and AvgPool2d on NCHW arrays, vectorised with strided window views (im2col).

Every window of the padded input is a view (`sliding_window_view`, no copy); a convolution copies
the windows once into the im2col matrix `cols` (per example: one row per weight of a filter, one
column per output pixel) and becomes one batched matrix product whose result is already NCHW.
The only Python loops run over the kh*kw positions inside a kernel (pooling, and adding the
windows' gradients back onto the input), never over pixels.

Output size, as in torch: H_out = (H + 2 padding - kernel) // stride + 1.
"""
from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from nnstab.nn import _args
from nnstab.nn import init as nn_init
from nnstab.nn.activations import pass_where
from nnstab.nn.errors import LayerInputError
from nnstab.nn.module import Module, Parameter, as_float_dtype


def _pair(v, name: str, owner: str) -> tuple[int, int]:
    pair = (v, v) if isinstance(v, (int, np.integer)) else tuple(v) if isinstance(v, (tuple, list)) else None
    if pair is None or len(pair) != 2 or not all(isinstance(i, (int, np.integer)) and not isinstance(i, bool)
                                                 for i in pair):
        raise TypeError(f"{owner}: {name} must be an int or a pair of ints, got {v!r}")
    return int(pair[0]), int(pair[1])


class _Window(Module):
    """What convolution and pooling share: kernel, stride, padding, the output size and the padded input."""

    def __init__(self, kernel_size, stride, padding):
        super().__init__()
        owner = type(self).__name__
        self.kernel_size = _pair(kernel_size, "kernel_size", owner)
        self.stride = _pair(self.kernel_size if stride is None else stride, "stride", owner)
        self.padding = _pair(padding, "padding", owner)
        if min(self.kernel_size) < 1 or min(self.stride) < 1 or min(self.padding) < 0:
            raise ValueError(f"{owner}: kernel_size and stride must be >= 1 and padding >= 0, got kernel_size="
                             f"{self.kernel_size}, stride={self.stride}, padding={self.padding}")

    def _geometry(self, x, channels=None):
        """(N, C, H_out, W_out) after checking the input is (N, C, H, W) and large enough."""
        if x.ndim != 4 or (channels is not None and x.shape[1] != channels):
            want = f"(N, {channels}, H, W)" if channels is not None else "(N, C, H, W)"
            raise LayerInputError(self, f"expected input of shape {want}, got {x.shape}")
        h_out, w_out = self._out_size(x.shape[2], x.shape[3])
        if h_out < 1 or w_out < 1:
            raise LayerInputError(self, f"input of spatial size {x.shape[2:]} with padding {self.padding} is "
                                        f"smaller than the kernel {self.kernel_size}; pad it or use a smaller kernel")
        return x.shape[0], x.shape[1], h_out, w_out

    def _out_size(self, h, w):
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        return (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1

    def _pad(self, x, value=0.0):
        ph, pw = self.padding
        if ph == 0 and pw == 0:
            return x
        n, c, h, w = x.shape
        xp = np.full((n, c, h + 2 * ph, w + 2 * pw), value, dtype=x.dtype)
        xp[:, :, ph:ph + h, pw:pw + w] = x
        return xp

    def _windows(self, xp):
        """(N, C, H_out, W_out, kh, kw): window (i, j) of the padded input, a strided view (no copy)."""
        (sh, sw) = self.stride
        return sliding_window_view(xp, self.kernel_size, axis=(2, 3))[:, :, ::sh, ::sw]

    def _tap(self, i, j, h_out, w_out):
        """Index of the input pixels that kernel position (i, j) sees, one per output pixel."""
        (sh, sw) = self.stride
        return np.s_[i:i + sh * (h_out - 1) + 1:sh, j:j + sw * (w_out - 1) + 1:sw]

    def _unpad(self, dxp, shape):
        ph, pw = self.padding
        return dxp[:, :, ph:ph + shape[2], pw:pw + shape[3]]

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class Conv2d(_Window):
    """2-d cross-correlation (torch.nn.Conv2d): out[n, o] = b[o] + sum_c,i,j w[o, c, i, j] x[n, c, s*h + i, s*w + j].

    Weight (out_channels, in_channels, kh, kw); input (N, in_channels, H, W), zero padding.
    As matrices, per example n, with cols[n] the im2col matrix (C*kh*kw, H_out*W_out) and W2 the
    weight reshaped to (out_channels, C*kh*kw): out[n] = W2 cols[n] + b (already NCHW), and
    backward is the matrix derivatives dW2 = sum_n g[n] cols[n]^T, db = sums of g,
    dcols[n] = W2^T g[n], then dcols added back onto the input windows.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, bias: bool = True,
                 init: str = "he", *, dtype=np.float32, rng=None):
        super().__init__(kernel_size, stride, padding)
        dt = as_float_dtype(dtype)
        self.in_channels = _args.size(in_channels, "in_channels", "Conv2d")
        self.out_channels = _args.size(out_channels, "out_channels", "Conv2d")
        shape = (self.out_channels, self.in_channels) + self.kernel_size
        self.weight = Parameter(nn_init.initial_weight(shape, init, dt, rng))
        self.bias = Parameter(np.zeros(self.out_channels, dtype=dt)) if bias else None

    def extra_repr(self):
        return f"{self.in_channels}, {self.out_channels}, " + super().extra_repr()

    def forward(self, x):
        w = self.weight.data
        self.check_array(x, w.dtype)
        n, c, h_out, w_out = self._geometry(x, self.in_channels)
        windows = self._windows(self._pad(x))                        # (N, C, Ho, Wo, kh, kw) view
        k = c * self.kernel_size[0] * self.kernel_size[1]            # sizes spelled out: -1 fails on empty arrays
        cols = windows.transpose(0, 1, 4, 5, 2, 3).reshape(n, k, h_out * w_out)   # the one copy: (N, C*kh*kw, Ho*Wo)
        out = np.matmul(w.reshape(self.out_channels, k), cols)       # (N, O, Ho*Wo), already NCHW
        if self.bias is not None:
            out += self.bias.data[:, None]
        self._saved = (cols, x.shape)
        return out.reshape(n, self.out_channels, h_out, w_out)

    def _backward(self, g):
        cols, shape = self._saved
        w = self.weight.data
        n, c, h, wd = shape
        h_out, w_out = self._out_size(h, wd)
        g = self.check_grad_output(g, (n, self.out_channels, h_out, w_out), w.dtype)
        g3 = g.reshape(n, self.out_channels, h_out * w_out)
        w2 = w.reshape(self.out_channels, c * self.kernel_size[0] * self.kernel_size[1])
        self.weight.accumulate_grad(np.matmul(g3, cols.transpose(0, 2, 1)).sum(axis=0).reshape(w.shape))
        if self.bias is not None:
            self.bias.accumulate_grad(g3.sum(axis=(0, 2)))
        kh, kw = self.kernel_size
        dcols = np.matmul(w2.T, g3).reshape(n, c, kh, kw, h_out, w_out)
        ph, pw = self.padding
        dxp = np.zeros((n, c, h + 2 * ph, wd + 2 * pw), dtype=w.dtype)
        for i in range(kh):
            for j in range(kw):
                dxp[(slice(None), slice(None)) + self._tap(i, j, h_out, w_out)] += dcols[:, :, i, j]
        return self._unpad(dxp, shape)


class _Pool(_Window):
    def __init__(self, kernel_size, stride=None, padding=0):
        super().__init__(kernel_size, stride, padding)
        if self.padding[0] > self.kernel_size[0] // 2 or self.padding[1] > self.kernel_size[1] // 2:
            raise ValueError(f"{type(self).__name__}: padding {self.padding} must be at most half the kernel size "
                             f"{self.kernel_size}, as in torch")


class MaxPool2d(_Pool):
    """Maximum over each kh x kw window (torch.nn.MaxPool2d; stride defaults to the kernel, padding is -inf).

    Forward is a running np.maximum over the kh*kw kernel positions (NaN propagates, as in torch).
    Backward sends each window's gradient to one entry, chosen by torch's CPU rule: scanning the
    window in row-major order, the first maximum, or the last NaN when there is one; overlapping
    windows add.
    """

    def forward(self, x):
        self.check_array(x)
        n, c, h_out, w_out = self._geometry(x)
        xp = self._pad(x, -np.inf)
        kh, kw = self.kernel_size
        best = self._tap_of(xp, 0, h_out, w_out).copy()
        for k in range(1, kh * kw):
            np.maximum(best, self._tap_of(xp, k, h_out, w_out), out=best)
        self._saved = (xp, best, x.shape)
        return best

    def _tap_of(self, a, k, h_out, w_out):
        kw = self.kernel_size[1]
        return a[(slice(None), slice(None)) + self._tap(k // kw, k % kw, h_out, w_out)]

    def _backward(self, g):
        xp, best, shape = self._saved
        g = self.check_grad_output(g, best.shape, best.dtype)
        h_out, w_out = best.shape[2:]
        taps = range(self.kernel_size[0] * self.kernel_size[1])
        dxp = np.zeros(xp.shape, dtype=best.dtype)
        taken = np.zeros(best.shape, dtype=bool)
        for k in taps:                                   # the first maximum of each window
            hit = self._tap_of(xp, k, h_out, w_out) == best
            hit &= ~taken
            taken |= hit
            self._tap_of(dxp, k, h_out, w_out)[...] += pass_where(hit, g)
        if not taken.all():                              # NaN windows: the last NaN, as torch scans
            for k in reversed(taps):
                hit = np.isnan(self._tap_of(xp, k, h_out, w_out)) & ~taken
                taken |= hit
                self._tap_of(dxp, k, h_out, w_out)[...] += np.where(hit, g, 0)
        return self._unpad(dxp, shape)


class AvgPool2d(_Pool):
    """Mean over each kh x kw window (torch.nn.AvgPool2d with zero padding counted, count_include_pad=True).

    out = (sum of the window) / (kh*kw); backward spreads g / (kh*kw) over the window's entries.
    float16 inputs are summed in float32.
    """

    def forward(self, x):
        self.check_array(x)
        n, c, h_out, w_out = self._geometry(x)
        xp = self._pad(x)
        acc = np.zeros((n, c, h_out, w_out), dtype=np.promote_types(x.dtype, np.float32))
        kh, kw = self.kernel_size
        for i in range(kh):
            for j in range(kw):
                acc += xp[(slice(None), slice(None)) + self._tap(i, j, h_out, w_out)]
        self._saved = (x.shape, acc.shape, x.dtype)
        return (acc / (kh * kw)).astype(x.dtype, copy=False)

    def _backward(self, g):
        shape, out_shape, dtype = self._saved
        g = self.check_grad_output(g, out_shape, dtype)
        kh, kw = self.kernel_size
        ph, pw = self.padding
        h_out, w_out = out_shape[2:]
        share = g / g.dtype.type(kh * kw)
        dxp = np.zeros((shape[0], shape[1], shape[2] + 2 * ph, shape[3] + 2 * pw), dtype=g.dtype)
        for i in range(kh):
            for j in range(kw):
                dxp[(slice(None), slice(None)) + self._tap(i, j, h_out, w_out)] += share
        return self._unpad(dxp, shape)
