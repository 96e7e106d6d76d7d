"""Tests for nnstab.numerics.elementwise: binary cross-entropy (probabilities, logits) and MSE, with gradients."""
import math

import mpmath
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nnstab import oracle
from nnstab.numerics.elementwise import (
    binary_cross_entropy,
    binary_cross_entropy_backward,
    binary_cross_entropy_with_logits,
    binary_cross_entropy_with_logits_backward,
    mse,
    mse_backward,
)
from nnstab.numerics.sigmoid_family import softplus
from nnstab.testing import ULP_BOUNDS, assert_ulp_close, ulp_error
from nnstab.testing.families import bce_arrays, binary_targets, family_arrays, round_to, to_torch
from nnstab.testing.strategies import logits, probabilities

DTYPES = ("float16", "bfloat16", "float32", "float64")
REDUCTIONS = ("none", "mean", "sum")
LOGIT_FAMILIES = ("huge", "tiny", "subnormal", "exp_edges", "wide_spread", "masked", "random")


def _uniform(dtype, seed, shape=(8, 16)):
    return round_to(np.random.default_rng(seed).uniform(size=shape), dtype)


def _soft_targets(dtype, seed, shape=(8, 16)):
    return family_arrays("soft_labels_with_zeros", dtype, seed, rows=shape[0], cols=shape[1])


def _targets_near_sigmoid(x, dtype):
    """Soft targets equal to sigmoid(x) rounded to dtype (distillation): d loss / dx cancels to a rounding error."""
    with np.errstate(over="ignore"):
        return round_to(1 / (1 + np.exp(-np.asarray(x, np.float64))), dtype)


def bce_inputs(family, dtype, seed):
    if family == "edges":  # probabilities exactly 0 and 1, subnormal, an ulp from 0 and 1
        return bce_arrays(dtype, seed, (8, 16))
    if family == "soft_labels_with_zeros":
        return _uniform(dtype, seed), _soft_targets(dtype, seed + 1)
    p = _uniform(dtype, seed)
    if family == "close":  # target within a few ulp of the probability
        return p, round_to(p * (1 + np.random.default_rng(seed).integers(-3, 4, p.shape) * 2.0**-10), dtype)
    return p, _uniform(dtype, seed + 1)


def bce_logits_inputs(family, dtype, seed):
    if family == "soft_labels_with_zeros":
        return family_arrays("random", dtype, seed, rows=8), _soft_targets(dtype, seed + 1)
    if family == "targets_near_sigmoid":
        x = family_arrays("random", dtype, seed, rows=8)
        return x, _targets_near_sigmoid(x, dtype)
    x = family_arrays(family, dtype, seed, rows=8)
    return x, binary_targets(dtype, seed + 1, x.shape)


def mse_inputs(family, dtype, seed):
    if family == "close":  # pred and target a few ulp apart: the difference must keep its digits
        p = family_arrays("random", dtype, seed, rows=8)
        return p, round_to(p * (1 + np.random.default_rng(seed).integers(-3, 4, p.shape) * 2.0**-8), dtype)
    return family_arrays(family, dtype, seed, rows=8), family_arrays(family, dtype, seed + 1, rows=8)


LOSSES = {  # name: (loss, exact loss, gradient, exact gradient, inputs, families)
    "bce": (binary_cross_entropy, oracle.binary_cross_entropy, binary_cross_entropy_backward,
            oracle.grad_binary_cross_entropy, bce_inputs, ("edges", "soft_labels_with_zeros", "close", "random")),
    "bce_logits": (binary_cross_entropy_with_logits, oracle.binary_cross_entropy_with_logits,
                   binary_cross_entropy_with_logits_backward, oracle.grad_binary_cross_entropy_with_logits,
                   bce_logits_inputs, LOGIT_FAMILIES + ("soft_labels_with_zeros", "targets_near_sigmoid")),
    "mse": (mse, oracle.mse, mse_backward, oracle.grad_mse, mse_inputs, LOGIT_FAMILIES + ("close",)),
}
CASES = [(name, dtype, family) for name, spec in LOSSES.items() for dtype in DTYPES for family in spec[5]]


