"""The fused (numba) kernels and the fast paths they serve, against mpmath: rows long enough for several
blocks, the rows a fast path hands to its exact path, and the torch-op path that CUDA tensors take."""
import importlib

import numpy as np
import pytest
import torch

import nnstab
from nnstab import oracle
from nnstab.numerics import _fused, elementwise, kl
from nnstab.testing import assert_ulp_close, families

lse_module = importlib.import_module("nnstab.numerics.softmax_family")
sigmoid_module = importlib.import_module("nnstab.numerics.sigmoid_family")


def distributions(rows, cols, seed, dtype, concentration=1.0):
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.full(cols, concentration), rows)
    q = rng.dirichlet(np.full(cols, concentration), rows)
    return families.round_to(p, dtype), families.round_to(q, dtype)


# ---------------------------------------------------------------- KL divergence

@pytest.mark.parametrize("dtype, cols", [("float16", 2000), ("float32", 25000)])
def test_narrow_kl_keeps_plain_rows_and_redoes_the_cancelling_ones(dtype, cols, monkeypatch):
    # row 0 random (the plain float64 sum is kept); row 1 puts mass 1/2 +- h on two entries of p and
    # swaps them in q: its two terms +-(1/2) log((1/2 + h)/(1/2 - h)) cancel to 8 h**2, below the
    # float64 rounding of the plain terms in float32 (the exact path); row 2 with p = q (exactly 0).
    # float32 rows are long enough for two blocks.
    p, q = distributions(3, cols, seed=1, dtype=dtype)
    h = 2.0 ** -20 if dtype == "float32" else 2.0 ** -9
    p[1], q[1] = 0, 0
    p[1, :2], q[1, :2] = (0.5 + h, 0.5 - h), (0.5 - h, 0.5 + h)
    q[2] = p[2]
    redone = []
    exact_path = kl._kl_row_sums_blocked
    monkeypatch.setattr(kl, "_kl_row_sums_blocked", lambda a, b, *args: redone.append(a.shape[0]) or exact_path(a, b, *args))
    got = nnstab.kl_div(p, q, reduction="none")
    assert_ulp_close(got, oracle.kl_div(p, q, reduction="none"), dtype)
    assert got[2] == 0
    assert got[1] < 9 * h ** 2 < 1e-2 < got[0]
    # row 2 (KL 0: no relative bound holds) always goes to the exact path, row 1 too in float32 (h = 2**-20
    # cancels more than the plain bound allows; float16's h = 2**-9 does not), row 0 stays plain
    assert redone == ([2] if dtype == "float32" else [1])


def test_float64_kl_takes_extreme_ratios_and_tiny_entries_apart():
    # ratios beyond 2**+-60 and entries below 2**-900 leave the double-double range for the plain terms
    p = np.array([[0.5, 0.5 - 2.0 ** -70, 2.0 ** -70, 0.0],
                  [1e-300, 0.25, 0.25, 0.5 - 1e-300],
                  [0.3, 0.3, 0.4, 0.0]])
    q = np.array([[2.0 ** -70, 0.5, 0.5 - 2.0 ** -70, 0.0],
                  [0.25, 1e-300, 0.5 - 1e-300, 0.25],
                  [0.3, 0.3 + 1e-12, 0.4 - 1e-12, 0.0]])
    assert_ulp_close(nnstab.kl_div(p, q, reduction="none"), oracle.kl_div(p, q, reduction="none"), "float64")
    long_p, long_q = distributions(2, 33000, seed=3, dtype="float64", concentration=0.3)  # two blocks
    assert_ulp_close(nnstab.kl_div(long_p, long_q, reduction="none"),
                     oracle.kl_div(long_p, long_q, reduction="none"), "float64")


