"""cross_entropy and kl_div: laws, mpmath references on hard families, conventions, gradients, bad input."""
import importlib
import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import nnstab
from nnstab import oracle
from nnstab.testing import ULP_BOUNDS, assert_ulp_close, families, strategies, ulp_error

ce_module = importlib.import_module("nnstab.numerics.categorical")
lse_module = importlib.import_module("nnstab.numerics.softmax_family")

FAMILIES = tuple(f for f in families.LOGIT_FAMILIES if f != "long_rows")
EPS = {"float16": 2.0 ** -10, "bfloat16": 2.0 ** -7, "float32": 2.0 ** -23, "float64": 2.0 ** -52}


def class_targets(x, seed):
    """Random classes, except every other row targets its largest logit (a confident, tiny loss)."""
    t = families.class_targets(seed, x.shape[0], x.shape[1])
    t[::2] = np.argmax(x[::2], axis=1)
    return t


def to_kind(a, dtype, kind):
    if kind == "numpy":
        return a
    return families.to_torch(a, dtype) if a.dtype.kind == "f" else torch.from_numpy(a)


def evaluations(fn, args, dtype, monkeypatch, **kwargs):
    """(label, result) on NumPy (where NumPy has the dtype) and on tensors through both torch paths."""
    out = [] if dtype == "bfloat16" else [("numpy", fn(*args, **kwargs))]
    for numpy_on_cpu in (True, False):
        monkeypatch.setattr(lse_module, "NUMPY_ON_CPU", numpy_on_cpu)
        tensors = [to_kind(a, dtype, "torch") for a in args]
        out.append(("torch (numpy kernels)" if numpy_on_cpu else "torch (torch ops)", fn(*tensors, **kwargs)))
    return out


def distributions(dtype, seed, rows=3, cols=12, closeness=None, zeros=False):
    """Probability rows p, q rounded to dtype (q = p perturbed by `closeness` when given)."""
    rng = np.random.default_rng(seed)
    q = rng.dirichlet(np.ones(cols), rows)
    if closeness is None:
        p = rng.dirichlet(np.ones(cols) * 0.5, rows)
    else:
        p = q * np.exp(rng.standard_normal((rows, cols)) * closeness)
        p /= p.sum(1, keepdims=True)
    if zeros:
        p[rng.uniform(size=p.shape) < 0.3] = 0.0
        p[:, 0] += 1 - p.sum(1)
    return families.round_to(p, dtype), families.round_to(q, dtype)


# ---------------------------------------------------------------- cross-entropy against mpmath

@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("dtype", families.DTYPES)
def test_cross_entropy_with_class_indices_is_within_bound_on_each_family(family, dtype, monkeypatch):
    x = families.family_arrays(family, dtype, rng=5, rows=6, cols=12)
    t = class_targets(x, 5)
    for reduction in ("none", "mean"):
        exact = oracle.cross_entropy(x, t, reduction=reduction)
        for label, loss in evaluations(nnstab.cross_entropy, (x, t), dtype, monkeypatch, reduction=reduction):
            assert_ulp_close(loss, exact, dtype, name=f"cross_entropy {reduction} [{label}]", inputs=x)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("dtype", families.DTYPES)
def test_cross_entropy_with_soft_labels_is_within_bound_on_each_family(family, dtype, monkeypatch):
    x = families.family_arrays(family, dtype, rng=6, rows=4, cols=10)
    t = families.family_arrays("soft_labels_with_zeros", dtype, rng=7, rows=4, cols=10)
    exact = oracle.cross_entropy(x, t, reduction="none")
    for label, loss in evaluations(nnstab.cross_entropy, (x, t), dtype, monkeypatch, reduction="none"):
        assert_ulp_close(loss, exact, dtype, name=f"soft cross_entropy [{label}]", inputs=x)


def test_cross_entropy_on_a_long_row_is_within_bound():
    x = families.family_arrays("long_rows", "float64", rng=4, rows=1)
    t = np.array([17])
    assert_ulp_close(nnstab.cross_entropy(x, t), oracle.cross_entropy(x, t), "float64")


