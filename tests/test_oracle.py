"""The oracle against independent closed forms and naive formulas run at far higher precision (200 digits)."""
import math

import mpmath
import numpy as np
import pytest
import torch
from hypothesis import given, settings

from nnstab import oracle
from nnstab.testing import strategies

HIGH = 200  # digits for the independent references: naive formulas are exact enough at this precision


@pytest.fixture(autouse=True)
def high_precision():
    """Reference arithmetic in these tests runs at HIGH digits (the oracle sets its own precision)."""
    with mpmath.workdps(HIGH):
        yield


def agree(actual, expected, digits=55):
    """actual (mpf or object array) matches expected to `digits` significant digits; inf/nan/0 exactly."""
    a, e = np.asarray(actual, dtype=object).ravel(), np.asarray(expected, dtype=object).ravel()
    assert a.shape == e.shape
    with mpmath.workdps(HIGH):  # mpf(v) rounds to the working precision: convert at HIGH, not 15 digits
        for u, v in zip(a, e):
            u, v = mpmath.mpf(u), mpmath.mpf(v)
            if mpmath.isnan(v) or mpmath.isinf(v) or v == 0:
                assert (mpmath.isnan(u) and mpmath.isnan(v)) or u == v, (u, v)
            else:
                assert abs(u - v) <= abs(v) * mpmath.mpf(10) ** -digits, (mpmath.nstr(u, 70), mpmath.nstr(v, 70))


def naive_softmax(row):
    with mpmath.workdps(HIGH):
        e = [mpmath.exp(mpmath.mpf(v)) for v in row]
        s = mpmath.fsum(e)
        return [v / s for v in e]


# ---------------------------------------------------------------- logsumexp / softmax / log_softmax

def test_logsumexp_known_values():
    with mpmath.workdps(HIGH):
        agree(oracle.logsumexp(np.array([0.0, 0.0])), mpmath.log(2))
        agree(oracle.logsumexp(np.full(7, 3.5)), 3.5 + mpmath.log(7))
        agree(oracle.logsumexp(np.array([1000.0, 0.0])), 1000 + mpmath.log1p(mpmath.exp(-1000)))


def test_logsumexp_near_zero_keeps_its_digits():
    # x = fl(-log 2) twice: the result is fl(-log 2) + log 2 ~ 2.3e-17, far below |x|;
    # at a fixed 60 digits it would keep only ~43 significant digits
    x = -math.log(2.0)
    with mpmath.workdps(HIGH):
        expected = mpmath.mpf(x) + mpmath.log(2)
    assert abs(expected) < 1e-16
    agree(oracle.logsumexp(np.array([x, x])), expected, digits=58)


def test_logsumexp_axis_and_keepdims():
    x = np.arange(12.0).reshape(3, 4) / 7
    out = oracle.logsumexp(x, axis=0, keepdims=True)
    assert out.shape == (1, 4)
    with mpmath.workdps(HIGH):
        agree(out[0], [mpmath.log(mpmath.fsum(mpmath.exp(mpmath.mpf(v)) for v in x[:, j])) for j in range(4)])


def test_softmax_matches_naive_at_high_precision_and_keeps_tiny_entries():
    row = np.array([0.0, -30.0, -745.5, 2.0, -1e4])
    agree(oracle.softmax(row), naive_softmax(row))


def test_log_softmax_of_a_dominant_logit():
    # log_softmax_0 of [0, -800] = -log1p(e^-800): ~ -e^-800, all its digits survive
    with mpmath.workdps(HIGH):
        expected = -mpmath.log1p(mpmath.exp(-800))
        agree(oracle.log_softmax(np.array([0.0, -800.0]))[0], expected)
    assert oracle.log_softmax(np.array([1e308, 0.0]))[1] == -1e308 - mpmath.log1p(mpmath.exp(-1e308))


@pytest.mark.parametrize("row", [[0.5, -3.0, 2.25], [-70.0, 70.0, 0.0], [1e-300, -1e-300, 0.0]])
def test_log_softmax_is_log_of_softmax(row):
    with mpmath.workdps(HIGH):
        agree(oracle.log_softmax(np.array(row)), [mpmath.log(v) for v in naive_softmax(row)])


