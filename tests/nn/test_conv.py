"""Conv2d, MaxPool2d and AvgPool2d against torch autograd (any geometry) and finite differences."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nnstab import nn

TORCH_DTYPE = {np.float64: torch.float64, np.float32: torch.float32}


def conv_pair(cin, cout, k, stride, padding, dtype, bias=True, seed=0):
    ours = nn.Conv2d(cin, cout, k, stride=stride, padding=padding, bias=bias, dtype=dtype, rng=seed)
    if bias:
        ours.bias.data[:] = np.random.default_rng(seed).standard_normal(cout)   # a non-zero bias is tested too
    theirs = torch.nn.Conv2d(cin, cout, k, stride=stride, padding=padding, bias=bias, dtype=TORCH_DTYPE[dtype])
    return ours, theirs


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("k,stride,padding", [(3, 1, 0), (3, 1, 1), (3, 2, 1), ((2, 3), (2, 1), (1, 0)), (1, 1, 0)])
def test_conv2d_matches_torch(torch_check, dtype, k, stride, padding):
    ours, theirs = conv_pair(3, 4, k, stride, padding, dtype)
    torch_check(ours, theirs, np.random.default_rng(1).standard_normal((2, 3, 7, 6)), dtype)


@settings(max_examples=20)
@given(n=st.integers(1, 3), cin=st.integers(1, 3), cout=st.integers(1, 3), h=st.integers(1, 7), w=st.integers(1, 7),
       k=st.integers(1, 3), stride=st.integers(1, 3), padding=st.integers(0, 2), bias=st.booleans())
def test_conv2d_matches_torch_for_any_geometry(torch_check, n, cin, cout, h, w, k, stride, padding, bias):
    if h + 2 * padding < k or w + 2 * padding < k:
        return   # no output pixel: the layer raises (tested below)
    ours, theirs = conv_pair(cin, cout, k, stride, padding, np.float64, bias=bias, seed=h)
    torch_check(ours, theirs, np.random.default_rng(n).standard_normal((n, cin, h, w)), np.float64)


def test_conv2d_gradients_equal_finite_differences(fd_check):
    ours, _ = conv_pair(2, 3, 3, 2, 1, np.float64)
    fd_check(ours, np.random.default_rng(0).standard_normal((2, 2, 5, 5)))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("k,stride,padding", [(2, None, 0), (3, 2, 1), (3, 1, 0), ((2, 3), (1, 2), (1, 1))])
def test_maxpool_matches_torch(torch_check, dtype, k, stride, padding):
    x = np.random.default_rng(0).standard_normal((2, 3, 7, 8))
    torch_check(nn.MaxPool2d(k, stride, padding), torch.nn.MaxPool2d(k, stride, padding), x, dtype)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("k,stride,padding", [(2, None, 0), (3, 2, 1), (3, 1, 0), ((2, 3), (1, 2), (1, 1))])
def test_avgpool_matches_torch(torch_check, dtype, k, stride, padding):
    x = np.random.default_rng(0).standard_normal((2, 3, 7, 8))
    torch_check(nn.AvgPool2d(k, stride, padding), torch.nn.AvgPool2d(k, stride, padding), x, dtype)


@settings(max_examples=20)
@given(h=st.integers(2, 8), w=st.integers(2, 8), k=st.integers(1, 3), stride=st.integers(1, 3),
       padding=st.integers(0, 1), avg=st.booleans())
def test_pools_match_torch_for_any_geometry(torch_check, h, w, k, stride, padding, avg):
    if padding > k // 2 or h + 2 * padding < k or w + 2 * padding < k:
        return   # torch's own constraints (tested below for ours)
    ours, theirs = ((nn.AvgPool2d, torch.nn.AvgPool2d) if avg else (nn.MaxPool2d, torch.nn.MaxPool2d))
    x = np.random.default_rng(h * w).standard_normal((2, 2, h, w))
    torch_check(ours(k, stride, padding), theirs(k, stride, padding), x, np.float64)


def test_maxpool_gives_the_gradient_to_the_first_of_tied_maxima_as_torch():
    x = np.zeros((1, 1, 4, 4))
    x[0, 0, :2, :2] = 1.0     # a tie inside the first window
    torch_check_ties = torch.nn.MaxPool2d(2)
    xt = torch.from_numpy(x).requires_grad_(True)
    torch_check_ties(xt).sum().backward()
    layer = nn.MaxPool2d(2)
    layer(x)
    np.testing.assert_array_equal(layer.backward(np.ones((1, 1, 2, 2))), xt.grad.numpy())


@pytest.mark.parametrize("pool", [nn.MaxPool2d, nn.AvgPool2d])
def test_pool_gradients_equal_finite_differences(fd_check, pool):
    fd_check(pool(3, 2, 1), np.random.default_rng(0).standard_normal((2, 2, 6, 5)))


def test_conv_output_keeps_float16():
    layer = nn.Conv2d(1, 2, 3, padding=1, dtype=np.float16, rng=0)
    out = layer(np.ones((1, 1, 4, 4), dtype=np.float16))
    assert out.dtype == np.float16 and out.shape == (1, 2, 4, 4)
    assert layer.backward(np.ones_like(out)).dtype == np.float16
    assert layer.weight.grad.dtype == np.float16


def test_pools_reject_padding_beyond_half_the_kernel_as_torch():
    with pytest.raises(ValueError, match="at most half"):
        nn.MaxPool2d(2, padding=2)