@pytest.mark.parametrize("dtype", families.DTYPES)
@settings(max_examples=25)
@given(data=st.data())
def test_cross_entropy_of_random_hard_inputs_is_within_bound(dtype, data):
    x = data.draw(strategies.logits(dtype=dtype, rows=(1, 4), cols=(1, 8)))
    t = np.asarray(data.draw(st.lists(st.integers(0, x.shape[1] - 1), min_size=x.shape[0], max_size=x.shape[0])))
    exact = oracle.cross_entropy(x, t, reduction="none")
    assert_ulp_close(nnstab.cross_entropy(to_kind(x, dtype, "torch" if dtype == "bfloat16" else "numpy"),
                                          to_kind(t, dtype, "torch" if dtype == "bfloat16" else "numpy"),
                                          reduction="none"), exact, dtype, inputs=x)


def test_a_confident_correct_prediction_keeps_its_tiny_loss():
    x = np.array([[50.0, 0.0, 0.0]])  # loss = log1p(2 exp(-50)) ~ 3.9e-22, where log(sum(exp)) - x_t gives 0
    loss = nnstab.cross_entropy(x, np.array([0]))
    assert loss > 0
    assert_ulp_close(loss, oracle.cross_entropy(x, np.array([0])), "float64")
    assert_ulp_close(nnstab.cross_entropy(torch.tensor(x, dtype=torch.float32), torch.tensor([0])),
                     oracle.cross_entropy(x.astype(np.float32), np.array([0])), "float32")


# ---------------------------------------------------------------- cross-entropy laws

@settings(max_examples=40)
@given(x=strategies.logits(dtype="float64"), data=st.data())
def test_cross_entropy_is_never_negative(x, data):
    t = np.asarray(data.draw(st.lists(st.integers(0, x.shape[1] - 1), min_size=x.shape[0], max_size=x.shape[0])))
    losses = nnstab.cross_entropy(x, t, reduction="none")
    assert not (losses < 0).any()


@settings(max_examples=40)
@given(x=strategies.logits(dtype="float64", family=("random", "dominant", "wide_spread", "offset", "ties")), data=st.data())
def test_cross_entropy_is_minus_log_softmax_at_the_target(x, data):
    t = np.asarray(data.draw(st.lists(st.integers(0, x.shape[1] - 1), min_size=x.shape[0], max_size=x.shape[0])))
    picked = -nnstab.log_softmax(x)[np.arange(x.shape[0]), t]
    assert_ulp_close(nnstab.cross_entropy(x, t, reduction="none"), picked, "float64", bound=2 * ULP_BOUNDS["float64"])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@settings(max_examples=30)
@given(data=st.data())
def test_one_hot_probabilities_give_the_loss_of_their_class_index(dtype, data):
    x = data.draw(strategies.logits(dtype=dtype, family=("random", "dominant", "masked", "ties")))
    t = np.asarray(data.draw(st.lists(st.integers(0, x.shape[1] - 1), min_size=x.shape[0], max_size=x.shape[0])))
    one_hot = np.eye(x.shape[1], dtype=dtype)[t]
    hard = nnstab.cross_entropy(x, t, reduction="none").astype(np.float64)
    assert_ulp_close(nnstab.cross_entropy(x, one_hot, reduction="none"), hard, dtype, bound=2 * ULP_BOUNDS[dtype])


@given(x=strategies.logits(dtype="float64", family=("random", "dominant", "masked")), bump=st.floats(0.0, 30.0))
def test_raising_the_target_logit_never_raises_the_loss(x, bump):
    t = np.zeros(x.shape[0], dtype=np.int64)
    raised = x.copy()
    raised[:, 0] += bump
    assert np.all(nnstab.cross_entropy(raised, t, reduction="none") <= nnstab.cross_entropy(x, t, reduction="none"))


def test_reductions_are_the_sum_and_the_mean_of_the_rows():
    x = families.family_arrays("random", "float64", rng=3, rows=5, cols=4)
    t = class_targets(x, 3)
    rows = nnstab.cross_entropy(x, t, reduction="none")
    assert_ulp_close(nnstab.cross_entropy(x, t, reduction="sum"), oracle.cross_entropy(x, t, reduction="sum"), "float64")
    assert math.isclose(nnstab.cross_entropy(x, t, reduction="sum"), rows.sum(), rel_tol=1e-15)
    assert math.isclose(nnstab.cross_entropy(x, t), rows.mean(), rel_tol=1e-15)


