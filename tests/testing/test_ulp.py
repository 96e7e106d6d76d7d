"""ulp_error and assert_ulp_close on hand-checkable cases: neighbours, binade edges, subnormals, zero, overflow, NaN."""
import mpmath
import numpy as np
import pytest
import torch

from nnstab.testing import ULP_BOUNDS, assert_ulp_close, dtype_name, ulp_error

NP_DTYPES = [np.float16, np.float32, np.float64]


@pytest.mark.parametrize("dtype", NP_DTYPES)
@pytest.mark.parametrize("value", [1.0, 3.0, 1e-3, 6.0e4, -2.5, 1.5e-5])
def test_neighbouring_floats_are_one_ulp_apart(dtype, value):
    v = dtype(value)
    up = np.nextafter(v, dtype(np.inf))
    assert ulp_error(up, mpmath.mpf(float(v)), dtype) == 1.0
    assert ulp_error(v, mpmath.mpf(float(v)), dtype) == 0.0


@pytest.mark.parametrize("dtype, p", [(np.float16, 11), (np.float32, 24), (np.float64, 53)])
def test_half_way_is_half_an_ulp(dtype, p):
    with mpmath.workdps(40):
        exact = 1 + mpmath.ldexp(1, -p)  # halfway between 1 and its successor
    assert ulp_error(dtype(1.0), exact, dtype) == 0.5


def test_ulp_is_that_of_the_exact_values_binade():
    # exact = 1: ulp(1) = 2**-23 in float32; the float just below 1 is 2**-24 away = 0.5 ULP
    below = np.nextafter(np.float32(1), np.float32(0))
    assert ulp_error(below, mpmath.mpf(1), np.float32) == 0.5
    # exact just below 1: ulp is 2**-24 there, so 1.0 is one ULP away
    assert ulp_error(np.float32(1), mpmath.mpf(float(below)), np.float32) == 1.0


def test_subnormal_spacing_below_the_smallest_normal():
    tiny32 = 2.0 ** -149
    assert ulp_error(np.float32(3 * tiny32), mpmath.mpf(2 * tiny32), np.float32) == 1.0
    # exact 2**-130 is subnormal in float32: its ulp is still 2**-149
    assert ulp_error(np.float32(2.0 ** -130 + tiny32), mpmath.ldexp(1, -130), np.float32) == 1.0
    # float64: the smallest subnormal against an exact zero, and half of it
    assert ulp_error(np.float64(5e-324), mpmath.mpf(0), np.float64) == 1.0
    assert ulp_error(np.float64(0.0), mpmath.ldexp(1, -1075), np.float64) == 0.5
    # float16: spacing 2**-24 below 2**-14
    assert ulp_error(np.float16(2.0 ** -24), mpmath.mpf(0), np.float16) == 1.0


def test_flushing_a_subnormal_result_to_zero_is_many_ulp():
    exact = mpmath.exp(-745)  # ~4.9e-324, a float64 subnormal
    assert ulp_error(np.float64(0.0), exact, np.float64) == pytest.approx(float(exact / mpmath.ldexp(1, -1074)))
    assert ulp_error(np.float64(0.0), mpmath.exp(-700), np.float64) > 1e10


def test_overflow_convention():
    half_past_max = mpmath.mpf(65504) + 16  # float16 max + half its ulp: rounds to inf (ties to even)
    assert ulp_error(np.float16(np.inf), half_past_max, np.float16) == 0.0
    assert ulp_error(np.float16(65504), half_past_max, np.float16) == np.inf
    with mpmath.workdps(40):
        just_below = half_past_max - mpmath.mpf("1e-10")
    assert ulp_error(np.float16(65504), just_below, np.float16) == pytest.approx(0.5, abs=1e-9)
    assert ulp_error(np.float16(np.inf), just_below, np.float16) == np.inf
    assert ulp_error(np.float16(-np.inf), -half_past_max, np.float16) == 0.0
    assert ulp_error(np.float16(np.inf), -half_past_max, np.float16) == np.inf


def test_infinities_and_nan():
    actual = np.array([np.inf, -np.inf, 1.0, np.nan, np.nan, 1.0])
    exact = [mpmath.inf, mpmath.inf, mpmath.inf, mpmath.nan, mpmath.mpf(1), mpmath.nan]
    np.testing.assert_array_equal(ulp_error(actual, exact, np.float64), [0, np.inf, np.inf, 0, np.inf, np.inf])


def test_bfloat16_through_torch():
    one = torch.tensor([1.0], dtype=torch.bfloat16)
    nxt = torch.nextafter(one, torch.tensor([2.0], dtype=torch.bfloat16))
    assert float(nxt) == 1.0078125  # 8 significand bits
    assert ulp_error(nxt, mpmath.mpf(1), torch.bfloat16)[0] == 1.0
    assert ulp_error(one, mpmath.mpf(1.00390625), "bfloat16")[0] == 0.5  # 1 + 2**-8
    # bfloat16 has float32's exponent range: subnormal spacing 2**-133
    assert ulp_error(torch.tensor([2.0 ** -133], dtype=torch.bfloat16), mpmath.mpf(0), torch.bfloat16)[0] == 1.0


def test_shapes_and_float_exact_values():
    err = ulp_error(np.zeros((2, 3), np.float32), np.full((2, 3), 2.0 ** -149), np.float32)
    assert err.shape == (2, 3) and err.dtype == np.float64 and (err == 1).all()


def test_dtype_names():
    assert [dtype_name(d) for d in (np.float16, np.dtype("float32"), "float64", torch.bfloat16, torch.float16)] == \
        ["float16", "float32", "float64", "bfloat16", "float16"]
    with pytest.raises(ValueError, match="dtype must be one of"):
        dtype_name(np.int32)
    assert ULP_BOUNDS == {"float16": 1, "bfloat16": 1, "float32": 1, "float64": 4}


def test_assert_ulp_close_passes_within_bound_and_names_the_worst_element():
    exact = [mpmath.mpf(1), mpmath.mpf(2)]
    assert_ulp_close(np.array([1.0, 2.0 + 2 * 2.0 ** -51]), exact, np.float64)  # 2 ULP <= 4
    with pytest.raises(AssertionError) as info:
        assert_ulp_close(np.array([1.0, 2.0 + 8 * 2.0 ** -51]), exact, np.float64,
                         inputs={"x": np.array([0.5, 0.25])})
    message = str(info.value)
    assert "1 of 2 element(s) exceed 4 ULP in float64" in message
    assert "worst 8 ULP at index (1,)" in message and "x = 0.25" in message
    with pytest.raises(AssertionError, match="exceed 1 ULP in float32"):
        assert_ulp_close(np.float32(1.0) + np.float32(2 ** -22), mpmath.mpf(1), np.float32)
