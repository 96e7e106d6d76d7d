"""Each hard-input family has the property it is named for, in every dtype, reproducibly; strategies wrap them."""
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings

from nnstab.testing import families, strategies
from nnstab.testing.families import DTYPES, FAMILIES, family_arrays, limits, round_to


def make(name, dtype, seed=0, **kw):
    kw.setdefault("rows", 6)
    if name == "long_rows":
        kw.setdefault("cols", None)
    return family_arrays(name, dtype, np.random.default_rng(seed), **kw).astype(np.float64)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", [f for f in FAMILIES if f != "long_rows"])
def test_reproducible_and_exactly_representable(name, dtype):
    a, b = make(name, dtype, seed=3), make(name, dtype, seed=3)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, make(name, dtype, seed=4)) or name == "all_masked"
    stored = family_arrays(name, dtype, 3, rows=6)
    assert stored.dtype == families.storage_dtype(dtype)
    np.testing.assert_array_equal(round_to(stored.astype(np.float64), dtype), stored)  # already in the dtype
    np.testing.assert_array_equal(families.to_torch(stored, dtype).double().numpy(), a)  # exact in torch too


@pytest.mark.parametrize("dtype", DTYPES)
def test_magnitude_families_reach_their_range(dtype):
    lim = limits(dtype)
    assert np.abs(make("huge", dtype)).max() == lim["max"]
    tiny = np.abs(make("tiny", dtype))
    assert tiny.min() == lim["tiny"] and tiny.max() < 1e-2
    sub = np.abs(make("subnormal", dtype))
    assert sub.max() < lim["tiny"] and sub.min() <= lim["subnormal"] and (sub > 0).any()


@pytest.mark.parametrize("dtype", DTYPES)
def test_row_families(dtype):
    lim = limits(dtype)
    d = np.sort(make("dominant", dtype), axis=1)
    assert (d[:, -1] - d[:, -2] >= 1.5).all()  # one logit ahead by a gap of 2 to 2 log(max)
    w = make("wide_spread", dtype)
    assert (w.max(axis=1) - w.min(axis=1) >= 2 * lim["log_max"] * 0.99).all()
    if dtype == "float64":
        assert (w.max(axis=1) - w.min(axis=1) > 1400).all()
    off = make("offset", dtype)
    assert np.allclose(np.abs(off.mean(axis=1)), families.OFFSET[dtype], atol=4)  # offset + N(0, 3) noise
    assert (off.max(axis=1) > off.min(axis=1)).all()  # the differences survive rounding
    ties = make("ties", dtype)
    assert (ties[0] == ties[0, 0]).all() and all(len(set(r)) <= 3 for r in ties)
    masked = make("masked", dtype)
    assert (np.isneginf(masked).any(axis=1) & np.isfinite(masked).any(axis=1)).all()
    assert np.isneginf(make("all_masked", dtype)).all()
    edges = make("exp_edges", dtype)
    centres = np.abs([lim["log_max"], lim["log_tiny"], lim["log_subnormal"]])
    dist = np.abs(np.abs(edges)[..., None] - centres).min(axis=-1)
    assert (dist <= 1.0 + 5 * lim["eps"] * np.abs(edges)).all()  # within 4 ulp and 1 of an edge


def test_exp_edges_straddle_float64_overflow():
    e = make("exp_edges", "float64", rows=20)
    assert (e > math.log(np.finfo(np.float64).max)).any() and (e < math.log(np.finfo(np.float64).max)).any()


def test_long_rows_are_long():
    x = family_arrays("long_rows", "float32", 0, rows=2)
    assert x.shape == (2, 100_000) and np.isfinite(x).all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_soft_labels_have_zeros_and_sum_to_one(dtype):
    t = make("soft_labels_with_zeros", dtype, rows=20)
    assert (t >= 0).all() and (t == 0).any()
    assert np.allclose(t.sum(axis=1), 1, atol=t.shape[1] * limits(dtype)["eps"])


def test_bce_arrays_hit_both_ends():
    p, t = families.bce_arrays("float32", 0, (8, 16))
    assert ((p >= 0) & (p <= 1)).all() and (p == 0).any() and (p == 1).any()
    assert ((p > 0) & (p < 1e-30)).any() and ((p < 1) & (p > 1 - 1e-7)).any()
    assert set(np.unique(t)) >= {0.0, 1.0} and ((t > 0) & (t < 1)).any()


def test_bfloat16_rounding_matches_torch_from_float32():
    x = np.random.default_rng(0).standard_normal(20_000).astype(np.float32) * np.float32(1e3)
    x[:3] = [3.3895e38, 1e-39, 2.0 ** -133 * 1.5]
    expected = torch.from_numpy(x).to(torch.bfloat16).float().numpy()
    np.testing.assert_array_equal(round_to(x.astype(np.float64), "bfloat16"), expected)


def test_unknown_family_names_the_choices():
    with pytest.raises(ValueError, match="unknown family 'huuge'.*dominant"):
        family_arrays("huuge", "float32", 0)


@settings(max_examples=25)
@given(x=strategies.logits(dtype="float16"), t=strategies.soft_labels(dtype="bfloat16"),
       p=strategies.probabilities(dtype="float32"), v=strategies.finite_floats("bfloat16"))
def test_strategies_draw_small_arrays_in_their_dtype(x, t, p, v):
    assert x.dtype == np.float16 and x.ndim == 2 and x.shape[0] <= 4 and x.shape[1] <= 8
    assert t.dtype == np.float32 and (t >= 0).all()
    assert ((p >= 0) & (p <= 1)).all()
    assert math.isfinite(v) and float(round_to([v], "bfloat16")[0]) == v


@settings(max_examples=10)
@given(x=strategies.logits(dtype="float64", family=["dominant", "masked"], rows=(2, 2), cols=(3, 5)))
def test_logits_strategy_respects_family_and_shape(x):
    assert x.shape[0] == 2 and 3 <= x.shape[1] <= 5
    top2 = np.sort(x, axis=1)[:, -2:]
    assert np.isneginf(x).any(axis=1).all() or (top2[:, 1] - top2[:, 0] >= 1.5).all()