@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_ignored_rows_are_zero_and_left_out_of_the_mean(kind):
    x = families.family_arrays("random", "float32", rng=8, rows=4, cols=5)
    t = np.array([1, -100, 3, -100])
    args = (x, t) if kind == "numpy" else (torch.from_numpy(x), torch.from_numpy(t))
    rows = np.asarray(nnstab.cross_entropy(*args, reduction="none", ignore_index=-100), dtype=np.float64)
    assert rows[1] == 0 and rows[3] == 0
    assert_ulp_close(nnstab.cross_entropy(*args, ignore_index=-100),
                     oracle.cross_entropy(x, t, ignore_index=-100), "float32")
    reference = F.cross_entropy(torch.from_numpy(x).double(), torch.from_numpy(t), ignore_index=-100)
    assert math.isclose(float(nnstab.cross_entropy(*args, ignore_index=-100)), reference.item(), rel_tol=1e-6)
    all_ignored = (x, np.full(4, -100)) if kind == "numpy" else (torch.from_numpy(x), torch.full((4,), -100))
    assert math.isnan(float(nnstab.cross_entropy(*all_ignored, ignore_index=-100)))


def test_the_class_axis_can_be_torchs_channel_axis():
    x = torch.randn(2, 5, 3, 4, dtype=torch.float64)
    t = torch.randint(0, 5, (2, 3, 4))
    ours = nnstab.cross_entropy(x, t, axis=1, reduction="none")
    assert ours.shape == (2, 3, 4)
    torch.testing.assert_close(ours, F.cross_entropy(x, t, reduction="none"), rtol=1e-14, atol=0)
    np.testing.assert_allclose(nnstab.cross_entropy(x.numpy(), t.numpy(), axis=1, reduction="none"), ours.numpy(),
                               rtol=1e-15)


@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_cross_entropy_conventions_for_masked_infinite_and_nan_logits(kind):
    inf, nan = np.inf, np.nan
    x = np.array([[0.0, -inf, 1.0], [-inf, -inf, -inf], [inf, 0.0, inf], [inf, 0.0, inf], [1.0, nan, 0.0]])
    t = np.array([1, 0, 2, 1, 0])
    args = (x, t) if kind == "numpy" else (torch.from_numpy(x), torch.from_numpy(t))
    rows = np.asarray(nnstab.cross_entropy(*args, reduction="none"))
    assert rows[0] == inf and rows[1] == inf and rows[3] == inf
    assert rows[2] == pytest.approx(math.log(2), rel=1e-15)
    assert math.isnan(rows[4])
    soft = np.array([[0.5, 0.0, 0.5]] * 5)  # zero weight on the masked entry: finite
    soft_args = (x, soft) if kind == "numpy" else (torch.from_numpy(x), torch.from_numpy(soft))
    soft_rows = np.asarray(nnstab.cross_entropy(*soft_args, reduction="none"))
    assert np.isfinite(soft_rows[0]) and soft_rows[1] == inf and math.isnan(soft_rows[4])


# ---------------------------------------------------------------- KL divergence

KL_CASES = [("random", {}), ("close", {"closeness": 1e-3}), ("very close", {"closeness": 1e-9}), ("zeros", {"zeros": True})]


@pytest.mark.parametrize("case, options", KL_CASES, ids=[c for c, _ in KL_CASES])
@pytest.mark.parametrize("dtype", families.DTYPES)
@pytest.mark.parametrize("log_input", [False, True])
def test_kl_div_is_within_bound(case, options, dtype, log_input, monkeypatch):
    p, q = distributions(dtype, seed=len(case), **options)
    if log_input:
        with np.errstate(divide="ignore"):
            p, q = families.round_to(np.log(p.astype(np.float64)), dtype), families.round_to(np.log(q.astype(np.float64)), dtype)
    for reduction in ("none", "mean"):
        exact = oracle.kl_div(p, q, reduction=reduction, log_input=log_input)
        for label, value in evaluations(nnstab.kl_div, (p, q), dtype, monkeypatch, reduction=reduction, log_input=log_input):
            assert_ulp_close(value, exact, dtype, name=f"kl_div {reduction} [{label}]")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@settings(max_examples=25)
