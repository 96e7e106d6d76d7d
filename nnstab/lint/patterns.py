"""The unstable formulas the lint knows: what each computes, where it loses precision, what to write instead.

Each pattern's losing range is a mask over the tensor its last operation consumes (the softmax output
a log reads, the denominator a division reads, ...), computed from the limits of the narrowest float
type the value passed through. The ranges are where the formula's *value* is lost or capped, not where
it is a few rounding errors off: a pattern whose observed inputs never enter its range is reported as
"info" (present, harmless on this data), one whose inputs do as "warning".
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

# A constant up to this, added to (or clamped under) a probability before a log, is an epsilon guard;
# larger ones are a deliberate transform (log(p + 1), smoothing) and are not reported.
EPS_GUARD_MAX = 1e-2
# layer_norm's default epsilon on the variance: a standard deviation below its square root is one the
# stable form would have changed, and there x / std and its gradient (∝ 1/std²) blow up (NaN at 0).
STD_FLOOR = math.sqrt(1e-5)


@dataclass(frozen=True)
class Limits:
    """The float limits a value's range is judged by (the narrowest of the dtypes it passed through)."""

    dtype: str
    tiny: float   # smallest normal number: below it a value has lost digits (subnormal) or all of them (0)
    eps: float    # spacing of the floats just above 1
    max: float    # largest finite number: exp overflows beyond log(max)

    @classmethod
    def of(cls, *dtypes) -> "Limits":
        infos = [torch.finfo(d) for d in dtypes]
        narrowest = max(infos, key=lambda f: (f.eps, f.tiny))
        return cls(str(narrowest.dtype).replace("torch.", ""), max(f.tiny for f in infos),
                   max(f.eps for f in infos), min(f.max for f in infos))


@dataclass(frozen=True)
class Pattern:
    """One unstable formula: its name, how users write it, the stable replacement and its losing range."""

    name: str
    formula: str
    replacement: str
    losing: object        # (tensor, Limits, tag) -> bool mask of the consumed values in the losing range
    range_text: object    # (Limits, tag) -> the range in words, for the message

    def describe_range(self, limits: Limits, tag) -> str:
        return self.range_text(limits, tag)


def _underflowed(t, lim, tag):
    # a probability below the smallest normal number: subnormal (digits lost) or 0 (its log is -inf)
    return t < lim.tiny


def _one_step_from_zero(t, lim, tag):
    # 1 - p for p in [1/2, 1] is exact, so 1 - p <= eps means p had rounded to within a step of 1
    return t <= lim.eps


def _one_plus_exp_lost(t, lim, tag):
    # 1 + exp(x) == 1: exp(x) < eps/2 vanished entirely (x < ln(eps/2)); inf: exp(x) overflowed
    return (t == 1) | torch.isinf(t)


def _overflowed(t, lim, tag):
    # exp(x) beyond the largest finite number (x > ln(max))
    return torch.isinf(t)


def _out_of_range(t, lim, tag):
    # exp(x) (or a sum of them) overflowed to inf, or fell below the normal range
    return torch.isinf(t) | (t < lim.tiny)


def _saturated(t, lim, tag):
    # a sigmoid output rounded to 0, or to within one step of 1: log(p) or log(1 - p) is lost
    return (t < lim.tiny) | (t > 1 - lim.eps)


def _eps_dominates(t, lim, tag):
    # p + eps < 2 eps  <=>  p < eps: the guard, not the probability, sets the log (and cuts its gradient)
    if tag.extra.get("how") == "clamp":
        return t <= torch.tensor(tag.extra["eps"], dtype=t.dtype, device=t.device)
    return t < 2 * tag.extra["eps"]


def _small_std(t, lim, tag):
    # a std (or a variance, against the floor squared) the stable form's epsilon would have changed
    floor = STD_FLOOR ** 2 if tag.kind == "var" else STD_FLOOR
    return t < floor


_PROB_REPLACEMENT = {
    "softmax": "torch.log_softmax(x, dim) (or nnstab.log_softmax(x, axis)) on the logits",
    "sigmoid": "F.logsigmoid(x) (or nnstab.log_sigmoid(x)) on the logits",
    "complement": "F.logsigmoid(-x) (or nnstab.log_sigmoid(-x)) on the logits",
}

