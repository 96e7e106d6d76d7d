"""logsumexp, softmax and log_softmax: laws, mpmath references on every hard family, conventions, gradients, bad input."""
import importlib
import math

import mpmath
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import nnstab
from nnstab import oracle
from nnstab.numerics import _exact
from nnstab.testing import ULP_BOUNDS, assert_ulp_close, families, strategies, ulp_error

lse_module = importlib.import_module("nnstab.numerics.softmax_family")

FUNCTIONS = ("logsumexp", "softmax", "log_softmax")
NUMPY_DTYPES = ("float16", "float32", "float64")
FAMILIES = tuple(f for f in families.LOGIT_FAMILIES if f != "long_rows")
EPS = {"float16": 2.0 ** -10, "bfloat16": 2.0 ** -7, "float32": 2.0 ** -23, "float64": 2.0 ** -52}


def evaluations(name, x, dtype, monkeypatch, *args, **kwargs):
    """(label, result) of nnstab.<name> on x as NumPy (where NumPy has the dtype) and as a tensor on both torch paths."""
    fn = getattr(nnstab, name)
    out = [] if dtype == "bfloat16" else [("numpy", fn(x, *args, **kwargs))]
    for numpy_on_cpu in (True, False):
        monkeypatch.setattr(lse_module, "NUMPY_ON_CPU", numpy_on_cpu)
        label = "torch (numpy kernels)" if numpy_on_cpu else "torch (torch ops)"
        out.append((label, fn(families.to_torch(x, dtype), *args, **kwargs)))
    return out


# ---------------------------------------------------------------- against mpmath, family by family

@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("dtype", families.DTYPES)
def test_every_function_is_within_its_ulp_bound_on_each_hard_family(family, dtype, monkeypatch):
    x = families.family_arrays(family, dtype, rng=7, rows=4, cols=16)
    for name in FUNCTIONS:
        exact = getattr(oracle, name)(x)
        for label, y in evaluations(name, x, dtype, monkeypatch):
            assert_ulp_close(y, exact, dtype, name=f"{name} [{label}]", inputs=x)


@pytest.mark.parametrize("dtype, names", [("float64", ("logsumexp", "softmax")), ("float32", ("log_softmax",))])
def test_long_rows_of_100000_entries_stay_within_bound(dtype, names, monkeypatch):
    x = families.family_arrays("long_rows", dtype, rng=3, rows=1)
    for name in names:
        exact = getattr(oracle, name)(x)
        assert_ulp_close(getattr(nnstab, name)(x), exact, dtype, name=name)
        monkeypatch.setattr(lse_module, "NUMPY_ON_CPU", False)
        assert_ulp_close(getattr(nnstab, name)(torch.from_numpy(x)), exact, dtype, name=f"{name} [torch ops]")
        monkeypatch.undo()


@pytest.mark.parametrize("dtype", families.DTYPES)
@settings(max_examples=25)
@given(data=st.data())
def test_random_hard_inputs_are_within_bound(dtype, data):
    x = data.draw(strategies.logits(dtype=dtype, rows=(1, 3), cols=(1, 9)))
    for name in FUNCTIONS:
        y = getattr(nnstab, name)(families.to_torch(x, dtype) if dtype == "bfloat16" else x)
        assert_ulp_close(y, getattr(oracle, name)(x), dtype, name=name, inputs=x)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_logsumexp_of_log_probabilities_keeps_its_tiny_exact_value(dtype, monkeypatch):
    # m + log1p(s) cancels to ~1e-17 here: the rows go to the extended / multiple-precision path
    x = families.family_arrays("random", dtype, rng=11, rows=6, cols=9)
    log_p = nnstab.log_softmax(x)
    exact = oracle.logsumexp(log_p)
    assert all(abs(v) < 1e-5 for v in exact)
    for label, y in evaluations("logsumexp", log_p, dtype, monkeypatch):
        assert_ulp_close(y, exact, dtype, name=f"logsumexp [{label}]", inputs=log_p)


