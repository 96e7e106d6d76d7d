"""Exact references for nnstab's numeric functions: mpmath on the given floats, to DIGITS significant digits.

Each function has the signature of its public counterpart (nnstab.softmax, ...), accepts NumPy
arrays or torch tensors of any float dtype, reads every float exactly, and returns a NumPy object
array of mpmath.mpf (a single mpf for reduction "mean"/"sum"). grad_<name>(..., grad_output=None)
is the exact vector-Jacobian product (grad_output defaults to ones, or 1 for a reduced loss).

Why the digits can be trusted: an input float is exact as an mpf and each mpmath operation rounds
once, so error only grows where a formula subtracts nearly equal rounded quantities. The formulas
avoid that where they can (log1p of the sum without the max term; same-sign sums; log1p for log(p/q)
near 1; sums of other terms instead of S - e_i). Where cancellation is inherent (logsumexp near 0, a
KL sum of p ~ q, sigmoid(x) - t) the value is recomputed at rising precision until DIGITS digits
survive (`_adaptive`). Results that are exactly zero, which no precision could confirm (softmax
gradients of tied logits), are detected with exact rational arithmetic on the floats.

Edge conventions follow the numerics contract: an all -inf row has logsumexp -inf, softmax 0 and
log_softmax -inf; +inf entries share the mass equally; NaN in a row makes the row NaN; 0*log(0) = 0.
Gradients at such limits are the gradient formulas evaluated at the limiting softmax.

One module holds every reference next to its gradient, as the names nnstab.oracle.<name> and
grad_<name> promise; that, not complexity, is why it runs past 400 lines.
"""
from __future__ import annotations

import math
from fractions import Fraction

import mpmath
import numpy as np
from mpmath import mpf
from mpmath.libmp import mpf_sum

from nnstab import _backend
from nnstab.numerics.validate import check_reduction, normalize_axis

DIGITS = 60
GUARD_DIGITS = 15  # carried beyond the target so the last roundings never reach the reported digits
MAX_DIGITS = 3000  # adaptive precision stops here; only contrived inputs cancel that deeply

_NAN, _INF, _ZERO, _ONE = mpf("nan"), mpf("inf"), mpf(0), mpf(1)


# ---------------------------------------------------------------- inputs and outputs

def _floats(x, name: str) -> np.ndarray:
    """x as a float64 NumPy array holding exactly its values (any torch float dtype included)."""
    if _backend.is_tensor(x):
        import torch

        if not x.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got {x.dtype}; convert it with {name}.double()")
        return x.detach().to(device="cpu", dtype=torch.float64).numpy()
    arr = np.asarray(x)
    if arr.dtype.kind != "f" or arr.dtype.itemsize > 8:
        raise TypeError(f"{name} must hold float16/float32/float64 values, got dtype {arr.dtype}; "
                        f"convert it with np.asarray({name}, dtype=np.float64)")
    return arr.astype(np.float64)


def _ints(x, name: str) -> np.ndarray:
    if _backend.is_tensor(x):
        x = x.detach().cpu().numpy()
    arr = np.asarray(x)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"{name} must hold integer class indices, got dtype {arr.dtype}")
    return arr.astype(np.int64)


def _objects(values, shape) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out.reshape(shape)


def _mpfs(arr: np.ndarray) -> list:
    return [mpf(v) for v in arr.ravel().tolist()]


def _check_same_shape(a, b, names):
    if a.shape != b.shape:
        raise ValueError(f"{names[1]} must have the shape of {names[0]} {a.shape}, got {b.shape}")


def _grad_output(grad_output, shape, name="grad_output") -> np.ndarray:
    """grad_output as a float64 array broadcast to the loss/result shape (ones by default)."""
    if grad_output is None:
        return np.ones(shape)
    g = _floats(grad_output, name)
    try:
        return np.broadcast_to(g, shape)
    except ValueError:
        raise ValueError(f"{name} must have the result's shape {shape}, got {g.shape}") from None