def test_edge_conventions():
    x = np.array([[-np.inf, -np.inf], [np.inf, 1.0], [np.nan, 1.0], [np.inf, np.inf], [-np.inf, 0.0]])
    lse = oracle.logsumexp(x)
    assert [lse[i] for i in (0, 1, 3, 4)] == [-mpmath.inf, mpmath.inf, mpmath.inf, 0] and mpmath.isnan(lse[2])
    sm = oracle.softmax(x)
    assert list(sm[0]) == [0, 0] and list(sm[1]) == [1, 0] and list(sm[3]) == [0.5, 0.5] and list(sm[4]) == [0, 1]
    assert all(mpmath.isnan(v) for v in sm[2])
    lsm = oracle.log_softmax(x)
    assert list(lsm[0]) == [-mpmath.inf] * 2 and list(lsm[1]) == [0, -mpmath.inf] and list(lsm[4]) == [-mpmath.inf, 0]
    agree(lsm[3], [-mpmath.log(2)] * 2)


def test_long_row_is_feasible_and_normalised():
    x = np.random.default_rng(0).standard_normal(100_000) * 30
    y = oracle.softmax(x)
    with mpmath.workdps(HIGH):
        assert abs(mpmath.fsum(y) - 1) < mpmath.mpf(10) ** -58


# ---------------------------------------------------------------- sigmoid family

def test_sigmoid_in_the_subnormal_regime():
    with mpmath.workdps(HIGH):
        e = mpmath.exp(-745)
        agree(oracle.sigmoid(np.array([-745.0]))[0], e / (1 + e))
    assert float(oracle.sigmoid(np.array([-745.0]))[0]) == 5e-324  # the smallest float64 subnormal
    assert oracle.sigmoid(np.array([0.0]))[0] == 0.5
    assert oracle.sigmoid(np.array([np.inf, -np.inf]))[0] == 1


@pytest.mark.parametrize("x", [-800.0, -37.5, -1e-8, 0.0, 3e-20, 2.0, 50.0, 710.0])
def test_sigmoid_family_identities(x):
    arr = np.array([x, -x])
    ls, sp = oracle.log_sigmoid(arr), oracle.softplus(arr)
    with mpmath.workdps(HIGH):
        assert abs((ls[0] - ls[1]) - x) <= mpmath.mpf(10) ** -55 * max(1, abs(x))  # log s(x) - log s(-x) = x
        agree(sp[1], -ls[0])  # softplus(-x) = -log_sigmoid(x)
        agree(oracle.sigmoid(arr)[0], mpmath.exp(ls[0]))


# ---------------------------------------------------------------- losses

def test_cross_entropy_index_and_probability_targets():
    logits = np.array([[2.0, -1.0, 0.5], [0.0, 0.0, 40.0]])
    lsm = oracle.log_softmax(logits)
    agree(oracle.cross_entropy(logits, np.array([0, 1]), reduction="none"), [-lsm[0, 0], -lsm[1, 1]])
    onehot = np.array([[1.0, 0, 0], [0, 1.0, 0]])
    agree(oracle.cross_entropy(logits, onehot, reduction="sum"), -lsm[0, 0] - lsm[1, 1])
    soft = np.array([[0.25, 0.75, 0.0], [0.5, 0.0, 0.5]])
    with mpmath.workdps(HIGH):
        expected = -(0.25 * lsm[0, 0] + 0.75 * lsm[0, 1] + 0.5 * lsm[1, 0] + 0.5 * lsm[1, 2]) / 2
    agree(oracle.cross_entropy(logits, soft), expected)


def test_cross_entropy_ignore_index_and_masked_target():
    logits = np.array([[0.0, 0.0], [1.0, -np.inf]])
    agree(oracle.cross_entropy(logits, np.array([1, -100]), ignore_index=-100), mpmath.log(2))
    assert oracle.cross_entropy(logits, np.array([0, 1]), reduction="none")[1] == mpmath.inf
    assert mpmath.isnan(oracle.cross_entropy(logits, np.array([-100, -100]), ignore_index=-100))