@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_float32_kl_gradient_near_log_ratio_minus_one_is_redone_exactly(kind):
    # p / q close to 1/e: log(p/q) + 1 cancels in the plain float64 log, those entries take double-double
    rng = np.random.default_rng(4)
    q = rng.uniform(0.01, 1.0, 4000).astype(np.float32)
    p = (q.astype(np.float64) * np.exp(-1.0) * (1 + rng.integers(-40, 40, q.size) * 2.0 ** -24)).astype(np.float32)
    gap = np.abs(np.log(p.astype(np.float64) / q) + 1)
    keep = (gap > 2.0 ** -26) | (gap > 2.0 ** -20)  # not closer than float64's log can tell
    p, q = p[keep].reshape(1, -1), q[keep].reshape(1, -1)
    assert np.sum(np.abs(np.log(p.astype(np.float64) / q) + 1) < kl.KL_GRAD_PLAIN_MIN) > 100
    g = np.array([0.75], dtype=np.float32)
    exact_p, exact_q = oracle.grad_kl_div(p, q, reduction="none", grad_output=g)
    args = (p, q, g) if kind == "numpy" else tuple(torch.from_numpy(a) for a in (p, q, g))
    dp, dq = (np.asarray(v) for v in kl.kl_div_backward(*args, reduction="none"))
    assert_ulp_close(dp, exact_p, "float32", name=f"dp ({kind})")
    assert_ulp_close(dq, exact_q, "float32", name=f"dq ({kind})")


def test_float32_kl_autograd_uses_the_same_gradient():
    p, q = distributions(3, 500, seed=5, dtype="float32")
    pt, qt = torch.from_numpy(p).requires_grad_(), torch.from_numpy(q).requires_grad_()
    nnstab.kl_div(pt, qt).backward()
    exact_p, exact_q = oracle.grad_kl_div(p, q)
    assert_ulp_close(pt.grad, exact_p, "float32", name="dp")
    assert_ulp_close(qt.grad, exact_q, "float32", name="dq")


# ---------------------------------------------------------------- mse's one-pass float32 sum

def test_float32_mse_over_several_blocks_is_within_bound():
    a = families.family_arrays("random", "float32", rng=6, rows=2, cols=20000)
    b = families.round_to(a + np.random.default_rng(7).standard_normal(a.shape), "float32")
    exact_sum = oracle.mse(a, b, reduction="sum")
    for reduction, exact in (("sum", exact_sum), ("mean", exact_sum / a.size)):
        assert_ulp_close(nnstab.mse(a, b, reduction=reduction), exact, "float32", name=f"numpy {reduction}")
        assert_ulp_close(nnstab.mse(torch.from_numpy(a), torch.from_numpy(b), reduction=reduction), exact,
                         "float32", name=f"torch {reduction}")


def test_the_one_pass_sum_of_squares_is_the_float64_sum():
    a = np.random.default_rng(8).standard_normal(1000).astype(np.float32)
    b = np.random.default_rng(9).standard_normal(1000).astype(np.float32)
    exact = float(sum((float(x) - float(y)) ** 2 for x, y in zip(a.tolist(), b.tolist())))
    assert abs(_fused.sum_sq_diff(a, b) - exact) <= 1000 * 2.0 ** -53 * exact


# ---------------------------------------------------------------- the softmax family's float32 backward

@pytest.mark.parametrize("family", ["random", "dominant", "ties", "masked"])
def test_float32_softmax_backward_loops_match_the_float64_formulas(family):
    x = families.family_arrays(family, "float32", rng=10, rows=4, cols=3000)
    g = families.round_to(np.random.default_rng(11).standard_normal(x.shape), "float32")
    for name in ("softmax", "log_softmax"):
        y = getattr(nnstab, name)(x)
        backward = getattr(lse_module, f"{name}_backward")
        fused = backward(y, g)  # float32: the fused loops
        reference = backward(y.astype(np.float64), g.astype(np.float64))  # float64 formulas on the same values
        assert_ulp_close(fused, reference, "float32", name=f"{name} ({family})")


# ---------------------------------------------------------------- both tensor paths (CPU NumPy kernels, torch ops)

ELEMENTWISE = {
    "sigmoid": (lambda x: nnstab.sigmoid(x), oracle.sigmoid, oracle.grad_sigmoid),
    "log_sigmoid": (lambda x: nnstab.log_sigmoid(x), oracle.log_sigmoid, oracle.grad_log_sigmoid),
    "softplus": (lambda x: nnstab.softplus(x), oracle.softplus, oracle.grad_softplus),
}