def _rows(arr: np.ndarray, axis: int):
    """The 1-d slices of arr along axis as lists of floats, and a function putting row results back."""
    moved = np.moveaxis(arr, axis, -1)
    outer, n = moved.shape[:-1], moved.shape[-1]
    rows = moved.reshape(math.prod(outer), n).tolist()

    def back(results):
        flat = [v for row in results for v in row]
        return np.moveaxis(_objects(flat, moved.shape), -1, axis)

    return rows, outer, back


def _reduce(values: list, reduction: str, count=None):
    if reduction == "none":
        return values
    total = mpmath.fsum(values)
    if reduction == "sum":
        return total
    count = len(values) if count is None else count
    return total / count if count else _NAN


def _rational(q: Fraction):
    return mpf(q.numerator) / q.denominator


# ---------------------------------------------------------------- adaptive precision

def _lost_digits(value, scale) -> float:
    """Decimal digits cancelled when terms of size `scale` add up to `value` (from exponents: cheap)."""
    if not scale or not mpmath.isfinite(value) or not mpmath.isfinite(scale):
        return 0.0
    if not value:
        return math.inf
    return max(0.0, (mpmath.mag(scale) - mpmath.mag(value) + 1) * math.log10(2))


def _adaptive(compute):
    """Run compute() -> (results, [(value, scale), ...]) at rising precision until each value keeps mp.dps digits.

    scale bounds the magnitudes whose roundings add up in value (error <= ~10**-prec * scale), so
    log10(scale/|value|) digits are lost to cancellation. A value that is exactly zero must come with
    scale 0 (its zero is known exactly), or this loop cannot confirm it.
    """
    target, extra = mpmath.mp.dps, GUARD_DIGITS
    while True:
        with mpmath.workdps(target + extra):
            results, checks = compute()
        lost = max((_lost_digits(v, s) for v, s in checks), default=0.0)
        if lost <= extra - 5:
            return results
        if target + extra >= MAX_DIGITS:
            raise ArithmeticError(f"oracle: {lost:.0f} digits cancel, beyond MAX_DIGITS={MAX_DIGITS}")
        extra = min(MAX_DIGITS - target, extra + int(min(lost, MAX_DIGITS)) + GUARD_DIGITS)


def _checked(value, scale):
    """compute() result for a single value whose own cancellation is checked."""
    return [value], [(value, scale)]


def _exact_sum(values):
    """The exact sum of floats/mpfs as an mpf (mpf_sum with precision 0 never rounds)."""
    return mpf(mpf_sum([mpf(v)._mpf_ for v in values], 0))


# ---------------------------------------------------------------- rows of logits

def _kind(xs) -> str:
    """'nan', 'inf' (some +inf), 'empty' (no entry above -inf) or 'finite' (a finite maximum)."""
    if any(math.isnan(v) for v in xs):
        return "nan"
    if any(v == math.inf for v in xs):
        return "inf"
    return "finite" if any(v > -math.inf for v in xs) else "empty"


def _limit_support(xs, kind):
    """Indices where a limiting softmax (+inf entries, or none at all) puts its equal mass 1/k."""
    return [i for i, v in enumerate(xs) if v == math.inf] if kind == "inf" else []


def _tied_support(xs):
    """For a finite row whose entries above -inf are all equal, those indices (softmax 1/n: rational)."""
    alive = [i for i, v in enumerate(xs) if v > -math.inf]
    return alive if len({xs[i] for i in alive}) == 1 else None