def as_kind(values, dtype, kind):
    if kind == "torch":
        return to_torch(values, dtype)
    return np.asarray(values, dtype=np.float64).astype(dtype)


def kinds(dtype):
    return ("torch",) if dtype == "bfloat16" else ("numpy", "torch")


def grad_output_for(reduction, shape, dtype):
    if reduction != "none":
        return np.float64(0.75)
    g = np.random.default_rng(1).uniform(0.5, 2.0, size=shape)
    return round_to(g, dtype).astype(np.float64)


# ---------------------------------------------------------------- against the exact values

@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("name,dtype,family", CASES)
def test_loss_is_within_the_ulp_bound_of_the_exact_value(name, dtype, family, reduction):
    loss, exact_loss, _, _, inputs, _ = LOSSES[name]
    a, b = (v.astype(np.float64) for v in inputs(family, dtype, seed=3))
    exact = exact_loss(a, b, reduction=reduction)
    for kind in kinds(dtype):
        value = loss(as_kind(a, dtype, kind), as_kind(b, dtype, kind), reduction=reduction)
        assert_ulp_close(value, exact, dtype, inputs=(a, b) if reduction == "none" else None,
                         name=f"{name} ({kind}, {family}, {reduction})")


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("name,dtype,family", CASES)
def test_gradient_is_within_the_ulp_bound_of_the_exact_one(name, dtype, family, reduction):
    loss, _, backward, exact_grad, inputs, _ = LOSSES[name]
    a, b = (v.astype(np.float64) for v in inputs(family, dtype, seed=5))
    g = grad_output_for(reduction, a.shape, dtype)
    exact = exact_grad(a, b, reduction=reduction, grad_output=g)
    for kind in kinds(dtype):
        gk = as_kind(g, dtype, kind) if reduction == "none" else float(g)
        da = backward(as_kind(a, dtype, kind), as_kind(b, dtype, kind), gk, reduction=reduction)
        assert_ulp_close(da, exact, dtype, inputs=(a, b), name=f"{name}_backward ({kind}, {family}, {reduction})")
    at = to_torch(a, dtype).requires_grad_(True)
    out = loss(at, to_torch(b, dtype), reduction=reduction)
    out.backward(to_torch(g, dtype) if reduction == "none" else torch.tensor(float(g), dtype=out.dtype))
    assert_ulp_close(at.grad, exact, dtype, inputs=(a, b), name=f"torch autograd of {name} ({family}, {reduction})")


def test_the_float64_mean_survives_a_sum_beyond_the_range():
    big = np.array([1.4e154, 0.0, 1e154, 1.2e154])  # squares near or beyond 1.8e308, their mean below it
    x, t = np.array([1.7e308, 1e308, -1.5e308]), np.array([0.0, 0.25, 1.0])
    for kind in ("numpy", "torch"):
        assert_ulp_close(mse(as_kind(big, "float64", kind), as_kind(0 * big, "float64", kind)),
                         oracle.mse(big, 0 * big), "float64")
        assert_ulp_close(binary_cross_entropy_with_logits(as_kind(x, "float64", kind), as_kind(t, "float64", kind)),
                         oracle.binary_cross_entropy_with_logits(x, t), "float64")


def test_probabilities_at_0_and_1_give_the_exact_limits():
    p = np.array([0.0, 0.0, 0.0, 1.0, 1.0, 1.0])
    t = np.array([0.0, 1.0, 0.5, 1.0, 0.0, 0.5])
    for kind in ("numpy", "torch"):
        loss = binary_cross_entropy(as_kind(p, "float64", kind), as_kind(t, "float64", kind), reduction="none")
        np.testing.assert_array_equal(np.asarray(loss), [0.0, np.inf, np.inf, 0.0, np.inf, np.inf])
        grad = binary_cross_entropy_backward(as_kind(p, "float64", kind), as_kind(t, "float64", kind),
                                             as_kind(np.ones(6), "float64", kind), reduction="none")
        np.testing.assert_array_equal(np.asarray(grad), [1.0, -np.inf, -np.inf, -1.0, np.inf, np.inf])


