"""Weight initialisations (torch.nn.init's names and fan conventions) and the random generator layers draw from.

Each `*_` function fills a Parameter (or array) in place and returns it. Values are drawn in float64
and rounded once to the array's dtype, so a float32 and a float64 model built from the same seed hold
the same weights up to that rounding. fan_in = shape[1] * receptive field, fan_out = shape[0] *
receptive field, as in torch (a Dense weight is (out_features, in_features)).

    normal_(w, std=1.0)      N(0, std^2)                       the textbook N(0, 1)
    scaled_(w)               N(0, 1/fan_in)                    the 1/sqrt(n) rule (LeCun)
    uniform_(w, a, b)        U(a, b)
    xavier_uniform_(w)       U(-r, r), r = gain*sqrt(6/(fan_in+fan_out))     Glorot & Bengio (2010)
    xavier_normal_(w)        N(0, gain^2 * 2/(fan_in+fan_out))
    he_uniform_(w)           U(-r, r), r = sqrt(6/fan_in)                    He et al. (2015), for ReLU
    he_normal_(w)            N(0, 2/fan_in)

Randomness: every function and layer takes `rng=` (a seed or a np.random.Generator); without it they
draw from one module-wide generator that `manual_seed(seed)` resets, as torch.manual_seed does.
"""
from __future__ import annotations

import math

import numpy as np

from nnstab.nn import _args

_global_rng = np.random.default_rng()


def manual_seed(seed: int) -> np.random.Generator:
    """Reset the generator that layers and initialisers use when given no `rng`; returns it."""
    global _global_rng
    _global_rng = np.random.default_rng(seed)
    return _global_rng


def resolve_rng(rng=None) -> np.random.Generator:
    """None -> the module-wide generator; an int -> a fresh generator seeded with it; a Generator -> itself."""
    if rng is None:
        return _global_rng
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
        return np.random.default_rng(int(rng))
    raise TypeError(f"rng must be None, an int seed or a np.random.Generator, got {type(rng).__name__}")


def _array(w):
    """The float array of a Parameter or array to fill in place (anything else: TypeError naming w)."""
    a = w.data if hasattr(w, "data") and not isinstance(w, np.ndarray) else w
    if not isinstance(a, np.ndarray) or a.dtype.kind != "f":
        what = f"dtype {a.dtype}" if isinstance(a, np.ndarray) else type(a).__name__
        raise TypeError(f"w must be a Parameter or a floating-point NumPy array to fill in place, got {what}; "
                        f"create it with np.empty(shape, dtype=np.float32)")
    return a


def _fill(w, values):
    _array(w)[...] = values
    return w


def _empty(w) -> bool:
    """A weight without entries (a layer with 0 inputs or outputs): initialising it is a no-op, as in torch."""
    return _array(w).size == 0


def fans(shape) -> tuple[int, int]:
    """(fan_in, fan_out) of a weight of this shape, as torch.nn.init computes them."""
    if len(shape) == 0:
        raise ValueError("fan_in and fan_out need a weight with at least 1 dimension, got a 0-d array")
    if len(shape) == 1:
        return shape[0], shape[0]
    receptive = math.prod(shape[2:])
    return shape[1] * receptive, shape[0] * receptive


def normal_(w, std: float = 1.0, mean: float = 0.0, *, rng=None):
    std = _args.real(std, "std", "normal_", low=0.0)
    mean = _args.real(mean, "mean", "normal_")
    return _fill(w, resolve_rng(rng).normal(mean, std, size=_array(w).shape))


def uniform_(w, a: float = 0.0, b: float = 1.0, *, rng=None):
    a, b = _args.real(a, "a", "uniform_"), _args.real(b, "b", "uniform_")
    if not a <= b:
        raise ValueError(f"uniform_: the range [a, b) needs a <= b, got a={a}, b={b}")
    return _fill(w, resolve_rng(rng).uniform(a, b, size=_array(w).shape))


def scaled_(w, *, rng=None):
    if _empty(w):
        return w
    fan_in, _ = fans(_array(w).shape)
    return normal_(w, 1.0 / math.sqrt(fan_in), rng=rng)


def xavier_uniform_(w, gain: float = 1.0, *, rng=None):
    if _empty(w):
        return w
    fan_in, fan_out = fans(_array(w).shape)
    bound = gain * math.sqrt(6.0 / (fan_in + fan_out))
    return uniform_(w, -bound, bound, rng=rng)


def xavier_normal_(w, gain: float = 1.0, *, rng=None):
    if _empty(w):
        return w
    fan_in, fan_out = fans(_array(w).shape)
    return normal_(w, gain * math.sqrt(2.0 / (fan_in + fan_out)), rng=rng)


def _he_fan(shape, mode: str) -> int:
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(f"mode must be 'fan_in' or 'fan_out', got {mode!r}")
    fan_in, fan_out = fans(shape)
    return fan_in if mode == "fan_in" else fan_out


def he_uniform_(w, mode: str = "fan_in", *, rng=None):
    if _empty(w):
        return w
    bound = math.sqrt(6.0 / _he_fan(_array(w).shape, mode))
    return uniform_(w, -bound, bound, rng=rng)


def he_normal_(w, mode: str = "fan_in", *, rng=None):
    if _empty(w):
        return w
    return normal_(w, math.sqrt(2.0 / _he_fan(_array(w).shape, mode)), rng=rng)


def default_uniform_(w, *, rng=None):
    """torch's default for Linear and Conv2d weights: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    if _empty(w):
        return w
    fan_in, _ = fans(_array(w).shape)
    bound = 1.0 / math.sqrt(fan_in)
    return uniform_(w, -bound, bound, rng=rng)


def zeros_(w):
    return _fill(w, 0)


def ones_(w):
    return _fill(w, 1)


SCHEMES = {
    "he": he_normal_,
    "xavier": xavier_uniform_,
    "normal": normal_,
    "scaled": scaled_,
    "uniform": default_uniform_,
}


def initial_weight(shape, scheme: str, dtype, rng=None) -> np.ndarray:
    """A new weight array drawn by the named scheme (the `init=` argument of Dense and Conv2d)."""
    if scheme not in SCHEMES:
        raise ValueError(f"init must be one of {', '.join(repr(s) for s in SCHEMES)}, got {scheme!r}")
    w = np.empty(shape, dtype=np.float64)
    SCHEMES[scheme](w, rng=rng)
    return w.astype(dtype)