class _Weights:
    """exp(x - m) for a row with a finite max m, at the current precision: d = x - m, e = exp(d),
    rest = sum of e without the top entry (S = 1 + rest, and log S = log1p(rest) keeps its digits)."""

    def __init__(self, xs):
        self.top = max(range(len(xs)), key=xs.__getitem__)
        m = self.m = mpf(xs[self.top])
        self.d = [mpf(v) - m for v in xs]
        self.e = [mpmath.exp(v) for v in self.d]
        self.rest = mpmath.fsum(self.e[: self.top] + self.e[self.top + 1:])
        self.S = 1 + self.rest

    def others(self, i):
        """sum of e_j for j != i, without cancelling S - e_i when e_i carries most of S."""
        if i == self.top:
            return self.rest
        return self.S - self.e[i] if 2 * self.e[i] <= self.S else mpmath.fsum(self.e[:i] + self.e[i + 1:])


def _logsumexp_row(xs):
    kind = _kind(xs)
    if kind != "finite":
        return {"nan": _NAN, "inf": _INF, "empty": -_INF}[kind]

    def compute():
        w = _Weights(xs)
        log_s = mpmath.log1p(w.rest)
        return _checked(w.m + log_s, max(abs(w.m), log_s))  # cancels when m ~ -log S

    return _adaptive(compute)[0]


def _softmax_row(xs):
    kind = _kind(xs)
    if kind == "nan":
        return [_NAN] * len(xs)
    if kind != "finite":
        support = set(_limit_support(xs, kind))
        return [_ONE / len(support) if i in support else _ZERO for i in range(len(xs))]
    w = _Weights(xs)
    return [e / w.S for e in w.e]


def _log_softmax_row(xs):
    kind = _kind(xs)
    if kind == "nan":
        return [_NAN] * len(xs)
    if kind != "finite":
        support = set(_limit_support(xs, kind))
        return [-mpmath.log(len(support)) if i in support else -_INF for i in range(len(xs))]
    w = _Weights(xs)
    log_s = mpmath.log1p(w.rest)
    return [d - log_s for d in w.d]  # d <= 0 <= log S: a same-sign sum, nothing cancels


def _grad_softmax_row(xs, gs):
    """dx_i = y_i (g_i - sum_j y_j g_j) = e_i c_i / S^2 with c_i = sum_{j != i} e_j (g_i - g_j).

    By Lindemann-Weierstrass the exp of distinct floats are linearly independent over the rationals,
    so c_i = 0 exactly iff g_i equals the mean of g over every group of tied logits; then all
    group means are one value M and c_i = S (g_i - M) without cancellation.
    """
    kind = _kind(xs)
    if kind == "nan":
        return [_NAN] * len(xs)
    support = _limit_support(xs, kind) if kind != "finite" else _tied_support(xs)
    if support is not None:  # rational softmax 1/k on support
        k = len(support)
        mean = sum((Fraction(gs[i]) for i in support), Fraction(0)) / k if k else Fraction(0)
        inside = set(support)
        return [_rational((Fraction(g) - mean) / k) if i in inside else _ZERO for i, g in enumerate(gs)]
    common = _common_group_mean(xs, gs)
    if common is not None:
        w = _Weights(xs)
        return [e * _rational(Fraction(g) - common) / w.S for e, g in zip(w.e, gs)]

    def compute():
        w, gm = _Weights(xs), [mpf(g) for g in gs]
        eg = [e * g for e, g in zip(w.e, gm)]
        T, T_abs = mpmath.fsum(eg), mpmath.fsum(eg, absolute=True)
        inv_s2, results, checks = 1 / w.S ** 2, [], []
        for i, g in enumerate(gm):
            if 2 * abs(eg[i]) <= T_abs:
                b, b_abs = T - eg[i], T_abs - abs(eg[i])
            else:  # this term carries most of T: sum the others directly
                b, b_abs = mpmath.fsum(eg[:i] + eg[i + 1:]), mpmath.fsum(eg[:i] + eg[i + 1:], absolute=True)
            a = w.others(i)
            c = g * a - b
            results.append(w.e[i] * c * inv_s2)
            checks.append((c, abs(g) * a + b_abs))
        return results, checks

    return _adaptive(compute)


