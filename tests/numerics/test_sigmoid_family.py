"""Tests for nnstab.numerics.sigmoid_family: sigmoid, log_sigmoid, softplus and their derivatives, NumPy and torch."""
import mpmath
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nnstab import oracle
from nnstab.numerics.sigmoid_family import (
    log_sigmoid,
    log_sigmoid_backward,
    sigmoid,
    sigmoid_backward,
    softplus,
    softplus_backward,
)
from nnstab.testing import ULP_BOUNDS, assert_ulp_close, ulp_error
from nnstab.testing.families import family_arrays, limits, round_to, to_torch
from nnstab.testing.strategies import finite_floats, logits
from nnstab.testing.ulp import FORMATS

FUNCTIONS = {  # name: (function, exact value, derivative, exact vector-Jacobian product)
    "sigmoid": (sigmoid, oracle.sigmoid, sigmoid_backward, oracle.grad_sigmoid),
    "log_sigmoid": (log_sigmoid, oracle.log_sigmoid, log_sigmoid_backward, oracle.grad_log_sigmoid),
    "softplus": (softplus, oracle.softplus, softplus_backward, oracle.grad_softplus),
}
DTYPES = ("float16", "bfloat16", "float32", "float64")
# The logit families that mean something elementwise: every magnitude, exp's edges, infinities.
FAMILIES = ("huge", "tiny", "subnormal", "exp_edges", "wide_spread", "masked", "random")


def as_kind(values, dtype, kind):
    """values (float64, exact in dtype) as a NumPy array or a torch tensor of dtype."""
    if kind == "torch":
        return to_torch(values, dtype)
    return np.asarray(values, dtype=np.float64).astype(dtype)


def kinds(dtype):
    return ("torch",) if dtype == "bfloat16" else ("numpy", "torch")


def weights(shape, dtype, seed=0):
    """A grad_output of ones and random weights in [1/2, 2], exact in dtype."""
    g = np.random.default_rng(seed).uniform(0.5, 2.0, size=shape)
    g.flat[::3] = 1.0
    return round_to(g, dtype).astype(np.float64)


# ---------------------------------------------------------------- against the exact values

@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", FUNCTIONS)
def test_value_is_within_the_ulp_bound_of_the_exact_value(name, dtype, family):
    fn, exact_fn = FUNCTIONS[name][:2]
    x = family_arrays(family, dtype, rng=7, rows=8).astype(np.float64)
    exact = exact_fn(x)
    for kind in kinds(dtype):
        assert_ulp_close(fn(as_kind(x, dtype, kind)), exact, dtype, inputs=x, name=f"{name} ({kind}, {family})")


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", FUNCTIONS)
def test_derivative_is_within_the_ulp_bound_of_the_exact_one(name, dtype, family):
    fn, _, backward, exact_grad = FUNCTIONS[name]
    x = family_arrays(family, dtype, rng=11, rows=8).astype(np.float64)
    g = weights(x.shape, dtype)
    exact = exact_grad(x, grad_output=g)
    for kind in kinds(dtype):
        dx = backward(as_kind(x, dtype, kind), as_kind(g, dtype, kind))
        assert_ulp_close(dx, exact, dtype, inputs=x, name=f"{name}_backward ({kind}, {family})")
    xt = to_torch(x, dtype).requires_grad_(True)
    fn(xt).backward(to_torch(g, dtype))
    assert_ulp_close(xt.grad, exact, dtype, inputs=x, name=f"torch autograd of {name} ({family})")


def test_sigmoid_keeps_subnormal_results_in_float64():
    # sigmoid(-740) = 4.2e-322: subnormal, and flushed to 0 by 1 / (1 + exp(740)).
    x = np.array([-740.0, -745.0, -709.9, -708.5])
    exact = oracle.sigmoid(x)
    for y in (sigmoid(x), sigmoid(torch.from_numpy(x)).numpy()):
        assert (y > 0).all()
        assert_ulp_close(y, exact, "float64")
    assert_ulp_close(softplus(x), oracle.softplus(x), "float64")
    assert_ulp_close(sigmoid_backward(x, np.ones_like(x)), oracle.grad_sigmoid(x), "float64")


def test_large_arguments_keep_their_tiny_parts():
    # Where 1 - sigmoid(x) or log(1 + exp(-x)) would round to 0, the exact values are ~exp(-x).
    x = np.array([40.0, 100.0, 700.0])
    assert_ulp_close(log_sigmoid(x), oracle.log_sigmoid(x), "float64")
    assert_ulp_close(sigmoid_backward(x, np.ones_like(x)), oracle.grad_sigmoid(x), "float64")
    assert_ulp_close(log_sigmoid_backward(x, np.ones_like(x)), oracle.grad_log_sigmoid(x), "float64")
    assert (log_sigmoid(x) < 0).all() and (sigmoid_backward(x, np.ones_like(x)) > 0).all()


# ---------------------------------------------------------------- laws

def _law_inputs(dtype, kind, values):
    x = round_to(np.asarray(values, dtype=np.float64), dtype).astype(np.float64)
    return x, as_kind(x, dtype, kind)