@given(data=st.data())
def test_kl_div_of_random_distributions_is_within_bound(dtype, data):
    p = data.draw(strategies.soft_labels(dtype=dtype, rows=(1, 3), cols=(2, 8)))
    q = data.draw(strategies.soft_labels(dtype=dtype, rows=(p.shape[0], p.shape[0]), cols=(p.shape[1], p.shape[1])))
    assert_ulp_close(nnstab.kl_div(p, q, reduction="none"), oracle.kl_div(p, q, reduction="none"), dtype)


@settings(max_examples=40)
@given(p=strategies.soft_labels(dtype="float64", cols=(1, 10)))
def test_kl_of_a_distribution_from_itself_is_exactly_zero(p):
    assert np.all(nnstab.kl_div(p, p, reduction="none") == 0)
    assert np.all(nnstab.kl_div(torch.from_numpy(p), torch.from_numpy(p), reduction="none").numpy() == 0)


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_kl_of_narrow_p_against_a_subnormal_float64_q_is_finite_and_within_bound(dtype):
    # p / q = 1 / 2.2e-313 is beyond float64: the ratio must not overflow into an infinite KL (true value ~720)
    p = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0]], dtype=dtype)
    q = np.array([[2.2250738585e-313, 0.5, 0.5], [1e-310, 0.5, 0.5]])
    exact = oracle.kl_div(p, q, reduction="none")
    with warnings.catch_warnings():
        warnings.simplefilter("error")        # no overflow warning escapes either
        got = nnstab.kl_div(p, q, reduction="none")
    assert_ulp_close(got, exact, dtype)


@settings(max_examples=40)
@given(data=st.data())
def test_kl_is_at_least_the_difference_of_the_total_masses(data):
    # Gibbs: sum p log(p/q) >= sum p - sum q (log r <= r - 1); for normalized rows that is KL >= 0
    p = data.draw(strategies.soft_labels(dtype="float64", cols=(2, 10)))
    q = data.draw(strategies.soft_labels(dtype="float64", rows=(p.shape[0], p.shape[0]), cols=(p.shape[1], p.shape[1])))
    q = np.where(q == 0, 1e-3, q)
    kl = nnstab.kl_div(p, q, reduction="none")
    floor = p.sum(1) - q.sum(1)
    assert np.all(kl >= floor - 4 * EPS["float64"] * np.abs(kl))


@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_kl_conventions_for_zeros_and_nan(kind):
    p = np.array([[0.5, 0.5, 0.0], [0.5, 0.5, 0.0], [0.5, np.nan, 0.5]])
    q = np.array([[0.5, 0.0, 0.5], [0.25, 0.25, 0.5], [0.5, 0.25, 0.25]])
    args = (p, q) if kind == "numpy" else (torch.from_numpy(p), torch.from_numpy(q))
    rows = np.asarray(nnstab.kl_div(*args, reduction="none"))
    assert rows[0] == np.inf  # q = 0 where p > 0
    assert rows[1] == pytest.approx(math.log(2), rel=1e-15)  # p = 0 entries add nothing
    assert math.isnan(rows[2])


@pytest.fixture
def every_torch_warning():
    """torch gives some warnings once per process; here each one is given, so a test sees it whatever ran before."""
    saved = torch.is_warn_always_enabled()
    torch.set_warn_always(True)
    yield
    torch.set_warn_always(saved)