def _common_group_mean(xs, gs):
    """The common mean M of g over every group of equal logits (above -inf), or None if they differ."""
    alive = [i for i, v in enumerate(xs) if v > -math.inf]
    values = {gs[i] for i in alive}
    if len(values) == 1:
        return Fraction(values.pop())
    groups = {}
    for i in alive:
        groups.setdefault(xs[i], []).append(gs[i])
    if all(len(members) == 1 for members in groups.values()):
        return None  # each mean is one g, and the g differ
    means = {sum(map(Fraction, members), Fraction(0)) / len(members) for members in groups.values()}
    return means.pop() if len(means) == 1 else None


def _grad_log_softmax_row(xs, gs):
    """dx_i = g_i - y_i G (G = sum g) = (g_i A_i - e_i B_i) / S with A_i = sum_{j!=i} e_j, B_i = sum_{j!=i} g_j.

    With two or more distinct logits this is exactly zero only when g_i = 0 and G = 0 (then B_i = 0
    and the formula gives 0 exactly); B_i is summed exactly, so only the final difference can cancel.
    """
    kind = _kind(xs)
    if kind == "nan":
        return [_NAN] * len(xs)
    support = _limit_support(xs, kind) if kind != "finite" else _tied_support(xs)
    if support is not None:
        total, k, inside = sum(map(Fraction, gs), Fraction(0)), len(support), set(support)
        return [_rational(Fraction(g) - total / k) if i in inside else mpf(g) for i, g in enumerate(gs)]
    total = _exact_sum(gs)

    def compute():
        w, results, checks = _Weights(xs), [], []
        inv_s = 1 / w.S
        for i, g in enumerate(gs):
            a, g = w.others(i), mpf(g)
            b = total - g  # total is exact, so this rounds once
            c = g * a - w.e[i] * b
            results.append(c * inv_s)
            checks.append((c, abs(g) * a + w.e[i] * abs(b)))
        return results, checks

    return _adaptive(compute)


def _row_function(row_fn, x, axis, name="x"):
    arr = _floats(x, name)
    axis = normalize_axis(axis, arr.ndim)
    rows, _, back = _rows(arr, axis)
    with mpmath.workdps(DIGITS):
        return back([row_fn(r) for r in rows])


# ---------------------------------------------------------------- softmax family

def logsumexp(x, axis=-1, keepdims=False):
    """log(sum(exp(x))) along axis, as m + log1p(sum without the max term), precision raised near 0."""
    arr = _floats(x, "x")
    axis = normalize_axis(axis, arr.ndim)
    rows, outer, _ = _rows(arr, axis)
    with mpmath.workdps(DIGITS):
        out = _objects([_logsumexp_row(r) for r in rows], outer)
    return np.expand_dims(out, axis) if keepdims else out


def softmax(x, axis=-1):
    """exp(x_i - m) / sum_j exp(x_j - m) along axis."""
    return _row_function(_softmax_row, x, axis)


def log_softmax(x, axis=-1):
    """(x_i - m) - log1p(sum without the max term) along axis."""
    return _row_function(_log_softmax_row, x, axis)


def grad_logsumexp(x, axis=-1, keepdims=False, grad_output=None):
    """d/dx of sum(grad_output * logsumexp(x)) = grad_output * softmax(x)."""
    arr = _floats(x, "x")
    axis = normalize_axis(axis, arr.ndim)
    out_shape = tuple(1 if i == axis else n for i, n in enumerate(arr.shape)) if keepdims else \
        arr.shape[:axis] + arr.shape[axis + 1:]
    g = _grad_output(grad_output, out_shape).reshape(-1).tolist()
    rows, _, back = _rows(arr, axis)
    with mpmath.workdps(DIGITS):
        return back([[gi * y for y in _softmax_row(r)] for r, gi in zip(rows, g)])


def grad_softmax(x, axis=-1, grad_output=None):
    """The vector-Jacobian product of softmax: y * (g - sum(g * y)) along axis."""
    return _paired_rows(_grad_softmax_row, x, axis, grad_output)