def _floats(y):
    return y.detach().to(torch.float64).numpy() if isinstance(y, torch.Tensor) else np.asarray(y, np.float64)


KIND_DTYPES = [(k, d) for d in DTYPES for k in kinds(d)]
# Narrow floats are drawn by filtering wider ones; that filtering is expected.
law_settings = settings(max_examples=25, suppress_health_check=list(HealthCheck))


def float_values(dtype, min_size=1):
    """Lists of any finite floats of dtype, or the values of a hard family."""
    finite = [f for f in FAMILIES if f != "masked"]
    family = logits(dtype=dtype, family=finite, rows=(1, 2)).map(lambda a: a.ravel().tolist())
    return st.one_of(st.lists(finite_floats(dtype), min_size=min_size, max_size=16), family)


@pytest.mark.parametrize("kind,dtype", KIND_DTYPES)
@law_settings
@given(data=st.data())
def test_sigmoid_of_x_and_of_minus_x_add_up_to_one(kind, dtype, data):
    values = data.draw(float_values(dtype))
    x, xk = _law_inputs(dtype, kind, values)
    total = _floats(sigmoid(xk)) + _floats(sigmoid(-xk))  # exact in float64 for narrow dtypes
    eps = limits(dtype)["eps"]
    assert np.all(np.abs(total - 1) <= ULP_BOUNDS[dtype] * eps + np.finfo(np.float64).eps), (x, total)


@pytest.mark.parametrize("kind,dtype", KIND_DTYPES)
@law_settings
@given(data=st.data())
def test_softplus_of_x_minus_softplus_of_minus_x_is_x(kind, dtype, data):
    values = data.draw(float_values(dtype))
    x, xk = _law_inputs(dtype, kind, values)
    a, b = _floats(softplus(xk)), _floats(softplus(-xk))
    fmt = FORMATS[dtype]
    with mpmath.workprec(2200):  # enough bits to hold a - b - x exactly for any float64 values
        for xi, ai, bi in zip(x.tolist(), a.tolist(), b.tolist()):
            slack = ULP_BOUNDS[dtype] * (fmt.ulp(mpmath.mpf(ai)) + fmt.ulp(mpmath.mpf(bi)))
            assert abs(mpmath.mpf(ai) - bi - xi) <= slack, (xi, ai, bi)


@pytest.mark.parametrize("kind,dtype", KIND_DTYPES)
@law_settings
@given(data=st.data())
def test_log_sigmoid_of_x_is_minus_softplus_of_minus_x(kind, dtype, data):
    x = data.draw(logits(dtype=dtype, family=FAMILIES)).astype(np.float64)
    xk = as_kind(x, dtype, kind)
    assert (ulp_error(log_sigmoid(xk), -_floats(softplus(-xk)), dtype) <= ULP_BOUNDS[dtype]).all()


@pytest.mark.parametrize("kind,dtype", KIND_DTYPES)
@law_settings
@given(data=st.data())
def test_all_three_are_monotone_and_in_range(kind, dtype, data):
    values = data.draw(float_values(dtype, min_size=2))
    x, xk = _law_inputs(dtype, kind, np.sort(values))
    s, ls, sp = (_floats(f(xk)) for f in (sigmoid, log_sigmoid, softplus))
    for y in (s, ls, sp):
        assert np.all(np.diff(y) >= 0), (x, y)
    assert np.all((s >= 0) & (s <= 1)) and np.all(ls <= 0) and np.all(sp >= 0)


@pytest.mark.parametrize("kind,dtype", KIND_DTYPES)
def test_the_sigmoid_derivative_is_even_and_at_most_a_quarter(kind, dtype):
    x = family_arrays("random", dtype, rng=3, rows=4).astype(np.float64)
    g = np.ones_like(x)
    d_plus = _floats(sigmoid_backward(as_kind(x, dtype, kind), as_kind(g, dtype, kind)))
    d_minus = _floats(sigmoid_backward(as_kind(-x, dtype, kind), as_kind(g, dtype, kind)))
    np.testing.assert_array_equal(d_plus, d_minus)
    assert np.all((d_plus > 0) & (d_plus <= 0.25))


@pytest.mark.parametrize("dtype", ("float16", "float32", "float64"))
@pytest.mark.parametrize("name", FUNCTIONS)
def test_numpy_and_torch_agree(name, dtype):
    fn = FUNCTIONS[name][0]
    x = np.concatenate([family_arrays(f, dtype, rng=5).ravel() for f in FAMILIES]).astype(np.float64)
    y_np, y_torch = fn(as_kind(x, dtype, "numpy")), fn(as_kind(x, dtype, "torch"))
    # each is within the bound of the exact value, so they are within twice the bound of each other
    assert (ulp_error(y_np, y_torch.numpy().astype(np.float64), dtype) <= 2 * ULP_BOUNDS[dtype]).all()


# ---------------------------------------------------------------- torch autograd