PATTERNS = {p.name: p for p in (
    Pattern("log_softmax", "log(softmax(x))", _PROB_REPLACEMENT["softmax"], _underflowed,
            lambda lim, tag: f"softmax outputs below {lim.tiny:.3g}, the smallest normal {lim.dtype}: "
                             f"their log is -inf or has lost digits"),
    Pattern("log_sigmoid", "log(sigmoid(x))", _PROB_REPLACEMENT["sigmoid"], _underflowed,
            lambda lim, tag: f"sigmoid outputs below {lim.tiny:.3g} (x < {math.log(lim.tiny):.1f} in {lim.dtype}): "
                             f"their log is -inf or has lost digits"),
    Pattern("log_one_minus_sigmoid", "log(1 - sigmoid(x))", _PROB_REPLACEMENT["complement"], _one_step_from_zero,
            lambda lim, tag: f"sigmoid outputs within one rounding step of 1 (x > {-math.log(lim.eps):.1f} in "
                             f"{lim.dtype}): 1 - sigmoid(x) is 0 or one bit, its log -inf or wrong"),
    Pattern("log_one_plus_exp", "log(1 + exp(x))", "F.softplus(x) (or nnstab.softplus(x))", _one_plus_exp_lost,
            lambda lim, tag: f"x < {math.log(lim.eps / 2):.1f}, where 1 + exp(x) rounds to 1 and the result to 0, or "
                             f"x > {math.log(lim.max):.1f}, where exp(x) overflows ({lim.dtype})"),
    Pattern("log1p_exp", "log1p(exp(x))", "F.softplus(x) (or nnstab.softplus(x))", _overflowed,
            lambda lim, tag: f"x > {math.log(lim.max):.1f}, where exp(x) overflows to inf ({lim.dtype})"),
    Pattern("naive_softmax", "exp(x) / exp(x).sum(dim)", "torch.softmax(x, dim) (or nnstab.softmax(x, axis))",
            _out_of_range,
            lambda lim, tag: f"x > {math.log(lim.max):.1f}, where exp(x) overflows (inf / inf = nan), or "
                             f"x < {math.log(lim.tiny):.1f}, where it underflows ({lim.dtype})"),
    Pattern("log_sum_exp", "log(exp(x).sum(dim))", "torch.logsumexp(x, dim) (or nnstab.logsumexp(x, axis))",
            _out_of_range,
            lambda lim, tag: f"sums of exp(x) that overflowed to inf or fell below {lim.tiny:.3g} ({lim.dtype})"),
    Pattern("sigmoid_bce", "BCELoss(sigmoid(x), y)",
            "nn.BCEWithLogitsLoss()(x, y) / F.binary_cross_entropy_with_logits (or "
            "nnstab.binary_cross_entropy_with_logits) on the logits", _saturated,
            lambda lim, tag: f"sigmoid outputs that rounded to 0 or 1 (x < {math.log(lim.tiny):.1f} or "
                             f"x > {-math.log(lim.eps):.1f} in {lim.dtype}): BCELoss clamps their log at -100, "
                             f"so loss and gradient are wrong"),
    Pattern("log_p_eps", "log(p + eps)", "torch.log_softmax / F.logsigmoid on the logits", _eps_dominates,
            lambda lim, tag: f"probabilities below eps = {tag.extra['eps']:g}: the log reads about log(eps), "
                             f"not log(p), and its gradient is cut"),
    Pattern("div_std", "x / x.std(dim)", "(x - mean) / (std + eps), or F.layer_norm(x, shape, eps=1e-5)",
            _small_std,
            lambda lim, tag: f"standard deviations below {STD_FLOOR:.2g} (variance below layer_norm's eps 1e-5): "
                             f"the quotient and its gradient blow up, nan at 0"),
)}


def replacement(pattern: Pattern, tag) -> str:
    """The stable replacement; for log(p + eps) it depends on where p came from."""
    if pattern.name == "log_p_eps":
        return _PROB_REPLACEMENT.get(tag.extra.get("origin"), _PROB_REPLACEMENT["softmax"])
    return pattern.replacement