def grad_log_softmax(x, axis=-1, grad_output=None):
    """The vector-Jacobian product of log_softmax: g - softmax(x) * sum(g) along axis."""
    return _paired_rows(_grad_log_softmax_row, x, axis, grad_output)


def _paired_rows(row_fn, x, axis, grad_output):
    arr = _floats(x, "x")
    axis = normalize_axis(axis, arr.ndim)
    g = _grad_output(grad_output, arr.shape)
    rows, _, back = _rows(arr, axis)
    g_rows, _, _ = _rows(g, axis)
    with mpmath.workdps(DIGITS):
        return back([row_fn(r, gr) for r, gr in zip(rows, g_rows)])


# ---------------------------------------------------------------- sigmoid family (elementwise)

def _sig(v):
    return 1 / (1 + mpmath.exp(-v))


def _elementwise(fn, *arrays):
    shape = arrays[0].shape
    with mpmath.workdps(DIGITS):
        return _objects([fn(*vs) for vs in zip(*(a.ravel().tolist() for a in arrays))], shape)


def sigmoid(x):
    """1 / (1 + exp(-x)); exp never overflows in mpmath, so subnormal results are kept."""
    return _elementwise(lambda v: _sig(mpf(v)), _floats(x, "x"))


def log_sigmoid(x):
    """-log1p(exp(-x))."""
    return _elementwise(lambda v: -mpmath.log1p(mpmath.exp(-mpf(v))), _floats(x, "x"))


def softplus(x):
    """log1p(exp(x))."""
    return _elementwise(lambda v: mpmath.log1p(mpmath.exp(mpf(v))), _floats(x, "x"))


def grad_sigmoid(x, grad_output=None):
    """grad_output * sigmoid(x) * sigmoid(-x)."""
    arr = _floats(x, "x")
    return _elementwise(lambda v, g: g * _sig(mpf(v)) * _sig(-mpf(v)), arr, _grad_output(grad_output, arr.shape))


def grad_log_sigmoid(x, grad_output=None):
    """grad_output * sigmoid(-x)."""
    arr = _floats(x, "x")
    return _elementwise(lambda v, g: g * _sig(-mpf(v)), arr, _grad_output(grad_output, arr.shape))


def grad_softplus(x, grad_output=None):
    """grad_output * sigmoid(x)."""
    arr = _floats(x, "x")
    return _elementwise(lambda v, g: g * _sig(mpf(v)), arr, _grad_output(grad_output, arr.shape))


# ---------------------------------------------------------------- losses

def _weights_for(reduction, grad_output, shape, count):
    """(per-element grad_output as floats, divisor as an int): weight of element i is g_i / divisor."""
    if reduction == "none":
        return _grad_output(grad_output, shape), 1
    g = 1.0 if grad_output is None else float(_floats(grad_output, "grad_output").reshape(()))
    return np.full(shape, g), (count if reduction == "mean" else 1)


def _ce_targets(logits, target, axis, ignore_index):
    """(per-row target rows as float lists, per-row ignored flags): class indices become one-hot rows."""
    n_classes = logits.shape[axis]
    row_shape = logits.shape[:axis] + logits.shape[axis + 1:]
    is_float = (_backend.is_tensor(target) and target.is_floating_point()) or \
        (not _backend.is_tensor(target) and np.asarray(target).dtype.kind == "f")
    if is_float:
        t = _floats(target, "target")
        _check_same_shape(logits, t, ("logits", "target (probabilities)"))
        if (t < 0).any():
            raise ValueError("target probabilities must be >= 0")
        rows, _, _ = _rows(t, axis)
        return rows, [False] * len(rows)
    t = _ints(target, "target")
    if t.shape != row_shape:
        raise ValueError(f"target (class indices) must have shape {row_shape} (logits without axis), got {t.shape}")
    ignored = (t == ignore_index) if ignore_index is not None else np.zeros(t.shape, bool)
    bad = ((t < 0) | (t >= n_classes)) & ~ignored
    if bad.any():
        raise ValueError(f"target holds class index {int(t[bad][0])}, outside [0, {n_classes})")
    rows = [[1.0 if j == c else 0.0 for j in range(n_classes)] for c in t.ravel().tolist()]
    return rows, ignored.ravel().tolist()