@pytest.mark.parametrize("name", FUNCTIONS)
def test_gradcheck_and_gradgradcheck_in_float64(name):
    fn = FUNCTIONS[name][0]
    x = torch.tensor([-30.0, -5.0, -0.7, 0.0, 0.3, 2.0, 12.0, 35.0], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(fn, (x,))
    assert torch.autograd.gradgradcheck(fn, (x,))


def test_second_derivative_of_sigmoid_keeps_its_digits():
    # sigmoid''(x) = sigmoid'(x) (sigmoid(-x) - sigmoid(x)) ~ -exp(-x) for large x; s (1 - s) forms give 0.
    x = torch.tensor([-50.0, -3.0, 0.0, 0.5, 20.0, 50.0], dtype=torch.float64, requires_grad=True)
    (d1,) = torch.autograd.grad(sigmoid(x).sum(), x, create_graph=True)
    (d2,) = torch.autograd.grad(d1.sum(), x)
    with mpmath.workdps(40):
        s, r = ([1 / (1 + mpmath.exp(sign * v)) for v in x.tolist()] for sign in (-1, 1))  # sigmoid(x), sigmoid(-x)
        exact = [a * b * (b - a) for a, b in zip(s, r)]
    assert_ulp_close(d2, np.array(exact, dtype=object), "float64", bound=8)


@pytest.mark.parametrize("name", FUNCTIONS)
def test_torch_results_keep_dtype_device_and_graph(name):
    fn = FUNCTIONS[name][0]
    for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        x = torch.linspace(-3, 3, 7, dtype=dtype, requires_grad=True)
        y = fn(x)
        assert y.dtype == dtype and y.device == x.device and y.shape == x.shape and y.requires_grad
        y.sum().backward()
        assert x.grad.dtype == dtype and torch.isfinite(x.grad).all()


# ---------------------------------------------------------------- NumPy kinds and shapes

@pytest.mark.parametrize("name", FUNCTIONS)
def test_numpy_results_keep_dtype_shape_and_layout(name):
    fn = FUNCTIONS[name][0]
    x = np.linspace(-4, 4, 24).reshape(4, 6)
    for dtype in (np.float16, np.float32, np.float64):
        y = fn(x.astype(dtype))
        assert y.dtype == dtype and y.shape == x.shape
    np.testing.assert_array_equal(fn(x.T), fn(np.ascontiguousarray(x.T)))  # non-contiguous input
    np.testing.assert_array_equal(fn(x[:, ::2]), fn(np.ascontiguousarray(x[:, ::2])))
    scalar = fn(np.float32(0.5))
    assert isinstance(scalar, np.float32) and scalar == fn(np.array([0.5], np.float32))[0]
    assert fn(np.empty((0, 3))).shape == (0, 3)


def test_a_large_array_spans_several_blocks():
    x = np.random.default_rng(0).standard_normal(100_003) * 20
    expected = np.array([float(v) for v in oracle.sigmoid(x[::997])])
    assert (ulp_error(sigmoid(x)[::997], expected, "float64") <= ULP_BOUNDS["float64"]).all()


# ---------------------------------------------------------------- NaN, infinities, bad input

@pytest.mark.parametrize("kind", ("numpy", "torch"))
@pytest.mark.parametrize("name", FUNCTIONS)
def test_nan_propagates_and_infinities_give_the_limits(name, kind):
    fn, exact_fn, backward, exact_grad = FUNCTIONS[name]
    x = np.array([np.nan, -np.inf, np.inf, 1.0])
    y = _floats(fn(as_kind(x, "float32", kind)))
    assert np.isnan(y[0]) and not np.isnan(y[1:]).any()
    assert_ulp_close(y[1:], exact_fn(x[1:]), "float32")
    dx = _floats(backward(as_kind(x, "float32", kind), as_kind(np.ones(4), "float32", kind)))
    assert np.isnan(dx[0])
    assert_ulp_close(dx[1:], exact_grad(x[1:]), "float32")


@pytest.mark.parametrize("name", FUNCTIONS)
def test_bad_input_is_refused_with_the_fix(name):
    fn, _, backward, _ = FUNCTIONS[name]
    with pytest.raises(TypeError, match=r"x must be a floating-point array.*astype\(np.float64\)"):
        fn(np.arange(3))
    with pytest.raises(TypeError, match="x must be a floating-point array"):
        fn(np.array([True, False]))
    with pytest.raises(TypeError, match=r"x must be a NumPy array or a torch tensor.*np.asarray"):
        fn([0.5, 1.0])
    with pytest.raises(TypeError, match=r"x must be a floating-point tensor.*x.float\(\)"):
        fn(torch.arange(3))
    with pytest.raises(ValueError, match=r"grad_output must have the shape of x \(3,\), got \(2,\)"):
        backward(np.zeros(3), np.ones(2))
    with pytest.raises(TypeError, match="x is a NumPy array but grad_output is a torch tensor"):
        backward(np.zeros(3), torch.ones(3))


def test_the_top_level_names_are_these_functions():
    import nnstab

    for name in ('sigmoid', 'log_sigmoid', 'softplus'):
        assert getattr(nnstab, name) is globals()[name]