def test_infinite_logits_give_the_exact_limits():
    x = np.array([-np.inf, -np.inf, np.inf, np.inf, np.inf])
    t = np.array([0.0, 1.0, 0.0, 1.0, 0.5])
    exact = oracle.binary_cross_entropy_with_logits(x, t, reduction="none")
    for kind in ("numpy", "torch"):
        loss = binary_cross_entropy_with_logits(as_kind(x, "float32", kind), as_kind(t, "float32", kind), "none")
        assert_ulp_close(loss, exact, "float32")


# ---------------------------------------------------------------- laws

KIND_DTYPES = [(k, d) for d in DTYPES for k in kinds(d)]
law_settings = settings(max_examples=20, suppress_health_check=list(HealthCheck))


def _floats(y):
    return y.detach().to(torch.float64).numpy() if isinstance(y, torch.Tensor) else np.asarray(y, np.float64)


@pytest.mark.parametrize("kind,dtype", KIND_DTYPES)
@law_settings
@given(data=st.data())
def test_every_loss_is_non_negative(kind, dtype, data):
    p = data.draw(probabilities(dtype=dtype))
    t = data.draw(probabilities(dtype=dtype, shape=p.shape))
    x = data.draw(logits(dtype=dtype, family=LOGIT_FAMILIES[:-2] + ("random",), rows=(1, 3)))
    y = data.draw(logits(dtype=dtype, rows=(x.shape[0],) * 2, cols=(x.shape[1],) * 2, family="random"))
    tx = binary_targets(dtype, 0, x.shape)
    for value in (binary_cross_entropy(as_kind(p, dtype, kind), as_kind(t, dtype, kind), "none"),
                  binary_cross_entropy_with_logits(as_kind(x, dtype, kind), as_kind(tx, dtype, kind), "none"),
                  mse(as_kind(x, dtype, kind), as_kind(y, dtype, kind), "none")):
        v = _floats(value)
        assert np.all(v[~np.isnan(v)] >= 0)


@pytest.mark.parametrize("kind,dtype", KIND_DTYPES)
@law_settings
@given(data=st.data())
def test_bce_with_logits_at_hard_labels_is_softplus(kind, dtype, data):
    x = as_kind(data.draw(logits(dtype=dtype, family=LOGIT_FAMILIES)), dtype, kind)
    zeros, ones = (as_kind(np.full(tuple(x.shape), v), dtype, kind) for v in (0.0, 1.0))
    bound = ULP_BOUNDS[dtype]
    # -log(1 - sigmoid(x)) = softplus(x) and -log(sigmoid(x)) = softplus(-x)
    for target, arg in ((zeros, x), (ones, -x)):
        assert (ulp_error(binary_cross_entropy_with_logits(x, target, "none"), _floats(softplus(arg)), dtype)
                <= 2 * bound).all()


@pytest.mark.parametrize("kind,dtype", KIND_DTYPES)
@law_settings
@given(data=st.data())
def test_bce_is_stationary_where_the_probability_equals_the_target(kind, dtype, data):
    p = data.draw(probabilities(dtype=dtype, edges=False))
    p[(p == 0) | (p == 1)] = 0.5  # at p = t = 0 or 1 the loss is -log(1 - p) or -log(p): slope 1 or -1
    grad = binary_cross_entropy_backward(as_kind(p, dtype, kind), as_kind(p, dtype, kind),
                                         as_kind(np.ones(p.shape), dtype, kind), "none")
    assert np.all(_floats(grad) == 0)


@pytest.mark.parametrize("kind,dtype", KIND_DTYPES)
@law_settings
@given(data=st.data())
def test_mse_is_symmetric_and_zero_on_the_diagonal(kind, dtype, data):
    a = data.draw(logits(dtype=dtype, family=LOGIT_FAMILIES[:-2] + ("random",)))
    b = np.roll(a, 1, axis=-1)
    ak, bk = as_kind(a, dtype, kind), as_kind(b, dtype, kind)
    np.testing.assert_array_equal(_floats(mse(ak, bk, "none")), _floats(mse(bk, ak, "none")))
    assert _floats(mse(ak, ak, "sum")) == 0


