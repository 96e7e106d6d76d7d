"""The operation table: which torch functions tag their outputs, pass tags on, or complete a pattern.

A rule is called before the operation with (lint, args, kwargs). It may record an observation (the
consumed tensor is measured *before* the operation runs, so in-place variants see their input) and
returns either None or `after(out)`, called with the operation's result to tag it. Rules only read
tensors: every result the user gets is the one torch computed.
"""
from __future__ import annotations

import numbers

import torch
import torch.nn.functional as F

from nnstab.lint.patterns import EPS_GUARD_MAX
from nnstab.lint.provenance import PROBABILITY, Tag, taggable

RULES = {}   # torch function -> rule


def _funcs(*names, owners=(torch, torch.Tensor)):
    found = []
    for owner in owners:
        for name in names:
            f = getattr(owner, name, None)
            if f is not None and f not in found:
                found.append(f)
    return found


def _register(funcs, rule):
    for f in funcs:
        RULES[f] = rule


def _scalar(x):
    """x as a Python float when it is a plain real number (not a bool, not a tensor), else None."""
    if isinstance(x, numbers.Real) and not isinstance(x, bool):
        return float(x)
    return None


def _tag_first(lint, out, kind, extra=None, like=None):
    """Tag `out` (or the values of a (values, indices) pair); a tag derived from `like` keeps its narrowest
    dtype and the layer its first value came from, a new one records the layer running now."""
    t = out[0] if isinstance(out, (tuple, list)) and out else out
    if taggable(t):
        if like is None:
            tag = Tag(kind, t.dtype, dict(extra or {}), lint.layer())
        else:
            tag = Tag(kind, like.narrowed(t.dtype).dtype, dict(extra or {}), like.layer)
        lint.tags.set(t, tag)


def _arg(args, kwargs, i, name):
    if len(args) > i:
        return args[i]
    return kwargs.get(name)


# -- producers: operations whose output starts a pattern ------------------------------------------------
def _producer(kind):
    def rule(lint, args, kwargs):
        if not lint.user_call():
            return None   # nnstab's own stable code, or the monitor's statistics
        return lambda out: _tag_first(lint, out, kind)
    return rule


_register(_funcs("softmax") + [F.softmax, torch.special.softmax], _producer("softmax"))
_register(_funcs("sigmoid", "sigmoid_") + [torch.special.expit], _producer("sigmoid"))
_register(_funcs("max", "amax", "logsumexp"), _producer("max"))
_register(_funcs("std", "std_mean"), _producer("std"))
_register(_funcs("var", "var_mean"), _producer("var"))


def _exp(lint, args, kwargs):
    if not lint.user_call():
        return None
    src = lint.tags.get(args[0]) if args else None
    shifted = src is not None and src.kind == "shifted"
    return lambda out: _tag_first(lint, out, "exp", {"shifted": shifted})


_register(_funcs("exp", "exp_"), _exp)


# -- what a tagged tensor becomes ------------------------------------------------------------------------
def _sum(lint, args, kwargs):
    src = lint.tags.get(args[0]) if args else None
    if src is None or src.kind != "exp":
        return None
    return lambda out: _tag_first(lint, out, "sum_exp", src.extra, like=src)


_register(_funcs("sum"), _sum)


def _add(lint, args, kwargs):
    if len(args) < 2 or kwargs.get("alpha", 1) != 1:
        return None
    a, b = args[0], args[1]
    for t, c in ((a, b), (b, a)):
        src = lint.tags.get(t) if isinstance(t, torch.Tensor) else None
        value = _scalar(c)
        if src is None or value is None:
            continue
        if src.kind == "exp" and value == 1:
            return lambda out: _tag_first(lint, out, "one_plus_exp", src.extra, like=src)
        if src.kind in PROBABILITY and 0 < value <= EPS_GUARD_MAX:
            extra = {"eps": value, "how": "add", "origin": src.kind}
            return lambda out: _tag_first(lint, out, "prob_eps", extra, like=src)
    return None


_register(_funcs("add", "__add__", "__radd__", "__iadd__", "add_"), _add)


def _sub(lint, args, kwargs):
    if len(args) < 2 or kwargs.get("alpha", 1) != 1 or not isinstance(args[1], torch.Tensor):
        return None
    src = lint.tags.get(args[1])
    if src is None or src.kind != "max":
        return None
    return lambda out: _tag_first(lint, out, "shifted")


_register(_funcs("sub", "subtract", "__sub__", "__isub__", "sub_"), _sub)


def _rsub(lint, args, kwargs):
    # 1 - p arrives as rsub(p, 1)
    if len(args) < 2 or _scalar(args[1]) != 1:
        return None
    src = lint.tags.get(args[0])
    if src is None or src.kind != "sigmoid":
        return None
    return lambda out: _tag_first(lint, out, "complement", like=src)


_register(_funcs("rsub", "__rsub__"), _rsub)


def _clamp(lint, args, kwargs):
    src = lint.tags.get(args[0]) if args else None
    if src is None or src.kind not in PROBABILITY:
        return None
    low = _scalar(_arg(args, kwargs, 1, "min"))
    if low is None or not 0 < low <= EPS_GUARD_MAX:
        return None
    extra = {"eps": low, "how": "clamp", "origin": src.kind}
    return lambda out: _tag_first(lint, out, "prob_eps", extra, like=src)


_register(_funcs("clamp", "clip", "clamp_min", "clamp_", "clip_", "clamp_min_"), _clamp)


def _sqrt(lint, args, kwargs):
    src = lint.tags.get(args[0]) if args else None
    if src is None or src.kind != "var":
        return None
    return lambda out: _tag_first(lint, out, "std", {"how": "sqrt"}, like=src)