def test_cancelling_rows_are_exact_without_an_extended_long_double(monkeypatch):
    monkeypatch.setattr(_exact, "LONGDOUBLE", None)  # as on platforms where long double is double
    x = np.array([[-0.5, -0.95], [-0.3, -1.5]])
    log_p = nnstab.log_softmax(np.vstack([x, families.family_arrays("random", "float64", rng=5, rows=2, cols=2)]))
    assert_ulp_close(nnstab.logsumexp(log_p), oracle.logsumexp(log_p), "float64")
    assert_ulp_close(nnstab.logsumexp(x), oracle.logsumexp(x), "float64")


# ---------------------------------------------------------------- laws

grid = st.lists(st.integers(-400, 400), min_size=1, max_size=12).map(lambda v: np.array(v, dtype=np.float64) / 8)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@given(x=grid, c=st.integers(-100_000, 100_000))
def test_softmax_and_log_softmax_are_unchanged_by_a_common_shift(dtype, x, c):
    x = x.astype(dtype)
    shifted = (x + dtype_type(dtype)(c))  # exact: eighths below 2**17
    bound = 2 * ULP_BOUNDS[dtype]  # each side within the bound of one exact value
    assert_ulp_close(nnstab.softmax(shifted), nnstab.softmax(x).astype(np.float64), dtype, bound=bound)
    assert_ulp_close(nnstab.log_softmax(shifted), nnstab.log_softmax(x).astype(np.float64), dtype, bound=bound)


def dtype_type(dtype):
    return np.dtype(dtype).type


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@given(x=grid, c=st.integers(-100_000, 100_000))
def test_logsumexp_moves_with_a_common_shift(dtype, x, c):
    x = x.astype(dtype)
    exact = oracle.logsumexp(x) + c
    assert_ulp_close(nnstab.logsumexp(x + dtype_type(dtype)(c)), exact, dtype)


@pytest.mark.parametrize("dtype", NUMPY_DTYPES)
@settings(max_examples=40)
@given(data=st.data())
def test_softmax_rows_sum_to_one(dtype, data):
    x = data.draw(strategies.logits(dtype=dtype, family=("random", "dominant", "wide_spread", "offset", "masked", "ties")))
    total = nnstab.softmax(x).astype(np.float64).sum(axis=-1)
    tolerance = ULP_BOUNDS[dtype] * EPS[dtype] + x.shape[-1] * families.limits(dtype)["subnormal"]
    assert np.all(np.abs(total - 1) <= tolerance)


@settings(max_examples=40)
@given(x=strategies.logits(dtype="float64", family=("random", "dominant", "wide_spread", "offset", "ties")))
def test_log_softmax_is_log_of_softmax_where_softmax_is_a_normal_float(x):
    y, log_y = nnstab.softmax(x), nnstab.log_softmax(x)
    normal = y >= np.finfo(np.float64).tiny
    tolerance = 2 * ULP_BOUNDS["float64"] * EPS["float64"] * (1 + np.abs(log_y))
    assert np.all(np.abs(np.log(y[normal]) - log_y[normal]) <= tolerance[normal])


@pytest.mark.parametrize("dtype", NUMPY_DTYPES)
@settings(max_examples=40)
@given(data=st.data())
def test_softmax_and_log_softmax_keep_the_order_of_the_logits(dtype, data):
    x = data.draw(strategies.logits(dtype=dtype, family=("random", "dominant", "ties", "masked", "tiny")))
    order = np.argsort(x, axis=-1, kind="stable")
    for y in (nnstab.softmax(x), nnstab.log_softmax(x)):
        ranked = np.take_along_axis(y, order, axis=-1)
        assert np.all(ranked[:, :-1] <= ranked[:, 1:])


@pytest.mark.parametrize("dtype", NUMPY_DTYPES)
@settings(max_examples=40)
@given(data=st.data())
def test_logsumexp_lies_between_the_max_and_the_max_plus_log_n(dtype, data):
    x = data.draw(strategies.logits(dtype=dtype, family=("random", "dominant", "wide_spread", "ties", "tiny", "masked")))
    r = nnstab.logsumexp(x).astype(np.float64)
    m = x.max(axis=-1).astype(np.float64)
    assert np.all(r >= m)
    assert np.all(r <= m + math.log(x.shape[-1]) + ULP_BOUNDS[dtype] * EPS[dtype] * (np.abs(m) + math.log(x.shape[-1]) + 1))