def _cross_entropy_row(xs, ts):
    """-sum_i t_i log_softmax_i; each term >= 0, and t_i = 0 terms are 0 even where log_softmax is -inf."""
    return mpmath.fsum(-mpf(t) * y for t, y in zip(ts, _log_softmax_row(xs)) if t != 0)


def cross_entropy(logits, target, axis=-1, reduction="mean", *, ignore_index=None):
    """Cross-entropy of softmax(logits) along axis against class indices or probabilities.

    "mean" averages over the rows whose target is not ignore_index (NaN when none is left), as torch does.
    """
    check_reduction(reduction)
    x = _floats(logits, "logits")
    axis = normalize_axis(axis, x.ndim)
    t_rows, ignored = _ce_targets(x, target, axis, ignore_index)
    rows, outer, _ = _rows(x, axis)
    with mpmath.workdps(DIGITS):
        losses = [_ZERO if skip else _cross_entropy_row(r, t) for r, t, skip in zip(rows, t_rows, ignored)]
        out = _reduce(losses, reduction, count=len(losses) - sum(ignored))
    return _objects(out, outer) if reduction == "none" else out


def grad_cross_entropy(logits, target, axis=-1, reduction="mean", *, ignore_index=None, grad_output=None):
    """d loss / d logits = w * (softmax * sum(t) - t) per row, i.e. -w * grad_log_softmax(logits, t)."""
    check_reduction(reduction)
    x = _floats(logits, "logits")
    axis = normalize_axis(axis, x.ndim)
    t_rows, ignored = _ce_targets(x, target, axis, ignore_index)
    rows, outer, back = _rows(x, axis)
    g, divisor = _weights_for(reduction, grad_output, outer, len(rows) - sum(ignored))
    with mpmath.workdps(DIGITS):
        out = []
        for r, t, skip, gi in zip(rows, t_rows, ignored, g.ravel().tolist()):
            w = mpf(gi) / divisor if divisor else _NAN
            out.append([_ZERO] * len(r) if skip else [-w * v for v in _grad_log_softmax_row(r, t)])
        return back(out)


def _check_probabilities(p, name, upper=True):
    bad = (p < 0) | (p > 1) if upper else (p < 0)
    if bad.any():
        raise ValueError(f"{name} must hold probabilities {'in [0, 1]' if upper else '>= 0'}, got {p[bad][0]!r}")


def _xlogy(a, b):
    return _ZERO if a == 0 else a * mpmath.log(b)


def binary_cross_entropy(probs, target, reduction="mean"):
    """-(t log p + (1 - t) log1p(-p)), 0 log 0 = 0; both terms <= 0 (log1p: 1 - p would round a tiny p away)."""
    check_reduction(reduction)
    p, t = _floats(probs, "probs"), _floats(target, "target")
    _check_same_shape(p, t, ("probs", "target"))
    _check_probabilities(p, "probs")
    _check_probabilities(t, "target")

    def loss(pv, tv):
        pv, tv = mpf(pv), mpf(tv)
        return -(_xlogy(tv, pv) + (_ZERO if tv == 1 else (1 - tv) * mpmath.log1p(-pv)))

    out = _elementwise(loss, p, t)
    with mpmath.workdps(DIGITS):
        return out if reduction == "none" else _reduce(list(out.ravel()), reduction)


def _softplus_mp(v):
    return mpmath.log1p(mpmath.exp(v))