def test_binary_cross_entropy_known_values():
    p, t = np.array([0.5, 0.0, 1.0, 0.0, 1e-300, 1e-300, 2.0 ** -1074]), np.array([1.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0])
    out = oracle.binary_cross_entropy(p, t, reduction="none")
    # -log(1 - p) for a tiny p is ~p, not the 0 that 1 - p rounded to 60 digits would give
    agree(out, [mpmath.log(2), 0, 0, mpmath.inf, -mpmath.log(mpmath.mpf(1e-300)),
                -mpmath.log1p(-mpmath.mpf(1e-300)), -mpmath.log1p(-mpmath.ldexp(1, -1074))])
    assert 0 < out[6] < 1e-323


def test_bce_with_logits_equals_bce_of_the_sigmoid():
    x, t = np.array([-80.0, -3.0, 0.0, 1e-3, 40.0, 80.0]), np.array([0.0, 0.3, 0.5, 1.0, 0.0, 1.0])
    with mpmath.workdps(HIGH):
        s = [1 / (1 + mpmath.exp(-mpmath.mpf(v))) for v in x]
        s_neg = [1 / (1 + mpmath.exp(mpmath.mpf(v))) for v in x]  # 1 - sigmoid(x), without cancelling
        expected = [-(tv * mpmath.log(a) + (1 - tv) * mpmath.log(b)) for a, b, tv in zip(s, s_neg, map(mpmath.mpf, t))]
        agree(oracle.binary_cross_entropy_with_logits(x, t, reduction="none"), expected)
        # far out, the loss is the tiny softplus of the wrong-side logit: log1p(e^-800) ~ e^-800
        agree(oracle.binary_cross_entropy_with_logits(np.array([-800.0, 800.0]), np.array([0.0, 1.0]), reduction="sum"),
              2 * mpmath.log1p(mpmath.exp(-800)))


def test_kl_div_exact_zero_and_near_equal_distributions():
    p = np.array([[0.5, 0.25, 0.25, 0.0]])
    assert oracle.kl_div(p, p) == 0
    d = 2.0 ** -30
    q = np.array([0.5 + d, 0.5 - d])
    with mpmath.workdps(HIGH):
        expected = -0.5 * mpmath.log1p(-4 * mpmath.mpf(d) ** 2)  # KL([1/2, 1/2] || [1/2+d, 1/2-d])
    agree(oracle.kl_div(np.array([0.5, 0.5]), q, reduction="sum"), expected)
    assert oracle.kl_div(np.array([0.5, 0.5]), np.array([1.0, 0.0])) == mpmath.inf


def test_kl_div_log_input_and_batchmean():
    lp, lq = np.log(np.array([[0.2, 0.8], [0.6, 0.4]])), np.log(np.array([[0.3, 0.7], [0.6, 0.4]]))
    with mpmath.workdps(HIGH):
        rows = [mpmath.fsum(mpmath.exp(a) * (mpmath.mpf(a) - b) for a, b in zip(r, s)) for r, s in zip(lp, lq)]
        agree(oracle.kl_div(lp, lq, log_input=True, reduction="none"), rows)
        agree(oracle.kl_div(lp, lq, log_input=True), (rows[0] + rows[1]) / 2)


def test_mse_and_inputs_of_other_kinds():
    agree(oracle.mse(np.array([1.0, 2.0]), np.array([0.0, 0.0])), 2.5)
    x = torch.tensor([1.0078125, -3.5, 0.0], dtype=torch.bfloat16)
    assert list(oracle.sigmoid(x)) == list(oracle.sigmoid(x.double().numpy()))
    assert list(oracle.softmax(np.float16([1, 2]))) == list(oracle.softmax(np.array([1.0, 2.0])))