@given(x=strategies.logits(dtype="float64", family=("random", "dominant", "masked")), bump=st.floats(0, 50))
def test_raising_one_logit_never_lowers_logsumexp(x, bump):
    raised = x.copy()
    raised[:, 0] += bump
    assert np.all(nnstab.logsumexp(raised) >= nnstab.logsumexp(x))


# ---------------------------------------------------------------- conventions

@pytest.mark.parametrize("kind", ["numpy", "torch ops", "torch numpy kernels"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_limit_rows_follow_the_documented_conventions(kind, dtype, monkeypatch):
    inf, nan = np.inf, np.nan
    x = np.array([[-inf, -inf, -inf], [inf, 1.0, inf], [inf, -inf, 2.0], [1.0, nan, 2.0], [0.0, -inf, 1.0]], dtype)
    if kind != "numpy":
        monkeypatch.setattr(lse_module, "NUMPY_ON_CPU", kind == "torch numpy kernels")
        x = torch.from_numpy(x)
    lse, sm, lsm = (np.asarray(getattr(nnstab, f)(x), dtype=np.float64) for f in FUNCTIONS)
    assert lse[:3].tolist() == [-inf, inf, inf] and np.isnan(lse[3])
    assert sm[0].tolist() == [0.0, 0.0, 0.0]  # all masked: no mass at all
    assert sm[1].tolist() == [0.5, 0.0, 0.5] and sm[2].tolist() == [1.0, 0.0, 0.0]
    assert lsm[0].tolist() == [-inf] * 3
    assert lsm[1].tolist() == [-math.log(2), -inf, -math.log(2)] or np.allclose(lsm[1][[0, 2]], -math.log(2))
    assert lsm[2].tolist() == [0.0, -inf, -inf]
    assert np.isnan(sm[3]).all() and np.isnan(lsm[3]).all()  # NaN poisons its own row only
    assert sm[4][1] == 0.0 and lsm[4][1] == -inf  # a masked entry gets exactly no probability
    assert np.isfinite(lse[4]) and np.isfinite(sm[4]).all()


def test_an_empty_axis_gives_minus_inf_and_empty_results():
    x = np.zeros((3, 0))
    assert nnstab.logsumexp(x).tolist() == [-np.inf] * 3
    assert nnstab.softmax(x).shape == (3, 0) and nnstab.log_softmax(x).shape == (3, 0)


@pytest.mark.parametrize("numpy_on_cpu", [True, False])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_an_empty_axis_on_tensors_gives_the_same_conventions(dtype, numpy_on_cpu, monkeypatch):
    monkeypatch.setattr(lse_module, "NUMPY_ON_CPU", numpy_on_cpu)  # False: the torch ops every CUDA tensor takes
    x = torch.zeros((3, 0), dtype=getattr(torch, dtype), requires_grad=True)
    assert nnstab.logsumexp(x).tolist() == [-np.inf] * 3
    assert nnstab.logsumexp(x, axis=0, keepdims=True).shape == (1, 0)
    for name in ("softmax", "log_softmax"):
        y = getattr(nnstab, name)(x)
        assert y.shape == (3, 0) and y.dtype == x.dtype
        y.sum().backward()
    assert x.grad.shape == (3, 0)


@pytest.mark.parametrize("kind", ["numpy", "torch ops", "torch numpy kernels"])
@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
def test_a_nan_poisons_its_row_even_as_the_rows_only_entry(kind, dtype, monkeypatch):
    """The NaN is the row's max; its own term, set aside for the sum, must not come back as exp(0) = 1."""
    x = np.array([[np.nan], [0.0]], dtype)
    if kind != "numpy":
        monkeypatch.setattr(lse_module, "NUMPY_ON_CPU", kind == "torch numpy kernels")
        x = torch.from_numpy(x)
    for name in FUNCTIONS:
        y = np.asarray(getattr(nnstab, name)(x), dtype=np.float64).reshape(-1)
        assert np.isnan(y[0]) and y[1] == (0.0 if name != "softmax" else 1.0), (name, y)


def test_subnormal_probabilities_are_not_flushed_to_zero():
    x = np.array([0.0, -740.0])  # exp(-740) ~ 4e-322: a subnormal float64
    y = nnstab.softmax(x)
    assert y[1] > 0
    assert_ulp_close(y, oracle.softmax(x), "float64")


# ---------------------------------------------------------------- shapes, kinds, dtypes

@pytest.mark.parametrize("name", FUNCTIONS)
@pytest.mark.parametrize("axis", [0, 1, -1])
def test_any_axis_gives_the_result_of_moving_it_last(name, axis):
    x = families.family_arrays("random", "float64", rng=2, rows=12, cols=10).reshape(3, 4, 10)
    got = getattr(nnstab, name)(x, axis=axis)
    moved = getattr(nnstab, name)(np.moveaxis(x, axis, -1))
    expected = moved if name == "logsumexp" else np.moveaxis(moved, -1, axis)
    np.testing.assert_array_equal(got, expected)
    tensor = getattr(nnstab, name)(torch.from_numpy(x), axis=axis)
    np.testing.assert_array_equal(tensor.numpy(), expected)


def test_keepdims_and_scalar_results_follow_numpy():
    x = np.array([1.0, 2.0, 3.0], np.float32)
    r = nnstab.logsumexp(x)
    assert isinstance(r, np.float32)
    assert nnstab.logsumexp(x, keepdims=True).shape == (1,)
    assert nnstab.logsumexp(torch.from_numpy(x)).shape == ()
    assert nnstab.logsumexp(torch.from_numpy(x), keepdims=True).shape == (1,)


@pytest.mark.parametrize("name", FUNCTIONS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_tensors_keep_their_dtype_and_stay_differentiable(name, dtype):
    x = torch.randn(3, 5, dtype=dtype, requires_grad=True)
    y = getattr(nnstab, name)(x)
    assert y.dtype == dtype and y.requires_grad
    y.float().sum().backward()
    assert x.grad is not None and x.grad.dtype == dtype


@pytest.mark.parametrize("name", FUNCTIONS)
def test_non_contiguous_input_gives_the_same_values(name):
    x = families.family_arrays("random", "float64", rng=4, rows=6, cols=8)
    view = np.asfortranarray(x)[:, ::2]
    np.testing.assert_array_equal(getattr(nnstab, name)(view), getattr(nnstab, name)(x[:, ::2].copy()))


# ---------------------------------------------------------------- gradients

@pytest.mark.parametrize("numpy_on_cpu", [True, False])
@pytest.mark.parametrize("name", FUNCTIONS)
def test_gradcheck_and_double_backward_in_float64(name, numpy_on_cpu, monkeypatch):
    monkeypatch.setattr(lse_module, "NUMPY_ON_CPU", numpy_on_cpu)
    x = torch.from_numpy(families.family_arrays("random", "float64", rng=9, rows=3, cols=5)).requires_grad_()
    fn = getattr(nnstab, name)
    assert torch.autograd.gradcheck(fn, (x,))
    assert torch.autograd.gradgradcheck(fn, (x,))


@pytest.mark.parametrize("family", ["random", "dominant", "wide_spread", "masked", "offset"])
@pytest.mark.parametrize("dtype", families.DTYPES)
def test_logsumexp_gradient_is_softmax_to_the_ulp(family, dtype):
    x = families.family_arrays(family, dtype, rng=6, rows=3, cols=7)
    g = families.round_to(np.random.default_rng(1).standard_normal(3), dtype)
    exact = oracle.grad_logsumexp(x, grad_output=g)
    xt = families.to_torch(x, dtype).requires_grad_()
    nnstab.logsumexp(xt).backward(families.to_torch(g, dtype))
    assert_ulp_close(xt.grad, exact, dtype, name="autograd")
    if dtype != "bfloat16":
        assert_ulp_close(lse_module.logsumexp_backward(x, g), exact, dtype, name="logsumexp_backward")


def backward_error_bound(y, g, exact_y, dtype, log_space):
    """What a gradient from the rounded forward output can reach: a few ULP of its non-cancelling parts."""
    eps = EPS[dtype]
    p = np.exp(exact_y) if log_space else exact_y
    total = np.abs(g).sum(-1, keepdims=True) if log_space else np.abs(g * p).sum(-1, keepdims=True)
    with np.errstate(invalid="ignore"):  # masked entries: p = 0 and |y| = inf add nothing
        spread = np.where(p > 0, p * total * (1 + np.abs(exact_y)), 0.0)
    scale = np.abs(g) + spread if log_space else p * (np.abs(g) + total)
    return 4 * ULP_BOUNDS[dtype] * eps * scale + 8 * families.limits(dtype)["subnormal"]


@pytest.mark.parametrize("family", ["random", "dominant", "wide_spread", "masked", "ties"])
@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
def test_softmax_gradients_are_within_the_backward_error_of_their_output(name, family, dtype):
    x = families.family_arrays(family, dtype, rng=8, rows=3, cols=7)
    g = families.round_to(np.random.default_rng(2).standard_normal(x.shape), dtype)
    exact = np.array(getattr(oracle, f"grad_{name}")(x, grad_output=g), dtype=object)
    exact_y = np.array([[float(v) for v in row] for row in getattr(oracle, name)(x)])
    bound = backward_error_bound(None, g.astype(np.float64), exact_y, dtype, log_space=name == "log_softmax")
    y = getattr(nnstab, name)(x)
    for label, dx in [("numpy", getattr(lse_module, f"{name}_backward")(y, g)),
                      ("torch", getattr(lse_module, f"{name}_backward")(torch.from_numpy(y), torch.from_numpy(g)).numpy())]:
        err = np.abs(dx.astype(np.float64) - exact.astype(np.float64))
        err[dx.astype(np.float64) == exact.astype(np.float64)] = 0  # equal infinities
        assert np.all(err <= bound), f"{name} backward [{label}] off by {np.max(err - bound):.3g} beyond the bound"


def test_autograd_gradients_are_the_gradient_functions_values():
    x = torch.from_numpy(families.family_arrays("dominant", "float32", rng=1, rows=3, cols=6)).requires_grad_()
    g = torch.randn(3, 6)
    for name in ("softmax", "log_softmax"):
        y = getattr(nnstab, name)(x)
        (dx,) = torch.autograd.grad(y, x, g)
        expected = getattr(lse_module, f"{name}_backward")(y.detach(), g)
        assert torch.equal(dx, expected)


def test_a_dominant_logit_keeps_its_log_likelihood_gradient():
    # d(-log_softmax_top)/dx_top = p_top - 1 = -sum of the others ~ -exp(-40): not 0
    x = torch.tensor([[40.0, 0.0, 0.0]], dtype=torch.float64, requires_grad=True)
    (-nnstab.log_softmax(x)[0, 0]).backward()
    exact = -2 * math.exp(-40) / (1 + 2 * math.exp(-40))
    assert abs(x.grad[0, 0].item() - exact) <= 4 * 2.0 ** -52 * abs(exact)


# ---------------------------------------------------------------- bad input

@pytest.mark.parametrize("name", FUNCTIONS)
def test_bad_input_gets_a_message_naming_the_argument_and_the_fix(name):
    fn = getattr(nnstab, name)
    with pytest.raises(TypeError, match=r"x must be a floating-point array.*astype"):
        fn(np.arange(3))
    with pytest.raises(TypeError, match=r"x must be a floating-point array"):
        fn(np.array([True, False]))
    with pytest.raises(TypeError, match=r"x must be a floating-point tensor.*float\(\)"):
        fn(torch.arange(3))
    with pytest.raises(TypeError, match=r"x must be a NumPy array or a torch tensor.*np.asarray"):
        fn([1.0, 2.0])
    with pytest.raises(ValueError, match=r"axis=2 is out of range"):
        fn(np.zeros((2, 2)), axis=2)
    with pytest.raises(TypeError, match=r"axis must be an int"):
        fn(np.zeros((2, 2)), axis=1.0)
    with pytest.raises(ValueError, match=r"at least 1 dimension"):
        fn(np.float64(1.0))


def test_backward_functions_check_their_arguments():
    with pytest.raises(ValueError, match=r"grad_output must have logsumexp's result shape \(2,\)"):
        lse_module.logsumexp_backward(np.zeros((2, 3)), np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"grad_output must have the shape of y"):
        lse_module.softmax_backward(np.zeros((2, 3)), np.zeros((3, 2)))
    with pytest.raises(TypeError, match=r"y is a NumPy array but grad_output is a torch tensor"):
        lse_module.log_softmax_backward(np.zeros(3), torch.zeros(3))
    with pytest.raises(TypeError, match=r"keepdims must be a bool"):
        nnstab.logsumexp(np.zeros(3), keepdims=1)
