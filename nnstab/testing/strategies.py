"""Hypothesis strategies for hard numeric inputs, built on the deterministic generators of `families`.

    @given(x=logits(dtype="float32", family="dominant"))
    def test_log_softmax_within_one_ulp(x): ...

Arrays are NumPy (bfloat16: float32 storage of bfloat16 values; convert with families.to_torch),
2-d (rows, cols) with small shapes by default; functions reduce along the last axis. A family draw
is a seed for its generator, so a failing example shrinks to a small shape and a reproducible seed.
"""
from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from nnstab.testing import families
from nnstab.testing.ulp import dtype_name

# Families cheap enough for property tests (long_rows has 100,000 entries per row; ask for it explicitly).
DEFAULT_LOGIT_FAMILIES = tuple(f for f in families.LOGIT_FAMILIES if f != "long_rows")
_WIDTH = {"float16": 16, "bfloat16": 32, "float32": 32, "float64": 64}


def finite_floats(dtype="float64", *, min_value=None, max_value=None, allow_subnormal=True):
    """Any finite float of dtype (subnormals included); bfloat16 values come as Python floats."""
    name = dtype_name(dtype)
    base = st.floats(min_value=min_value, max_value=max_value, allow_nan=False, allow_infinity=False,
                     allow_subnormal=allow_subnormal, width=_WIDTH[name])
    if name != "bfloat16":
        return base
    rounded = base.map(lambda v: float(families.round_to([v], "bfloat16")[0]))
    return rounded.filter(lambda v: np.isfinite(v) and (min_value is None or v >= min_value)
                          and (max_value is None or v <= max_value))


@st.composite
def logits(draw, dtype="float64", family=None, rows=(1, 4), cols=(1, 8)):
    """A (rows, cols) logits array of a hard family (any of DEFAULT_LOGIT_FAMILIES when family is None).

    family may be a name or a sequence of names; rows/cols are (min, max) ranges (cols is ignored
    by "long_rows", whose rows hold 100,000 entries).
    """
    names = DEFAULT_LOGIT_FAMILIES if family is None else ((family,) if isinstance(family, str) else tuple(family))
    name = draw(st.sampled_from(names))
    seed = draw(st.integers(0, 2**32 - 1))
    n_rows = draw(st.integers(*rows))
    n_cols = None if name == "long_rows" else draw(st.integers(*cols))
    return families.family_arrays(name, dtype, seed, rows=n_rows, cols=n_cols)


@st.composite
def probabilities(draw, dtype="float64", shape=None, edges=True):
    """An array of probabilities in [0, 1]; with edges, many are exactly 0 or 1, subnormal, or an ulp from 0 or 1."""
    shape = draw(_small_shape()) if shape is None else shape
    seed = draw(st.integers(0, 2**32 - 1))
    probs, _ = families.bce_arrays(dtype, seed, shape)
    if not edges:
        probs = families.round_to(np.random.default_rng(seed).uniform(size=shape), dtype)
    return probs


@st.composite
def soft_labels(draw, dtype="float64", rows=(1, 4), cols=(1, 8)):
    """Probability rows (along the last axis) with zeros, summing to 1 up to a few ulp of dtype."""
    seed = draw(st.integers(0, 2**32 - 1))
    return families.family_arrays("soft_labels_with_zeros", dtype, seed,
                                  rows=draw(st.integers(*rows)), cols=draw(st.integers(*cols)))


def _small_shape():
    return st.tuples(st.integers(1, 4), st.integers(1, 8))