def binary_cross_entropy_with_logits(logits, target, reduction="mean"):
    """t softplus(-x) + (1 - t) softplus(x): two terms >= 0 for t in [0, 1] (precision raised otherwise)."""
    check_reduction(reduction)
    x, t = _floats(logits, "logits"), _floats(target, "target")
    _check_same_shape(x, t, ("logits", "target"))

    def loss(xv, tv):
        def compute():
            a, b = mpf(tv), 1 - mpf(tv)
            terms = [c * _softplus_mp(s * mpf(xv)) for c, s in ((a, -1), (b, 1)) if c != 0]
            return _checked(mpmath.fsum(terms), mpmath.fsum(terms, absolute=True))
        return _NAN if math.isnan(xv) or math.isnan(tv) else _adaptive(compute)[0]

    out = _elementwise(loss, x, t)
    with mpmath.workdps(DIGITS):
        return out if reduction == "none" else _reduce(list(out.ravel()), reduction)


def _log_ratio(p, q):
    """log(p/q), through log1p((p - q)/q) near p = q where log of a rounded ratio would lose digits."""
    r = p / q
    return mpmath.log1p((p - q) / q) if abs(r - 1) < 0.5 else mpmath.log(r)


def _kl_terms(ps, qs, log_input):
    if log_input:  # p log(p/q) = exp(lp) (lp - lq)
        return [_ZERO if lp == -math.inf else mpmath.exp(lp) * (mpf(lp) - lq) for lp, lq in zip(ps, qs)]
    return [_ZERO if p == 0 and not math.isnan(q) else (_INF if q == 0 else mpf(p) * _log_ratio(mpf(p), mpf(q)))
            for p, q in zip(ps, qs)]


def _kl_inputs(p, q, axis, log_input):
    p, q = _floats(p, "p"), _floats(q, "q")
    _check_same_shape(p, q, ("p", "q"))
    axis = normalize_axis(axis, p.ndim)
    if not log_input:
        _check_probabilities(p, "p", upper=False)
        _check_probabilities(q, "q", upper=False)
    return p, q, axis


def kl_div(p, q, axis=-1, reduction="mean", log_input=False):
    """KL(p || q) = sum p log(p/q) per row; the mixed-sign sum is recomputed at higher precision when it cancels."""
    check_reduction(reduction)
    p, q, axis = _kl_inputs(p, q, axis, log_input)
    p_rows, outer, _ = _rows(p, axis)
    q_rows, _, _ = _rows(q, axis)

    def row(ps, qs):
        def compute():
            terms = _kl_terms(ps, qs, log_input)
            return _checked(mpmath.fsum(terms), mpmath.fsum(terms, absolute=True))
        return _adaptive(compute)[0]

    def total():
        rows = [row(a, b) for a, b in zip(p_rows, q_rows)]
        return _checked(mpmath.fsum(rows), mpmath.fsum(rows, absolute=True))

    with mpmath.workdps(DIGITS):
        if reduction == "none":
            return _objects([row(a, b) for a, b in zip(p_rows, q_rows)], outer)
        s = _adaptive(total)[0]
        return s if reduction == "sum" else (s / len(p_rows) if p_rows else _NAN)


def grad_kl_div(p, q, axis=-1, reduction="mean", log_input=False, grad_output=None):
    """(dp, dq): w (log(p/q) + 1), -w p/q; with log_input w exp(lp)(lp - lq + 1), -w exp(lp).

    At p = 0 (log_input False) dp is the one-sided limit -inf (and NaN where q = 0 too).
    """
    check_reduction(reduction)
    p, q, axis = _kl_inputs(p, q, axis, log_input)
    p_rows, outer, back = _rows(p, axis)
    q_rows, _, _ = _rows(q, axis)
    g, divisor = _weights_for(reduction, grad_output, outer, len(p_rows))

    def entry(a, b, w):
        if math.isnan(a) or math.isnan(b):
            return _NAN, _NAN
        if log_input:
            ea = mpmath.exp(a)
            return w * ea * _exact_sum([a, -b, 1.0]), -w * ea
        if a == 0:
            return (_NAN if b == 0 else w * -_INF), _ZERO

        def compute():
            lr = _log_ratio(mpf(a), mpf(b))
            return _checked(lr + 1, abs(lr) + 1)  # cancels where p/q ~ 1/e
        return w * _adaptive(compute)[0], -w * mpf(a) / b

    with mpmath.workdps(DIGITS):
        dp, dq = [], []
        for ps, qs, gi in zip(p_rows, q_rows, g.ravel().tolist()):
            w = mpf(gi) / divisor if divisor else _NAN
            pairs = [entry(a, b, w) for a, b in zip(ps, qs)]
            dp.append([u for u, _ in pairs])
            dq.append([v for _, v in pairs])
        return back(dp), back(dq)


