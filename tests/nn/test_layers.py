"""Dense, Perceptron, Flatten and Dropout against torch autograd and finite differences."""
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nnstab import nn

DTYPES = [np.float64, np.float32]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bias", [True, False])
def test_dense_matches_torch_linear(torch_check, dtype, bias):
    ours = nn.Dense(7, 5, bias=bias, dtype=dtype, rng=1)
    theirs = torch.nn.Linear(7, 5, bias=bias, dtype=torch.float64 if dtype == np.float64 else torch.float32)
    x = np.random.default_rng(2).standard_normal((6, 7))
    torch_check(ours, theirs, x, dtype)


def test_dense_accepts_leading_dimensions_like_torch(torch_check):
    ours = nn.Dense(4, 3, dtype=np.float64, rng=0)
    theirs = torch.nn.Linear(4, 3, dtype=torch.float64)
    torch_check(ours, theirs, np.random.default_rng(3).standard_normal((2, 5, 4)), np.float64)


@settings(max_examples=15)
@given(n=st.integers(1, 9), fin=st.integers(1, 12), fout=st.integers(1, 12),
       init=st.sampled_from(sorted(nn.init.SCHEMES)))
def test_dense_gradients_match_torch_for_any_shape_and_init(torch_check, n, fin, fout, init):
    ours = nn.Dense(fin, fout, init=init, dtype=np.float64, rng=n)
    theirs = torch.nn.Linear(fin, fout, dtype=torch.float64)
    torch_check(ours, theirs, np.random.default_rng(n).standard_normal((n, fin)), np.float64)


def test_dense_gradients_equal_finite_differences(fd_check):
    fd_check(nn.Dense(5, 4, dtype=np.float64, rng=0), np.random.default_rng(1).standard_normal((3, 5)))


def test_dense_gradients_accumulate_until_zero_grad():
    layer = nn.Dense(3, 2, dtype=np.float64, rng=0)
    x, g = np.ones((4, 3)), np.ones((4, 2))
    layer(x)
    layer.backward(g)
    first = layer.weight.grad.copy()
    layer(x)
    layer.backward(g)
    np.testing.assert_array_equal(layer.weight.grad, 2 * first)
    layer.zero_grad()
    assert layer.weight.grad is None


def test_perceptron_output_is_the_threshold_of_its_affine_map():
    p = nn.Perceptron(3, dtype=np.float64)
    p.weight.data[:] = [1.0, -2.0, 0.5]
    p.bias.data[:] = 0.25
    x = np.random.default_rng(0).standard_normal((20, 3))
    expected = torch.heaviside(torch.from_numpy(x) @ torch.from_numpy(p.weight.data) + 0.25,
                               torch.tensor(0.0, dtype=torch.float64))
    np.testing.assert_array_equal(p(x), expected.numpy())


def test_perceptron_converges_on_separable_data():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((200, 2))
    w_true = np.array([2.0, -1.0])
    margin = x @ w_true + 0.3
    keep = np.abs(margin) > 0.2            # a margin makes separability robust
    x, y = x[keep], (margin[keep] > 0).astype(int)
    p = nn.Perceptron(2, dtype=np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")      # a ConvergenceWarning here would fail the test
        result = p.fit(x, y, epochs=500, rng=0)
    assert result.converged and result.mistakes[-1] == 0
    np.testing.assert_array_equal(p(x), y)


def test_perceptron_reports_non_convergence_on_xor():
    x = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=np.float64)
    y = np.array([0, 1, 1, 0])
    p = nn.Perceptron(2, dtype=np.float64)
    with pytest.warns(nn.ConvergenceWarning, match="linearly separable"):
        result = p.fit(x, y, epochs=50, rng=0)
    assert not result.converged and result.epochs == 50 and result.mistakes[-1] > 0


def test_perceptron_rejects_labels_other_than_zero_and_one():
    with pytest.raises(ValueError, match="0 or 1"):
        nn.Perceptron(2, dtype=np.float64).fit(np.zeros((3, 2)), np.array([-1, 1, 1]))


def test_perceptron_and_step_pass_no_gradient():
    p = nn.Perceptron(2, dtype=np.float64)
    p(np.ones((3, 2)))
    np.testing.assert_array_equal(p.backward(np.ones(3)), np.zeros((3, 2)))
    np.testing.assert_array_equal(p.weight.grad, 0)


@pytest.mark.parametrize("start_dim,end_dim", [(1, -1), (0, -1), (1, 2), (2, 3)])
def test_flatten_matches_torch(torch_check, start_dim, end_dim):
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 5))
    torch_check(nn.Flatten(start_dim, end_dim), torch.nn.Flatten(start_dim, end_dim), x, np.float64)


@pytest.mark.parametrize("dtype", DTYPES)
def test_dropout_is_inverted_dropout_with_its_mask(agrees, dtype):
    p = 0.3
    layer = nn.Dropout(p, rng=0)
    x = np.random.default_rng(1).uniform(0.5, 1.5, (50, 40)).astype(dtype)   # no zeros: the mask is out != 0
    out = layer(x)
    mask = torch.from_numpy((out != 0).astype(dtype))
    xt = torch.from_numpy(x).requires_grad_(True)
    out_t = xt * mask / (1 - p)
    agrees(out, out_t, dtype, "output")
    g = np.random.default_rng(2).standard_normal(x.shape).astype(dtype)
    out_t.backward(torch.from_numpy(g))
    agrees(layer.backward(g), xt.grad, dtype, "input gradient")
    assert abs(mask.mean().item() - (1 - p)) < 0.03


def test_dropout_is_identity_in_eval_mode_and_seeded_in_training():
    x = np.ones((8, 8), dtype=np.float32)
    a, b = nn.Dropout(0.5, rng=7), nn.Dropout(0.5, rng=7)
    np.testing.assert_array_equal(a(x), b(x))
    a.eval()
    assert a(x) is x
    np.testing.assert_array_equal(a.backward(x), x)


def test_dropout_with_p_one_zeroes_everything():
    np.testing.assert_array_equal(nn.Dropout(1.0, rng=0)(np.ones((3, 3))), 0)