_register(_funcs("sqrt", "sqrt_"), _sqrt)


def _pow(lint, args, kwargs):
    src = lint.tags.get(args[0]) if args and isinstance(args[0], torch.Tensor) else None
    if src is None or src.kind != "var":
        return None
    exponent = _scalar(_arg(args, kwargs, 1, "exponent"))
    if exponent == 0.5:
        return lambda out: _tag_first(lint, out, "std", {"how": "sqrt"}, like=src)
    if exponent == -0.5:
        lint.observe("div_std", args[0], src, formula="var ** -0.5")
    return None


_register(_funcs("pow", "__pow__", "pow_", "__ipow__"), _pow)


# -- consumers: operations that complete a pattern -------------------------------------------------------
_LOG_OF = {"softmax": "log_softmax", "sigmoid": "log_sigmoid", "complement": "log_one_minus_sigmoid",
           "one_plus_exp": "log_one_plus_exp", "prob_eps": "log_p_eps"}


def _log(lint, args, kwargs):
    src = lint.tags.get(args[0]) if args else None
    if src is None:
        return None
    pattern = _LOG_OF.get(src.kind)
    if src.kind == "sum_exp" and not src.extra.get("shifted"):
        pattern = "log_sum_exp"
    if pattern is not None:
        formula = "log(clamp(p, min=eps))" if src.extra.get("how") == "clamp" else None
        lint.observe(pattern, args[0], src, formula=formula)
    return None


_register(_funcs("log", "log_"), _log)


def _log1p(lint, args, kwargs):
    src = lint.tags.get(args[0]) if args else None
    if src is not None and src.kind == "exp" and not src.extra.get("shifted"):
        lint.observe("log1p_exp", args[0], src)
    return None


_register(_funcs("log1p", "log1p_"), _log1p)


_STD_FORMULA = {"sqrt": "x / sqrt(var)"}


def _div(lint, args, kwargs):
    if len(args) < 2 or kwargs.get("rounding_mode") is not None:
        return None
    a, b = args[0], args[1]
    den = lint.tags.get(b) if isinstance(b, torch.Tensor) else None
    if den is None:
        return None
    if den.kind == "std":
        lint.observe("div_std", b, den, formula=_STD_FORMULA.get(den.extra.get("how"), "x / x.std(dim)"))
        return None
    num = lint.tags.get(a) if isinstance(a, torch.Tensor) else None
    if den.kind == "sum_exp" and num is not None and num.kind == "exp":
        if not (num.extra.get("shifted") and den.extra.get("shifted")):
            lint.observe("naive_softmax", a, num)
        return lambda out: _tag_first(lint, out, "softmax", like=num)
    return None


_register(_funcs("div", "divide", "true_divide", "__truediv__", "__div__", "__itruediv__", "__idiv__", "div_",
                 "true_divide_"), _div)


def _reciprocal_of(kind, formula):
    """rsqrt(var) and 1 / std: a division by a standard deviation, written as a factor."""
    def rule(lint, args, kwargs):
        src = lint.tags.get(args[0]) if args and isinstance(args[0], torch.Tensor) else None
        if src is not None and src.kind == kind:
            lint.observe("div_std", args[0], src, formula=formula)
        return None
    return rule


_register(_funcs("rsqrt", "rsqrt_"), _reciprocal_of("var", "rsqrt(var)"))
_register(_funcs("reciprocal", "reciprocal_", "__rtruediv__", "__rdiv__"), _reciprocal_of("std", "1 / std"))


def _binary_cross_entropy(lint, args, kwargs):
    p = _arg(args, kwargs, 0, "input")
    src = lint.tags.get(p) if isinstance(p, torch.Tensor) else None
    if src is not None and (src.kind == "sigmoid" or src.extra.get("origin") == "sigmoid"):
        lint.observe("sigmoid_bce", p, src)   # also a clamped sigmoid: the clamp caps, it does not fix
    return None


_register([F.binary_cross_entropy], _binary_cross_entropy)


# -- operations that keep a value as it is (views, copies, casts, selections) ----------------------------
def _keep(lint, args, kwargs):
    src = lint.tags.get(args[0]) if args and isinstance(args[0], torch.Tensor) else None
    if src is None:
        return None

    def after(out):
        for t in (out if isinstance(out, (tuple, list)) else (out,)):
            if taggable(t):
                lint.tags.set(t, src.narrowed(t.dtype))
    return after


_register(_funcs(
    "__getitem__", "gather", "index_select", "take_along_dim", "select", "narrow", "view", "reshape", "flatten",
    "squeeze", "unsqueeze", "transpose", "permute", "t", "contiguous", "clone", "detach", "float", "double",
    "half", "bfloat16", "to", "type_as", "masked_select", "expand", "expand_as", "view_as", "reshape_as",
    "chunk", "split", "unbind", "movedim", "diagonal", "squeeze_", "unsqueeze_",
), _keep)


# -- in-place operations change their first argument: the linter drops its old tag after them ------------
def _inplace_funcs():
    names = [n for n in dir(torch.Tensor) if n.endswith("_") and not n.startswith("_")]
    names += [n for n in dir(torch.Tensor) if n.startswith("__i") and n.endswith("__")
              and n not in ("__init__", "__init_subclass__", "__iter__", "__index__", "__int__", "__invert__")]
    found = set()
    for name in names:
        f = getattr(torch.Tensor, name, None)
        if callable(f):
            try:
                found.add(f)
            except TypeError:   # unhashable attribute
                pass
    return frozenset(found)


def _no_rule(lint, args, kwargs):
    return None


INPLACE = _inplace_funcs()
for _f in INPLACE:
    RULES.setdefault(_f, _no_rule)