@pytest.mark.parametrize("kind,dtype", KIND_DTYPES)
@pytest.mark.parametrize("name", LOSSES)
def test_reductions_agree_with_the_elementwise_losses(name, dtype, kind):
    loss, _, _, _, inputs, families = LOSSES[name]
    a, b = (as_kind(v, dtype, kind) for v in inputs("random", dtype, seed=9))
    values = _floats(loss(a, b, "none"))
    n = values.size
    with mpmath.workdps(60):
        exact_sum = mpmath.fsum(mpmath.mpf(v) for v in values.ravel().tolist())
        # each value is within the bound of its exact loss: the sum of the rounded values is close to the exact sum
        slack = ULP_BOUNDS[dtype] * math.ldexp(n * float(np.abs(values).max()), -_mantissa_bits(dtype))
        assert abs(_floats(loss(a, b, "sum")) - exact_sum) <= slack
        assert abs(_floats(loss(a, b, "mean")) - exact_sum / n) <= slack / n


def _mantissa_bits(dtype):
    return {"float16": 10, "bfloat16": 7, "float32": 23, "float64": 52}[dtype]


@pytest.mark.parametrize("dtype", ("float16", "float32", "float64"))
@pytest.mark.parametrize("name", LOSSES)
def test_numpy_and_torch_agree(name, dtype):
    loss, _, backward, _, inputs, families = LOSSES[name]
    a, b = inputs(families[0], dtype, seed=4)
    for reduction in REDUCTIONS:
        y_np = loss(as_kind(a, dtype, "numpy"), as_kind(b, dtype, "numpy"), reduction)
        y_torch = loss(as_kind(a, dtype, "torch"), as_kind(b, dtype, "torch"), reduction)
        assert (ulp_error(y_np, _floats(y_torch), dtype) <= 2 * ULP_BOUNDS[dtype]).all()


# ---------------------------------------------------------------- torch autograd

def _autograd_inputs(name):
    rng = np.random.default_rng(2)
    a = rng.uniform(0.05, 0.95, (3, 4)) if name == "bce" else rng.standard_normal((3, 4)) * 4
    soft = rng.uniform(0.05, 0.95, (3, 4))  # inside [0, 1] also after gradcheck's perturbation
    hard = rng.integers(0, 2, (3, 4)).astype(float)
    return (torch.tensor(v, requires_grad=True) for v in (a, soft, hard))


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("name", LOSSES)
def test_gradcheck_and_gradgradcheck_in_float64(name, reduction):
    loss = LOSSES[name][0]
    a, soft, hard = _autograd_inputs(name)

    def fn(u, v):
        return loss(u, v, reduction=reduction)

    assert torch.autograd.gradcheck(fn, (a, soft))  # gradients w.r.t. the input and the target
    assert torch.autograd.gradgradcheck(fn, (a, soft))
    hard.requires_grad_(False)
    assert torch.autograd.gradcheck(lambda u: fn(u, hard), (a,))
    assert torch.autograd.gradgradcheck(lambda u: fn(u, hard), (a,))


@pytest.mark.parametrize("name", LOSSES)
def test_torch_results_keep_dtype_and_shape(name):
    loss, _, _, _, inputs, _ = LOSSES[name]
    for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        a, b = (to_torch(v, dtype) for v in inputs("random", "float16", seed=1))
        a.requires_grad_(True)
        assert loss(a, b, "none").shape == a.shape and loss(a, b, "none").dtype == dtype
        value = loss(a, b)
        assert value.shape == () and value.dtype == dtype
        value.backward()
        assert a.grad.dtype == dtype and torch.isfinite(a.grad).all()


