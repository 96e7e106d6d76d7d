"""limits: underflow/overflow shares of value samples, one sample at a time and many at once."""
import numpy as np
import pytest

from nnstab.watch.limits import FORMATS, shares, shares_many


def direct_shares(sample, dtype):
    """The shares counted by comparisons, one edge at a time (the definition, no binary search)."""
    a = np.abs(np.asarray(sample, dtype=np.float64))
    n, zero = a.size, int(np.count_nonzero(a == 0))
    nonzero = n - zero
    big, tiny, _ = FORMATS[dtype]
    out = {"dtype_underflow_frac": np.count_nonzero((a > 0) & (a < tiny)) / nonzero if nonzero else 0.0,
           "dtype_overflow_frac": np.count_nonzero(~(a <= big)) / n}
    if dtype in ("float32", "float64"):
        out["fp16_underflow_frac"] = np.count_nonzero((a > 0) & (a <= 2.0 ** -25)) / nonzero if nonzero else 0.0
        out["bf16_underflow_frac"] = np.count_nonzero((a > 0) & (a <= 2.0 ** -134)) / nonzero if nonzero else 0.0
        out["fp16_overflow_frac"] = np.count_nonzero((a > 65504.0) & (a <= big)) / n
        out["bf16_overflow_frac"] = np.count_nonzero((a > FORMATS["bfloat16"][0]) & (a <= big)) / n
    return out


def samples_of(dtype, rng):
    t = getattr(np, dtype)
    return [
        (rng.standard_normal(1000) * 10.0 ** rng.integers(-45, 40, 1000)).astype(t),   # every magnitude
        np.array([0.0, -0.0, 1e-45, -1e-40, 3e38, -np.inf, np.nan, 7e4, 1e-8, 2.0 ** -25], dtype=t),
        np.zeros(17, dtype=t),                                                       # no non-zero values
        np.array([], dtype=t),                                                       # nothing sampled
    ]


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16"])
def test_shares_count_every_edge_as_defined(dtype):
    rng = np.random.default_rng(0)
    with np.errstate(over="ignore", invalid="ignore"):
        for sample in samples_of(dtype, rng):
            got = shares(sample, dtype)
            assert got == (direct_shares(sample, dtype) if sample.size else {})


def test_many_samples_at_once_count_as_each_alone():
    rng = np.random.default_rng(1)
    with np.errstate(over="ignore", invalid="ignore"):
        mixed = [(s, d) for d in ("float32", "float64", "float16") for s in samples_of(d, rng)]
        mixed.append((rng.standard_normal(5).astype(np.float32), "bfloat16"))   # a dtype seen once
        got = shares_many(mixed)
        assert len(got) == len(mixed)
        for (sample, dtype), one in zip(mixed, got):
            assert one == shares(sample, dtype)