def test_bad_input_raises_clearly():
    with pytest.raises(ValueError, match="outside \\[0, 3\\)"):
        oracle.cross_entropy(np.zeros((2, 3)), np.array([0, 3]))
    with pytest.raises(ValueError, match="must have shape \\(2,\\)"):
        oracle.cross_entropy(np.zeros((2, 3)), np.array([0, 1, 2]))
    with pytest.raises(ValueError, match="probs must hold probabilities in \\[0, 1\\]"):
        oracle.binary_cross_entropy(np.array([1.5]), np.array([1.0]))
    with pytest.raises(TypeError, match="float"):
        oracle.softmax(np.array([1, 2]))
    with pytest.raises(ValueError, match="reduction"):
        oracle.mse(np.zeros(2), np.zeros(2), reduction="avg")


# ---------------------------------------------------------------- gradients vs numerical differentiation

def numeric_grad(f, x):
    """d f / d x_i by mpmath.diff (its own high-precision finite differences), f taking a list of mpf."""
    with mpmath.workdps(HIGH):
        xs = [mpmath.mpf(v) for v in x]
        return [mpmath.diff(lambda t, i=i: f(xs[:i] + [t] + xs[i + 1:]), xs[i]) for i in range(len(xs))]


def msoftmax(xs):
    e = [mpmath.exp(v) for v in xs]
    s = mpmath.fsum(e)
    return [v / s for v in e]


X = [0.5, -1.25, 2.0, 0.0]
G = [0.3, -2.0, 1.5, 0.25]


def test_grad_softmax_family():
    agree(oracle.grad_softmax(np.array(X), grad_output=np.array(G)),
          numeric_grad(lambda xs: mpmath.fsum(g * y for g, y in zip(G, msoftmax(xs))), X), digits=50)
    agree(oracle.grad_log_softmax(np.array(X), grad_output=np.array(G)),
          numeric_grad(lambda xs: mpmath.fsum(g * mpmath.log(y) for g, y in zip(G, msoftmax(xs))), X), digits=50)
    agree(oracle.grad_logsumexp(np.array(X), grad_output=np.array(1.75)),
          numeric_grad(lambda xs: 1.75 * mpmath.log(mpmath.fsum(mpmath.exp(v) for v in xs)), X), digits=50)


def test_grad_softmax_exact_zeros_for_ties_and_constant_grad_output():
    assert list(oracle.grad_softmax(np.array([0.0, 0.0, 1.0]))) == [0, 0, 0]
    out = oracle.grad_softmax(np.array([0.0, 0.0, 1.0]), grad_output=np.array([1.0, 3.0, 2.0]))
    assert out[2] == 0 and out[0] + out[1] == 0 and out[0] < 0
    assert list(oracle.grad_log_softmax(np.array([0.0, 3.0, 1.0]), grad_output=np.array([0.0, 3.0, -3.0]))) == [0, 3, -3]
    assert list(oracle.grad_log_softmax(np.array([2.0, 2.0]), grad_output=np.array([1.0, 3.0]))) == [-1, 1]


@pytest.mark.parametrize("x", [-700.0, -30.0, -1.0, 0.0, 2.5, 80.0])
def test_grad_sigmoid_family(x):
    s = lambda v: 1 / (1 + mpmath.exp(-v))  # noqa: E731
    for grad, f in [(oracle.grad_sigmoid, s), (oracle.grad_log_sigmoid, lambda v: mpmath.log(s(v))),
                    (oracle.grad_softplus, lambda v: mpmath.log1p(mpmath.exp(v)))]:
        agree(grad(np.array([x]), grad_output=np.array([-0.5])), [-0.5 * numeric_grad(lambda xs: f(xs[0]), [x])[0]],
              digits=45)


def test_grad_cross_entropy_dominant_logit_keeps_p_minus_1():
    # d/dx0 of CE([200, 0], class 0) = softmax_0 - 1 = -1/(1 + e^200): lost entirely by 1 - p at 60 digits
    with mpmath.workdps(HIGH):
        expected = [-1 / (1 + mpmath.exp(200)), 1 / (1 + mpmath.exp(200))]
    agree(oracle.grad_cross_entropy(np.array([[200.0, 0.0]]), np.array([0])), expected)