@pytest.mark.parametrize("log_input", [False, True])
def test_kl_refuses_a_tensor_in_a_graph_without_a_warning(log_input, every_torch_warning):
    p = torch.tensor([0.5, 1.5] if not log_input else [-0.5, 0.5], requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # float() of a tensor that requires grad warns unless it is detached
        with pytest.raises(ValueError, match=r"p must hold (log-)?probabilities"):
            nnstab.kl_div(p, torch.full((2,), 0.5 if not log_input else -0.5), log_input=log_input)


def test_kl_mean_averages_rows_and_sum_adds_them():
    p, q = distributions("float64", seed=3, rows=4)
    rows = nnstab.kl_div(p, q, reduction="none")
    assert math.isclose(nnstab.kl_div(p, q), rows.mean(), rel_tol=1e-15)
    assert math.isclose(nnstab.kl_div(p, q, reduction="sum"), rows.sum(), rel_tol=1e-15)
    assert_ulp_close(nnstab.kl_div(p, q, axis=0, reduction="none"), oracle.kl_div(p, q, axis=0, reduction="none"),
                     "float64")


# ---------------------------------------------------------------- gradients

@pytest.mark.parametrize("numpy_on_cpu", [True, False])
def test_gradcheck_and_double_backward_in_float64(numpy_on_cpu, monkeypatch):
    monkeypatch.setattr(lse_module, "NUMPY_ON_CPU", numpy_on_cpu)
    x = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    t = torch.tensor([0, 4, 2])
    scores = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)  # soft targets softmax(scores) stay normalized
    for reduction in ("mean", "sum", "none"):
        assert torch.autograd.gradcheck(lambda z: nnstab.cross_entropy(z, t, reduction=reduction), (x,))
        assert torch.autograd.gradgradcheck(lambda z: nnstab.cross_entropy(z, t, reduction=reduction), (x,))
    assert torch.autograd.gradcheck(lambda z, a: nnstab.cross_entropy(z, torch.softmax(a, -1)), (x, scores))
    p = torch.softmax(torch.randn(3, 5, dtype=torch.float64), -1).requires_grad_()
    q = torch.softmax(torch.randn(3, 5, dtype=torch.float64), -1).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: nnstab.kl_div(a, b), (p, q))
    assert torch.autograd.gradgradcheck(lambda a, b: nnstab.kl_div(a, b), (p, q))
    lp, lq = p.detach().log().requires_grad_(), q.detach().log().requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: nnstab.kl_div(a, b, log_input=True, reduction="sum"), (lp, lq))


@pytest.mark.parametrize("family", ["random", "dominant", "wide_spread", "masked", "offset"])
@pytest.mark.parametrize("dtype", families.DTYPES)
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_cross_entropy_gradient_is_within_the_ulp_bound(family, dtype, reduction):
    x = families.family_arrays(family, dtype, rng=12, rows=4, cols=6)
    t = class_targets(x, 12)
    g = None if reduction == "mean" else families.round_to(np.random.default_rng(0).standard_normal(4), dtype)
    exact = oracle.grad_cross_entropy(x, t, reduction=reduction, grad_output=g)
    xt = families.to_torch(x, dtype).requires_grad_()
    loss = nnstab.cross_entropy(xt, torch.from_numpy(t), reduction=reduction)
    loss.backward(None if g is None else families.to_torch(g, dtype))
    assert_ulp_close(xt.grad, exact, dtype, name="autograd")
    if dtype != "bfloat16":
        g_np = np.asarray(1.0, dtype=dtype) if g is None else g
        assert_ulp_close(ce_module.cross_entropy_backward(x, t, g_np, reduction=reduction), exact, dtype,
                         name="cross_entropy_backward")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_soft_label_gradient_is_within_the_error_of_softmax_minus_target(dtype):
    x = families.family_arrays("random", dtype, rng=13, rows=4, cols=6)
    t = families.family_arrays("soft_labels_with_zeros", dtype, rng=14, rows=4, cols=6)
    exact = np.array(oracle.grad_cross_entropy(x, t), dtype=np.float64)
    p = np.array([[float(v) for v in row] for row in oracle.softmax(x)])
    bound = 2 * ULP_BOUNDS[dtype] * EPS[dtype] * (p + t) / 4 + families.limits(dtype)["subnormal"]
    for dx in (ce_module.cross_entropy_backward(x, t, np.asarray(1.0, dtype)),
               ce_module.cross_entropy_backward(torch.from_numpy(x), torch.from_numpy(t), torch.tensor(1.0, dtype=getattr(torch, dtype))).numpy()):
        assert np.all(np.abs(dx - exact) <= bound)


