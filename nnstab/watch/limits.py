"""Float formats' limits, and the underflow/overflow shares of a tensor measured against them.

Shares are estimated on the host from a fixed subsample of the tensor's values (tape.SAMPLE_SIZE):
counting by magnitude on the device costs several passes, a strided sample costs one small copy.
"""
from __future__ import annotations

import numpy as np

# name -> (largest finite, smallest normal, smallest subnormal)
FORMATS = {
    "float16": (65504.0, 2.0 ** -14, 2.0 ** -24),
    "bfloat16": (3.3895313892515355e38, 2.0 ** -126, 2.0 ** -133),
    "float32": (3.4028234663852886e38, 2.0 ** -126, 2.0 ** -149),
    "float64": (1.7976931348623157e308, 2.0 ** -1022, 5e-324),
}
FP16_MAX = FORMATS["float16"][0]
BF16_MAX = FORMATS["bfloat16"][0]
# Round-to-nearest sends |x| <= half the smallest subnormal to zero.
FP16_FLUSH = FORMATS["float16"][2] / 2
BF16_FLUSH = FORMATS["bfloat16"][2] / 2


def dtype_name(dtype) -> str:
    """'float32' for torch.float32, np.float32, np.dtype('float32') or 'float32'."""
    name = str(dtype)
    return name[6:] if name.startswith("torch.") else name


def limits(dtype) -> tuple[float, float, float]:
    """(largest finite, smallest normal, smallest subnormal) of a float dtype."""
    return FORMATS[dtype_name(dtype)]


def is_wide(dtype) -> bool:
    """float32 and float64: formats for which float16/bfloat16 risks are reported."""
    return dtype_name(dtype) in ("float32", "float64")


def shares(sample, dtype) -> dict[str, float]:
    """Underflow and overflow shares of a tensor, from a sample of its values (a NumPy array).

    Underflow shares are out of the non-zero values (a ReLU's zeros are not underflow), overflow
    shares out of all values:
      dtype_underflow_frac   subnormal in the tensor's own dtype (0 < |x| < smallest normal)
      dtype_overflow_frac    +-inf (and NaN)
      fp16_underflow_frac, bf16_underflow_frac   would round to zero in float16 / bfloat16
      fp16_overflow_frac, bf16_overflow_frac     would overflow there
    (the float16/bfloat16 shares only for float32/float64 tensors). Counted as shares_many counts.
    """
    return shares_many([(sample, dtype)])[0]


def _fractions(c, n) -> dict[str, float]:
    """The shares from the counts c = {edge name: how many |x| <= edge} of n values."""
    zero = c["zero"]
    nonzero = n - zero

    def frac(k, d):
        return k / d if d else 0.0

    out = {"dtype_underflow_frac": frac(c["subnormal"] - zero, nonzero), "dtype_overflow_frac": frac(n - c["own_max"], n)}
    if "fp16_max" in c:
        out["fp16_underflow_frac"] = frac(c["fp16_flush"] - zero, nonzero)
        out["bf16_underflow_frac"] = frac(c["bf16_flush"] - zero, nonzero)
        out["fp16_overflow_frac"] = frac(c["own_max"] - c["fp16_max"], n)
        out["bf16_overflow_frac"] = frac(c["own_max"] - c["bf16_max"], n)
    return out


def shares_many(samples) -> list[dict[str, float]]:
    """`shares` of many samples [(sample, dtype)], counted over all their values at once, per dtype.

    Same counts as one `shares` call per sample. One comparison with each edge over the concatenated
    values, summed per sample by one `reduceat`: a few edges over a few thousand values cost less than a
    binary search per value (np.searchsorted, ~12 ns each). Edges above every value are not compared
    (everything is below them): the overflow edges, on a healthy step. NaN is below no edge, so it
    counts with the overflow, as +-inf does."""
    out = [None] * len(samples)
    by_dtype = {}
    for k, (sample, dtype) in enumerate(samples):
        if np.size(sample):
            by_dtype.setdefault(dtype_name(dtype), []).append(k)
        else:
            out[k] = {}
    for name, ks in by_dtype.items():
        names, values = _edges_of(name)
        parts = [np.asarray(samples[k][0]).reshape(-1) for k in ks]
        sizes = np.array([p.size for p in parts])
        starts = np.concatenate(([0], np.cumsum(sizes)[:-1]))
        a = np.abs(np.concatenate(parts).astype(np.float64, copy=False))   # float64: the edges are exact there
        top = a.max()
        below = []                             # per edge: how many |x| <= edge, per sample
        for edge in values.tolist():
            if edge >= top:                    # (False when a value is NaN: then every edge is compared)
                below.append(sizes)
            else:
                below.append(np.add.reduceat((a <= edge).view(np.uint8), starts, dtype=np.int64))
        rows = np.stack(below, axis=1).tolist()
        for k, n, row in zip(ks, sizes.tolist(), rows):
            out[k] = _fractions(dict(zip(names, row)), n)
    return out


def _edges_of(name):
    edges = _EDGES.get(name)
    if edges is None:
        edges = _EDGES[name] = _edges(name)
    return edges


_EDGES = {}


def _edges(name):
    """(edge names, their values in increasing order) for a dtype; counting |x| <= edge.

    subnormal is the largest value below the smallest normal; the float16/bfloat16 edges only for
    float32/float64 tensors."""
    big, tiny, _ = FORMATS[name]
    edges = {"zero": 0.0, "subnormal": float(np.nextafter(tiny, 0.0)), "own_max": big}
    if name in ("float32", "float64"):
        edges.update(bf16_flush=BF16_FLUSH, fp16_flush=FP16_FLUSH, fp16_max=FP16_MAX, bf16_max=BF16_MAX)
    ordered = sorted(edges.items(), key=lambda kv: kv[1])
    return [k for k, _ in ordered], np.array([v for _, v in ordered], dtype=np.float64)