@pytest.mark.parametrize("name", LOSSES)
def test_numpy_results_keep_dtype_and_shape(name):
    loss, _, backward, _, inputs, _ = LOSSES[name]
    a, b = inputs("random", "float16", seed=1)
    for dtype in (np.float16, np.float32, np.float64):
        value = loss(a.astype(dtype), b.astype(np.float32))
        assert isinstance(value, dtype)
        assert loss(a.astype(dtype), b.astype(dtype), "none").dtype == dtype
        assert backward(a.astype(dtype), b.astype(dtype), 1.0).dtype == dtype
    assert np.isnan(loss(np.empty(0), np.empty(0)))
    assert loss(np.empty(0), np.empty(0), "sum") == 0


# ---------------------------------------------------------------- NaN and bad input

@pytest.mark.parametrize("kind", ("numpy", "torch"))
@pytest.mark.parametrize("name", LOSSES)
def test_nan_propagates(name, kind):
    loss, _, backward, _, _, _ = LOSSES[name]
    a = np.array([np.nan, 0.25, 0.5, 0.75])
    b = np.array([0.5, np.nan, 0.0, 1.0])
    ak, bk = as_kind(a, "float32", kind), as_kind(b, "float32", kind)
    values = _floats(loss(ak, bk, "none"))
    assert np.isnan(values[:2]).all() and np.isfinite(values[2:]).all()
    assert np.isnan(_floats(loss(ak, bk)))
    grad = _floats(backward(ak, bk, as_kind(np.ones(4), "float32", kind), "none"))
    assert np.isnan(grad[:2]).all() and np.isfinite(grad[2:]).all()


@pytest.mark.parametrize("name", LOSSES)
def test_bad_input_is_refused_with_the_fix(name):
    loss, _, backward, _, _, _ = LOSSES[name]
    first = {"bce": "probs", "bce_logits": "logits", "mse": "pred"}[name]
    x = np.full(3, 0.5)
    with pytest.raises(TypeError, match=rf"{first} must be a floating-point array.*astype"):
        loss(np.arange(3), x)
    with pytest.raises(TypeError, match="target must be a floating-point array"):
        loss(x, np.array([True, False, True]))
    with pytest.raises(TypeError, match=rf"{first} must be a NumPy array or a torch tensor"):
        loss([0.5, 0.5, 0.5], x)
    with pytest.raises(ValueError, match=rf"target must have the shape of {first} \(3,\), got \(2,\)"):
        loss(x, np.full(2, 0.5))
    with pytest.raises(ValueError, match=r"reduction must be one of 'none', 'mean', 'sum', got 'batchmean'"):
        loss(x, x, reduction="batchmean")
    with pytest.raises(TypeError, match=f"{first} is a NumPy array but target is a torch tensor"):
        loss(x, torch.full((3,), 0.5))
    with pytest.raises(ValueError, match=r"grad_output must be a scalar for reduction='mean'.*reduction='none'"):
        backward(x, x, np.ones(3), "mean")
    with pytest.raises(ValueError, match=r"grad_output must have the shape"):
        backward(x, x, np.ones(2), "none")


def test_probabilities_outside_the_unit_interval_are_refused():
    ok = np.array([0.0, 0.5, 1.0])
    with pytest.raises(ValueError, match=r"probs must hold probabilities in \[0, 1\], got values in \[0, 1.5\]; "
                                         r"pass logits to binary_cross_entropy_with_logits"):
        binary_cross_entropy(np.array([0.0, 1.5, np.nan]), ok)
    with pytest.raises(ValueError, match=r"target must hold probabilities in \[0, 1\], got values in \[-1, 1\]; "
                                         r"use labels 0/1 .*\(target \+ 1\) / 2"):
        binary_cross_entropy_with_logits(ok, np.array([-1.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match=r"target must hold probabilities in \[0, 1\]"):
        binary_cross_entropy(torch.tensor(ok), torch.tensor([0.0, 2.0, 1.0], dtype=torch.float64))
    with pytest.raises(ValueError, match=r"probs must hold probabilities"):
        binary_cross_entropy_backward(np.array([-0.1, 0.5, 0.5]), ok, np.ones(3), "none")


def test_the_top_level_names_are_these_functions():
    import nnstab

    for name in ('binary_cross_entropy', 'binary_cross_entropy_with_logits', 'mse'):
        assert getattr(nnstab, name) is globals()[name]
