"""Hard inputs for the numeric functions: deterministic NumPy generators, one per family, in each dtype.

    rng = np.random.default_rng(0)
    x = family_arrays("dominant", "float32", rng)            # logits, shape (rows, cols)
    t = family_arrays("soft_labels_with_zeros", "float32", rng)   # probability rows with zeros
    p, y = bce_arrays("float64", rng)                          # probabilities at/near 0 and 1, targets

Each family is scaled to the dtype's own range: "huge" reaches the dtype's max, "exp_edges" sits at
log(max), log(tiny) and log(smallest subnormal) of that dtype, "wide_spread" spans more than
2 log(max) (beyond 700 in float64), "offset" is a common offset (1e6 in float32/float64, smaller
where the dtype's spacing would erase the differences). bfloat16 arrays are float32 arrays holding
values exactly representable in bfloat16 (NumPy has no bfloat16); `to_torch` converts them exactly.
Every value is rounded once into the dtype, so the oracle sees exactly what the function sees.
"""
from __future__ import annotations

import math

import numpy as np

from nnstab.testing.ulp import FORMATS, dtype_name

LOGIT_FAMILIES = ("huge", "tiny", "subnormal", "dominant", "wide_spread", "offset", "ties", "long_rows",
                  "masked", "all_masked", "exp_edges", "random")
FAMILIES = LOGIT_FAMILIES + ("soft_labels_with_zeros",)
DTYPES = ("float16", "bfloat16", "float32", "float64")

LONG_ROW = 100_000  # entries in a "long_rows" row: where a naive float sum drifts
DEFAULT_COLS = 16

# A common offset per dtype: as large as keeps row differences visible (spacing <= 1/2 at the offset)
OFFSET = {"float64": 1e6, "float32": 1e6, "bfloat16": 100.0, "float16": 1000.0}


def storage_dtype(dtype) -> np.dtype:
    """The NumPy dtype holding values of `dtype` (float32 for bfloat16)."""
    name = dtype_name(dtype)
    return np.dtype(np.float32 if name == "bfloat16" else name)


def round_to(values, dtype) -> np.ndarray:
    """values (float64) rounded once, to nearest, into dtype (bfloat16: round-to-nearest-even on float32 bits)."""
    name = dtype_name(dtype)
    values = np.asarray(values, dtype=np.float64)
    if name != "bfloat16":
        with np.errstate(over="ignore"):
            return values.astype(name)
    # float64 -> float32 -> bfloat16 would round twice; round the float64 significand to 8 bits directly.
    with np.errstate(over="ignore", invalid="ignore"):
        exp = np.maximum(np.frexp(values)[1], -125)  # |v| < 2**exp; subnormals keep the spacing 2**-133
        rounded = np.ldexp(np.round(np.ldexp(values, 8 - exp)), exp - 8)  # 8 significant bits, ties to even
        big = np.abs(rounded) >= 2.0 ** 128
        rounded = np.where(big, np.copysign(np.inf, values), rounded)
        rounded = np.where(np.isfinite(values), rounded, values)
    return rounded.astype(np.float32)


def to_torch(array, dtype):
    """A torch tensor of `dtype` holding exactly the values of `array` (from `family_arrays` & co)."""
    import torch

    return torch.from_numpy(np.asarray(array, dtype=np.float64)).to(getattr(torch, dtype_name(dtype)))


def limits(dtype) -> dict:
    """max, tiny (smallest normal), smallest subnormal, eps, and the exp edges log(max), log(tiny), log(subnormal)."""
    f = FORMATS[dtype_name(dtype)]
    big = (2 - 2.0 ** (1 - f.precision)) * 2.0 ** f.emax
    tiny, sub = 2.0 ** f.emin, 2.0 ** (f.emin - f.precision + 1)
    return {"max": big, "tiny": tiny, "subnormal": sub, "eps": 2.0 ** (1 - f.precision),
            "log_max": math.log(big), "log_tiny": math.log(tiny), "log_subnormal": math.log(sub)}


def _signs(rng, shape):
    return rng.choice([-1.0, 1.0], size=shape)


def _log_uniform(rng, lo, hi, shape):
    return np.exp(rng.uniform(math.log(lo), math.log(hi), size=shape))


def _huge(rng, lim, shape):
    x = _signs(rng, shape) * _log_uniform(rng, lim["max"] ** 0.5, lim["max"], shape)
    x.flat[::5] = lim["max"] * _signs(rng, x.flat[::5].shape)  # the extremes themselves
    return x


def _tiny(rng, lim, shape):
    x = _signs(rng, shape) * _log_uniform(rng, lim["tiny"], lim["tiny"] ** 0.5, shape)
    x.flat[::7] = lim["tiny"]
    return x


def _subnormal(rng, lim, shape):
    steps = rng.integers(0, round(lim["tiny"] / lim["subnormal"]), size=shape)
    x = _signs(rng, shape) * steps * lim["subnormal"]
    x.flat[::6] = lim["subnormal"]
    return x


def _dominant(rng, lim, shape):
    x = rng.standard_normal(shape)
    gap = _log_uniform(rng, 2.0, 2 * lim["log_max"], shape[:-1])
    x[np.arange(shape[0]), rng.integers(0, shape[1], shape[0])] = x.max(axis=1) + gap
    return x