@pytest.mark.parametrize("log_input", [False, True])
@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_kl_gradients_match_mpmath(log_input, kind):
    p, q = distributions("float64", seed=21, rows=3, cols=7, zeros=not log_input)
    if log_input:
        p, q = np.log(p), np.log(q)
    g = np.array([0.5, -2.0, 1.5])
    exact_p, exact_q = (np.array(v, dtype=np.float64) for v in oracle.grad_kl_div(p, q, reduction="none", log_input=log_input,
                                                                                     grad_output=g))
    args = (p, q, g) if kind == "numpy" else tuple(torch.from_numpy(a) for a in (p, q, g))
    dp, dq = (np.asarray(v) for v in ce_module.kl_div_backward(*args, reduction="none", log_input=log_input))
    finite = np.isfinite(exact_p)
    assert np.array_equal(dp[~finite], exact_p[~finite])
    with np.errstate(divide="ignore", invalid="ignore"):   # p = 0 entries: log 0, outside `finite` below
        scale = (np.abs(np.log(np.exp(p) / np.exp(q))) if log_input else np.abs(np.log(p / np.where(q > 0, q, 1)))) + 1
        assert np.all(np.abs(dp - exact_p)[finite] <= 8 * EPS["float64"] * (np.abs(g[:, None]) * scale * np.exp(p if log_input else 0))[finite])
    assert_ulp_close(dq, exact_q.astype(object), "float64")


def test_kl_autograd_gradients_are_the_gradient_functions_values():
    p = torch.softmax(torch.randn(3, 5), -1).requires_grad_()
    q = torch.softmax(torch.randn(3, 5), -1).requires_grad_()
    nnstab.kl_div(p, q).backward()
    dp, dq = ce_module.kl_div_backward(p.detach(), q.detach(), torch.tensor(1.0))
    assert torch.equal(p.grad, dp) and torch.equal(q.grad, dq)


# ---------------------------------------------------------------- bad input

def test_cross_entropy_bad_input_messages_name_the_argument_and_the_fix():
    x = np.zeros((2, 3))
    with pytest.raises(ValueError, match=r"target holds class index 3, outside \[0, 3\)"):
        nnstab.cross_entropy(x, np.array([0, 3]))
    with pytest.raises(ValueError, match=r"class index -100.*ignore_index=-100"):
        nnstab.cross_entropy(x, np.array([0, -100]))
    with pytest.raises(ValueError, match=r"target \(class indices\) must have shape \(2,\)"):
        nnstab.cross_entropy(x, np.array([0, 1, 2]))
    with pytest.raises(ValueError, match=r"must sum to 1 along axis 1.*a row sums to 0\.9.*normalize"):
        nnstab.cross_entropy(x, np.array([[0.5, 0.4, 0.0], [1.0, 0.0, 0.0]]))
    with pytest.raises(ValueError, match=r"target must hold probabilities in \[0, 1\]"):
        nnstab.cross_entropy(x, np.array([[1.5, -0.5, 0.0], [1.0, 0.0, 0.0]]))
    with pytest.raises(ValueError, match=r"shape of logits"):
        nnstab.cross_entropy(x, np.ones((3, 2)) / 2)
    with pytest.raises(TypeError, match=r"integer class indices or float probabilities, got dtype bool"):
        nnstab.cross_entropy(x, np.array([True, False]))
    with pytest.raises(TypeError, match=r"target must be a NumPy array or a torch tensor.*np.asarray"):
        nnstab.cross_entropy(x, [0, 1])
    with pytest.raises(TypeError, match=r"logits must be a floating-point array"):
        nnstab.cross_entropy(np.zeros((2, 3), dtype=np.int64), np.array([0, 1]))
    with pytest.raises(TypeError, match=r"logits is a NumPy array but target is a torch tensor"):
        nnstab.cross_entropy(x, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"ignore_index applies to class-index targets"):
        nnstab.cross_entropy(x, np.full((2, 3), 1 / 3), ignore_index=-100)
    with pytest.raises(ValueError, match=r"reduction must be one of 'none', 'mean', 'sum'"):
        nnstab.cross_entropy(x, np.array([0, 1]), reduction="batchmean")
    with pytest.raises(ValueError, match=r"axis=2 is out of range"):
        nnstab.cross_entropy(x, np.array([0, 1]), axis=2)
    with pytest.raises(ValueError, match=r"target holds class index 7"):
        nnstab.cross_entropy(torch.zeros(2, 3), torch.tensor([7, 0]))