@pytest.mark.parametrize("numpy_on_cpu", [True, False])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("family", ["huge", "subnormal", "exp_edges", "random"])
@pytest.mark.parametrize("name", list(ELEMENTWISE))
def test_sigmoid_family_tensors_on_either_path_are_within_bound(name, family, dtype, numpy_on_cpu, monkeypatch):
    monkeypatch.setattr(lse_module, "NUMPY_ON_CPU", numpy_on_cpu)
    fn, exact_fn, exact_grad = ELEMENTWISE[name]
    x = families.family_arrays(family, dtype, rng=12, rows=4).astype(np.float64)
    g = families.round_to(np.random.default_rng(13).uniform(0.5, 2.0, x.shape), dtype)
    xt = families.to_torch(x, dtype).requires_grad_()
    y = fn(xt)
    assert sigmoid_module.on_numpy_kernels(xt) == numpy_on_cpu
    assert_ulp_close(y, exact_fn(x), dtype, name=f"{name} value")
    y.backward(families.to_torch(g, dtype))
    assert_ulp_close(xt.grad, exact_grad(x, grad_output=g), dtype, name=f"{name} gradient")


LOSSES = {
    "binary_cross_entropy_with_logits": (
        lambda dtype: (families.family_arrays("random", dtype, rng=14, rows=4),
                       families.binary_targets(dtype, 15, (4, families.family_arrays("random", dtype, rng=14, rows=4).shape[1]))),
        oracle.binary_cross_entropy_with_logits, oracle.grad_binary_cross_entropy_with_logits),
    "binary_cross_entropy": (
        lambda dtype: families.bce_arrays(dtype, 16, (4, 16)),
        oracle.binary_cross_entropy, oracle.grad_binary_cross_entropy),
    "mse": (
        lambda dtype: (families.family_arrays("huge", dtype, rng=17, rows=4), families.family_arrays("huge", dtype, rng=18, rows=4)),
        oracle.mse, oracle.grad_mse),
}


@pytest.mark.parametrize("numpy_on_cpu", [True, False])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("reduction", ["none", "mean"])
@pytest.mark.parametrize("name", list(LOSSES))
def test_loss_tensors_on_either_path_are_within_bound(name, reduction, dtype, numpy_on_cpu, monkeypatch):
    monkeypatch.setattr(lse_module, "NUMPY_ON_CPU", numpy_on_cpu)
    inputs, exact_fn, exact_grad = LOSSES[name]
    a, b = (np.asarray(v, np.float64) for v in inputs(dtype))
    at, bt = families.to_torch(a, dtype).requires_grad_(), families.to_torch(b, dtype)
    with np.errstate(all="ignore"):
        loss = getattr(elementwise, name)(at, bt, reduction=reduction)
        assert_ulp_close(loss, exact_fn(a, b, reduction=reduction), dtype, name=f"{name} {reduction}")
        g = np.ones(a.shape) if reduction == "none" else np.float64(1.0)
        loss.backward(torch.ones_like(loss))
        assert_ulp_close(at.grad, exact_grad(a, b, reduction=reduction, grad_output=g), dtype,
                         name=f"{name} {reduction} gradient")


@pytest.mark.parametrize("kind", ["numpy", "torch"])
@pytest.mark.parametrize("name", list(LOSSES))
def test_a_float16_target_with_float32_input_stays_within_bound(name, kind):
    # numba has no float16: such blocks take the NumPy formulas (values exact in both dtypes)
    a, b = (np.asarray(v, np.float64) for v in LOSSES[name][0]("float16"))
    args = (a.astype(np.float32), b.astype(np.float16))
    if kind == "torch":
        args = tuple(torch.from_numpy(v) for v in args)
    for reduction in ("none", "mean"):
        with np.errstate(all="ignore"):
            value = getattr(elementwise, name)(*args, reduction=reduction)
        assert_ulp_close(value, LOSSES[name][1](a, b, reduction=reduction), "float32", name=f"{name} {reduction}")