def mse(pred, target, reduction="mean"):
    """(pred - target)^2, reduced; a difference of exact floats rounds once, and squares are >= 0."""
    check_reduction(reduction)
    a, b = _floats(pred, "pred"), _floats(target, "target")
    _check_same_shape(a, b, ("pred", "target"))
    out = _elementwise(lambda u, v: (mpf(u) - v) ** 2, a, b)
    with mpmath.workdps(DIGITS):
        return out if reduction == "none" else _reduce(list(out.ravel()), reduction)


def _elementwise_loss_grad(fn, a, b, reduction, grad_output):
    g, divisor = _weights_for(reduction, grad_output, a.shape, a.size)
    scale = np.full(a.shape, float(divisor))
    return _elementwise(lambda u, v, gi, d: fn(mpf(u), mpf(v), mpf(gi) / d if d else _NAN), a, b, g, scale)


def grad_mse(pred, target, reduction="mean", grad_output=None):
    """d/dpred = 2 w (pred - target)."""
    check_reduction(reduction)
    a, b = _floats(pred, "pred"), _floats(target, "target")
    _check_same_shape(a, b, ("pred", "target"))
    return _elementwise_loss_grad(lambda u, v, w: 2 * w * (u - v), a, b, reduction, grad_output)


def grad_binary_cross_entropy(probs, target, reduction="mean", grad_output=None):
    """d/dp = w (p - t) / (p (1 - p)); at p = 0 or 1 the terms with a zero factor (0 log 0) vanish."""
    check_reduction(reduction)
    p, t = _floats(probs, "probs"), _floats(target, "target")
    _check_same_shape(p, t, ("probs", "target"))
    _check_probabilities(p, "probs")
    _check_probabilities(t, "target")

    def d(pv, tv, w):
        if pv == 0 or pv == 1:  # -t/p + (1-t)/(1-p), a zero numerator dropping its term
            first = _ZERO if tv == 0 else -tv / pv if pv else -_INF
            second = _ZERO if tv == 1 else (1 - tv) / (1 - pv) if pv != 1 else _INF
            return w * (first + second)
        return w * (pv - tv) / (pv * (1 - pv))

    return _elementwise_loss_grad(d, p, t, reduction, grad_output)


def grad_binary_cross_entropy_with_logits(logits, target, reduction="mean", grad_output=None):
    """d/dx = w (sigmoid(x) - t) = w ((1 - t) sigmoid(x) - t sigmoid(-x)), precision raised where it cancels."""
    check_reduction(reduction)
    x, t = _floats(logits, "logits"), _floats(target, "target")
    _check_same_shape(x, t, ("logits", "target"))

    def d(xv, tv, w):
        if mpmath.isnan(xv) or mpmath.isnan(tv):
            return _NAN
        if xv == 0 and tv * 2 == 1:
            return _ZERO  # sigmoid(0) = 1/2 exactly: the only rational value sigmoid takes at a finite float

        def compute():
            terms = [c * _sig(s * xv) for c, s in ((1 - tv, 1), (-tv, -1)) if c != 0]
            return _checked(mpmath.fsum(terms), mpmath.fsum(terms, absolute=True))
        return w * _adaptive(compute)[0]

    return _elementwise_loss_grad(d, x, t, reduction, grad_output)