def _wide_spread(rng, lim, shape):
    half = lim["log_max"] * rng.uniform(1.0, 1.5, size=(shape[0], 1))  # range 2-3 log(max): > 1400 in float64
    x = rng.uniform(-1.0, 1.0, size=shape) * half
    x[:, 0], x[:, -1] = half[:, 0], -half[:, 0]
    return x


def _offset(rng, lim, shape, dtype):
    sign = _signs(rng, (shape[0], 1))
    return sign * OFFSET[dtype] + rng.standard_normal(shape) * 3


def _ties(rng, lim, shape):
    levels = rng.standard_normal((shape[0], 3)) * 4
    x = np.take_along_axis(levels, rng.integers(0, 3, size=shape), axis=1)
    x[0] = levels[0, 0]  # one row entirely tied
    return x


def _long_rows(rng, lim, shape):
    x = rng.standard_normal(shape) * rng.uniform(1.0, 10.0, size=(shape[0], 1))
    x[:, rng.integers(0, shape[1])] += 20.0
    return x


def _masked(rng, lim, shape):
    x = rng.standard_normal(shape) * 3
    mask = rng.uniform(size=shape) < rng.uniform(0.3, 0.9, size=(shape[0], 1))
    rows, keep = np.arange(shape[0]), rng.integers(0, shape[1], shape[0])
    mask[rows, (keep + 1) % shape[1]] = True  # at least one masked entry (when a row has two)
    mask[rows, keep] = False  # and at least one kept
    return np.where(mask, -np.inf, x)


def _all_masked(rng, lim, shape):
    return np.full(shape, -np.inf)


def _exp_edges(rng, lim, shape):
    centres = np.array([lim["log_max"], lim["log_tiny"], lim["log_subnormal"]])
    centres = np.concatenate([centres, -centres])
    x = rng.choice(centres, size=shape)
    return x * (1 + rng.integers(-4, 5, size=shape) * lim["eps"]) + rng.choice([0.0, 0.5, -0.5, 1.0], size=shape)


def _random(rng, lim, shape):
    return rng.standard_normal(shape) * 3


def _soft_labels(rng, lim, shape):
    p = rng.dirichlet(np.ones(shape[1]), size=shape[0])
    p[rng.uniform(size=shape) < 0.4] = 0.0
    empty = p.sum(axis=1) == 0
    p[empty, 0] = 1.0
    return p / p.sum(axis=1, keepdims=True)


_GENERATORS = {
    "huge": _huge, "tiny": _tiny, "subnormal": _subnormal, "dominant": _dominant,
    "wide_spread": _wide_spread, "ties": _ties, "long_rows": _long_rows, "masked": _masked,
    "all_masked": _all_masked, "exp_edges": _exp_edges, "random": _random, "soft_labels_with_zeros": _soft_labels,
}


def family_arrays(name: str, dtype, rng, rows: int = 4, cols: int | None = None) -> np.ndarray:
    """A (rows, cols) array of the family `name` in `dtype` (bfloat16: float32 storage); rng: Generator or seed.

    cols defaults to 16, and to 100,000 for "long_rows". Logit families are meant for every function
    (row functions reduce along the last axis; elementwise functions take the values as they are);
    "soft_labels_with_zeros" gives probability rows (about 40% zeros) summing to 1 up to rounding.
    """
    if name not in FAMILIES:
        raise ValueError(f"unknown family {name!r}; expected one of {', '.join(FAMILIES)}")
    dtype = dtype_name(dtype)
    rng = np.random.default_rng(rng)
    cols = (LONG_ROW if name == "long_rows" else DEFAULT_COLS) if cols is None else cols
    if rows < 1 or cols < 1:
        raise ValueError(f"rows and cols must be >= 1, got rows={rows}, cols={cols}")
    lim, shape = limits(dtype), (rows, cols)
    if name == "offset":
        values = _offset(rng, lim, shape, dtype)
    else:
        values = _GENERATORS[name](rng, lim, shape)
    return round_to(values, dtype)  # soft labels then sum to 1 within a few ulp of the dtype


def bce_arrays(dtype, rng, shape=(4, 16)):
    """(probs, target) for binary cross-entropy: probabilities exactly 0 and 1, subnormal, within an ulp
    of 0 and 1, and uniform; targets 0, 1 and soft values in [0, 1]."""
    dtype = dtype_name(dtype)
    rng = np.random.default_rng(rng)
    lim = limits(dtype)
    below_one = 1 - lim["eps"] / 2
    edges = np.array([0.0, 1.0, lim["subnormal"], lim["tiny"], lim["eps"], below_one, 1 - lim["eps"], 0.5])
    p = np.where(rng.uniform(size=shape) < 0.6, rng.choice(edges, size=shape), rng.uniform(size=shape))
    t = np.where(rng.uniform(size=shape) < 0.7, rng.integers(0, 2, size=shape).astype(float), rng.uniform(size=shape))
    return round_to(p, dtype), round_to(t, dtype)


def binary_targets(dtype, rng, shape=(4, 16)):
    """Targets for the *_with_logits loss: mostly 0 and 1, some soft values in [0, 1]."""
    rng = np.random.default_rng(rng)
    t = np.where(rng.uniform(size=shape) < 0.7, rng.integers(0, 2, size=shape).astype(float), rng.uniform(size=shape))
    return round_to(t, dtype)


def class_targets(rng, rows: int, n_classes: int) -> np.ndarray:
    """Class indices in [0, n_classes) (int64)."""
    return np.random.default_rng(rng).integers(0, n_classes, size=rows)