def test_grad_cross_entropy_matches_numerical_and_ignores_rows():
    logits, target = np.array([X, G]), np.array([2, 1])
    ce = lambda xs: -mpmath.log(msoftmax(xs)[2])  # noqa: E731
    out = oracle.grad_cross_entropy(logits, target, reduction="sum", grad_output=np.array(3.0))
    agree(out[0], [3 * v for v in numeric_grad(ce, X)], digits=50)
    ignored = oracle.grad_cross_entropy(logits, np.array([2, -100]), ignore_index=-100)
    agree(ignored[0], numeric_grad(ce, X), digits=50)
    assert list(ignored[1]) == [0] * 4


def test_grad_losses_elementwise():
    p, t = np.array([0.25, 1e-5, 0.9]), [mpmath.mpf(v) for v in (1.0, 0.0, 0.3)]  # 1 - t exact, unlike in floats
    t_floats = np.array(t, dtype=float)

    def bce(ps):
        return mpmath.fsum(-(tv * mpmath.log(pv) + (1 - tv) * mpmath.log(1 - pv)) for pv, tv in zip(ps, t)) / 3

    def bce_logits(xs):
        s = [1 / (1 + mpmath.exp(-v)) for v in xs]
        s_neg = [1 / (1 + mpmath.exp(v)) for v in xs]
        return mpmath.fsum(-(tv * mpmath.log(a) + (1 - tv) * mpmath.log(b)) for a, b, tv in zip(s, s_neg, t))

    agree(oracle.grad_binary_cross_entropy(p, t_floats), numeric_grad(bce, p), digits=45)
    x = np.array([-3.0, 0.5, 30.0])
    agree(oracle.grad_binary_cross_entropy_with_logits(x, t_floats, reduction="sum"), numeric_grad(bce_logits, x),
          digits=45)
    assert oracle.grad_binary_cross_entropy_with_logits(np.array([0.0]), np.array([0.5]), reduction="none")[0] == 0
    agree(oracle.grad_mse(np.array([1.0, 2.0]), np.array([0.0, 0.5])), [1.0, 1.5])


def test_grad_kl_div():
    p, q = np.array([0.2, 0.3, 0.5]), np.array([0.4, 0.4, 0.2])
    dp, dq = oracle.grad_kl_div(p[None], q[None], reduction="sum")
    kl = lambda ps, qs: mpmath.fsum(a * mpmath.log(a / b) for a, b in zip(ps, qs))  # noqa: E731
    agree(dp[0], numeric_grad(lambda ps: kl(ps, [mpmath.mpf(v) for v in q]), p), digits=45)
    agree(dq[0], numeric_grad(lambda qs: kl([mpmath.mpf(v) for v in p], qs), q), digits=45)
    lp, lq = np.log(p), np.log(q)
    dlp, dlq = oracle.grad_kl_div(lp, lq, log_input=True, reduction="none", grad_output=np.array(2.0))
    kll = lambda a, b: 2 * mpmath.fsum(mpmath.exp(u) * (u - v) for u, v in zip(a, b))  # noqa: E731
    agree(dlp, numeric_grad(lambda a: kll(a, [mpmath.mpf(v) for v in lq]), lp), digits=45)
    agree(dlq, numeric_grad(lambda b: kll([mpmath.mpf(v) for v in lp], b), lq), digits=45)


# ---------------------------------------------------------------- laws on hard families

@settings(max_examples=20)
@given(x=strategies.logits(dtype="float64"))
def test_softmax_rows_sum_to_one_and_agree_with_log_softmax(x):
    y, log_y = oracle.softmax(x), oracle.log_softmax(x)
    for row, y_row, log_row in zip(x, y, log_y):
        total = mpmath.fsum(y_row)
        if np.isneginf(row).all():
            assert total == 0 and all(v == -mpmath.inf for v in log_row)
            continue
        assert abs(total - 1) < mpmath.mpf(10) ** -55
        agree([mpmath.exp(v) for v in log_row], y_row, digits=50)