def test_probability_rows_get_a_tolerance_scaled_to_their_dtype():
    x = np.zeros((1, 3), np.float32)
    off_by_float32_rounding = np.array([[0.1, 0.2, 0.7]], np.float32)  # sums to 1 + ~6e-8
    nnstab.cross_entropy(x, off_by_float32_rounding)
    tolerance = ce_module.PROBABILITY_SUM_TOLERANCE_EPS * np.finfo(np.float32).eps
    with pytest.raises(ValueError, match="must sum to 1"):
        nnstab.cross_entropy(x, np.array([[0.1, 0.2, 0.7 + 2 * tolerance]], np.float32))


def test_kl_bad_input_messages_name_the_argument_and_the_fix():
    p = np.full((2, 3), 1 / 3)
    with pytest.raises(ValueError, match=r"q must hold probabilities in \[0, 1\]"):
        nnstab.kl_div(p, p - 0.5)
    with pytest.raises(ValueError, match=r"log_input=True p must hold log-probabilities \(<= 0\)"):
        nnstab.kl_div(p, np.log(p), log_input=True)
    with pytest.raises(ValueError, match=r"q must have the shape of p"):
        nnstab.kl_div(p, p[:, :2])
    with pytest.raises(TypeError, match=r"log_input must be a bool"):
        nnstab.kl_div(p, p, log_input="yes")
    with pytest.raises(TypeError, match=r"p must be a floating-point array"):
        nnstab.kl_div(np.ones((2, 3), dtype=np.int32), p)


@pytest.mark.parametrize("kind", ["numpy", "torch ops", "torch numpy kernels"])
def test_a_1d_row_whose_loss_overflows_reduces_to_inf(kind, monkeypatch):
    """A single row of 1-d logits has 0-d per-row losses; the mean over it must still be its loss."""
    wrap = np.asarray
    if kind != "numpy":
        monkeypatch.setattr(lse_module, "NUMPY_ON_CPU", kind == "torch numpy kernels")
        wrap = torch.as_tensor
    for reduction in ("mean", "sum", "none"):
        hard = nnstab.cross_entropy(wrap(np.array([1e308, -1e308])), wrap(np.array(1)), reduction=reduction)
        soft = nnstab.cross_entropy(wrap(np.array([np.inf, 0.0])), wrap(np.array([0.5, 0.5])), reduction=reduction)
        assert float(hard) == np.inf and float(soft) == np.inf, reduction
    loss = nnstab.cross_entropy(wrap(np.array([1e308, -1e308, 1e308])), wrap(np.array(0)))
    assert float(loss) == pytest.approx(math.log(2), rel=1e-15)


@pytest.mark.parametrize("kind", ["numpy", "torch ops", "torch numpy kernels"])
def test_no_classes_or_no_rows_give_empty_or_ignored_losses(kind, monkeypatch):
    """Empty class axes on every path: soft targets on no rows, and rows that are all ignored (torch gives 0)."""
    wrap = np.asarray
    if kind != "numpy":
        monkeypatch.setattr(lse_module, "NUMPY_ON_CPU", kind == "torch numpy kernels")
        wrap = torch.as_tensor
    assert nnstab.cross_entropy(wrap(np.zeros((0, 0))), wrap(np.zeros((0, 0))), reduction="none").shape == (0,)
    ignored = nnstab.cross_entropy(wrap(np.zeros((2, 0))), wrap(np.array([-100, -100])), ignore_index=-100,
                                   reduction="none")
    assert np.asarray(ignored).tolist() == [0.0, 0.0]
    assert math.isnan(nnstab.cross_entropy(wrap(np.zeros((2, 0))), wrap(np.array([0, 0])), ignore_index=0))
    if kind != "numpy":
        x = torch.zeros((2, 0), dtype=torch.float64, requires_grad=True)
        nnstab.cross_entropy(x, torch.tensor([-100, -100]), ignore_index=-100, reduction="sum").backward()
        assert x.grad.shape == (2, 0)


def test_nan_propagates_through_losses_without_an_error():
    x = np.array([[np.nan, 1.0], [0.0, 1.0]])
    rows = nnstab.cross_entropy(x, np.array([0, 1]), reduction="none")
    assert math.isnan(rows[0]) and np.isfinite(rows[1])
    assert math.isnan(nnstab.cross_entropy(x, np.array([0, 1])))
    assert math.isnan(nnstab.kl_div(np.array([np.nan, 1.0]), np.array([0.5, 0.5])))
