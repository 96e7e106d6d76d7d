"""Error-free transformations and the exact fallback: each claim checked with exact rational or mpmath arithmetic."""
from fractions import Fraction

import math

import mpmath
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nnstab.numerics import _exact

finite = st.floats(allow_nan=False, allow_infinity=False, width=64, min_value=-1e300, max_value=1e300)
positive = st.floats(min_value=2.0 ** -900, max_value=1.0, allow_nan=False, width=64)


def exact(*values):
    return [Fraction(v) for v in values]


@given(st.lists(st.tuples(finite, finite), min_size=1, max_size=20))
def test_two_sum_is_exact(pairs):
    a, b = (np.array(v) for v in zip(*pairs))
    s, e = _exact.two_sum(a, b)
    for ai, bi, si, ei in zip(a, b, s, e):
        assert Fraction(si) + Fraction(ei) == Fraction(ai) + Fraction(bi)
        assert si == ai + bi  # s is the rounded sum itself


@given(st.lists(st.tuples(finite, finite), min_size=1, max_size=20))
def test_two_sum_agrees_for_numpy_and_torch(pairs):
    a, b = (np.array(v) for v in zip(*pairs))
    s, e = _exact.two_sum(a, b)
    ts, te = _exact.two_sum(torch.from_numpy(a), torch.from_numpy(b))
    assert np.array_equal(s, ts.numpy()) and np.array_equal(e, te.numpy())


@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_two_sum_of_infinities_has_zero_error_instead_of_nan(kind):
    a = np.array([np.inf, -np.inf, np.inf, 1e308, np.nan])
    b = np.array([-np.inf, 1.0, np.inf, 1e308, 1.0])
    if kind == "torch":
        a, b = torch.from_numpy(a), torch.from_numpy(b)
    s, e = _exact.two_sum(a, b)
    s, e = np.asarray(s), np.asarray(e)
    assert np.isnan(s[0]) and s[1] == -np.inf and s[2] == np.inf and s[3] == np.inf and np.isnan(s[4])
    assert (e == 0).all()  # never NaN from inf - inf inside the recipe


@given(finite, finite)
def test_two_diff_is_exact(a, b):
    d, e = _exact.two_diff(np.array([a]), np.array([b]))
    assert Fraction(d[0]) + Fraction(e[0]) == Fraction(a) - Fraction(b)


@given(st.floats(min_value=-2.0 ** 400, max_value=2.0 ** 400, allow_nan=False, width=64),
       st.floats(min_value=-2.0 ** 400, max_value=2.0 ** 400, allow_nan=False, width=64))
def test_two_prod_is_exact_away_from_underflow(a, b):
    if a != 0 and b != 0 and abs(a * b) < 2.0 ** -900:
        return  # below the documented range the error term is itself subnormal
    p, e = _exact.two_prod(np.array([a]), np.array([b]))
    assert Fraction(p[0]) + Fraction(e[0]) == Fraction(a) * Fraction(b)


@given(st.lists(st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, width=64), min_size=1, max_size=300))
def test_sum2_is_as_accurate_as_twice_the_precision(values):
    x = np.array(values)
    got = _exact.sum2(x)
    true = sum(map(Fraction, values), Fraction(0))
    bound = Fraction(2.0 ** -53) * abs(true) + Fraction((math.log2(len(values) + 1) * 2.0 ** -52) ** 2) * \
        sum(abs(Fraction(v)) for v in values)
    assert abs(Fraction(float(got)) - true) <= bound


def test_sum2_recovers_a_sum_that_plain_summation_loses():
    x = np.array([1.0, 1e-17, -1.0, 3e-18] * 7 + [2.0 ** -60])
    true = sum(map(Fraction, x), Fraction(0))
    assert float(_exact.sum2(x)) == float(true)
    assert float(x.sum()) != float(true)


@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_sum2_along_an_axis_with_keepdims(kind):
    x = np.array([[1.0, 1e-20, -1.0], [3.0, 4.0, 5.0]])
    if kind == "torch":
        x = torch.from_numpy(x)
    total = _exact.sum2(x, axis=1, keepdims=True)
    assert tuple(total.shape) == (2, 1)
    assert np.asarray(total).ravel().tolist() == [1e-20, 12.0]


@given(st.lists(positive, min_size=1, max_size=30))
@settings(max_examples=30)
def test_log_dd_error_is_below_2_to_the_minus_57(values):
    r = np.array(values)
    hi, lo = _exact.log_dd(r)
    with mpmath.workprec(200):
        for v, h, l in zip(values, hi, lo):
            assert abs(mpmath.mpf(h) + mpmath.mpf(l) - mpmath.log(v)) <= mpmath.mpf(2) ** -57 * max(1, abs(mpmath.log(v)))


@given(st.lists(st.tuples(positive, st.floats(min_value=-40, max_value=40)), min_size=1, max_size=30))
@settings(max_examples=30)
def test_log_ratio_dd_keeps_the_digits_a_rounded_ratio_loses(pairs):
    p = np.array([a for a, _ in pairs])
    q = np.clip(p * np.exp2(np.array([k for _, k in pairs])), 2.0 ** -890, 1.0)
    for kind in ("numpy", "torch"):
        args = (p, q) if kind == "numpy" else (torch.from_numpy(p), torch.from_numpy(q))
        hi, lo = (np.asarray(v) for v in _exact.log_ratio_dd(*args))
        with mpmath.workprec(200):
            for a, b, h, l in zip(p, q, hi, lo):
                true = mpmath.log(mpmath.mpf(a) / mpmath.mpf(b))
                assert abs(mpmath.mpf(h) + mpmath.mpf(l) - true) <= mpmath.mpf(2) ** -55 * max(1, abs(true))


def test_adaptive_mp_raises_precision_until_the_cancellation_is_covered():
    calls = []

    def compute():  # (1 + 2**-200) - 1 cancels 200 bits
        calls.append(mpmath.mp.prec)
        big = mpmath.mpf(1) + mpmath.mpf(2) ** -200
        return big - 1, mpmath.mpf(1)

    value = _exact.adaptive_mp(compute, target_bits=53)
    assert value == mpmath.mpf(2) ** -200
    assert calls[0] < 200 < calls[-1]


def test_adaptive_mp_stops_at_the_precision_limit_for_an_unconfirmable_zero():
    value = _exact.adaptive_mp(lambda: (mpmath.mpf(0), mpmath.mpf(1)), target_bits=53)
    assert value == 0


@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_rows_are_flattened_flagged_and_put_back(kind):
    x = np.arange(24.0).reshape(2, 3, 4)
    if kind == "torch":
        x = torch.from_numpy(x)
    rows, outer = _exact.flatten_rows(x, 1)
    assert outer == (2, 4) and tuple(rows.shape) == (8, 3)
    assert np.asarray(rows)[5].tolist() == [13.0, 17.0, 21.0]  # x[1, :, 1]
    mask = np.zeros(8, bool)
    mask[[1, 6]] = True
    picked = _exact.flagged(torch.from_numpy(mask) if kind == "torch" else mask)
    assert picked.tolist() == [1, 6]
    assert _exact.rows_to_numpy(rows, picked).tolist() == [[1.0, 5.0, 9.0], [14.0, 18.0, 22.0]]
    target = rows.clone() if kind == "torch" else rows.copy()
    _exact.put_rows(target, picked, np.zeros((2, 3)))
    assert np.asarray(target)[[1, 6]].tolist() == [[0.0] * 3] * 2


def test_longdouble_is_used_only_where_it_has_extra_bits():
    assert (_exact.LONGDOUBLE is not None) == (_exact.LONGDOUBLE_BITS >= 64)
