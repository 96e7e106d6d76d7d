"""Arbitrary arguments and inputs to nnstab.nn: a clear refusal naming what is wrong, or a right-shaped answer.

Constructors: sizes are ints (not "3", 3.5 or True) within range, rates are real numbers within range;
anything else raises TypeError or ValueError naming the argument, and a valid call keeps the values.
Forward: an input of the wrong kind, dtype, rank or size raises LayerDtypeError (a TypeError) or
LayerInputError (a ValueError) naming the layer and what it expected; otherwise the output is an
array of the documented shape and the input's dtype, NaN rows stay NaN, and backward returns an array
of the input's shape and dtype (a grad_output of another shape is refused). Errors deep in a
Sequential carry the failing layer's qualified name. Losses and optimisers follow the same law.
"""
from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from nnstab import nn
from nnstab.nn import optim

SIZES = (1, 2, 3, 1, 2, 3, 0, -1, 2.0, 3.5, "3", True, None, np.int64(2))
REALS = (0.0, 0.1, 0.5, 1.0, 0.25, 0.5, -0.5, 1.5, float("nan"), "0.5", None, True, np.float32(0.5))
AXES = (-1, 1, 0, -1, 1.0, "1", None, np.int64(-1))


def is_int(v):
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def is_real(v):
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


def in_range(v, low=None, high=None):
    return is_real(v) and (low is None or v >= low) and (high is None or v <= high)


def pair_ok(v, low):
    items = (v, v) if is_int(v) else tuple(v) if isinstance(v, (tuple, list)) else ()
    return len(items) == 2 and all(is_int(i) and i >= low for i in items)


# (constructor, {argument: pool}, validity of the drawn arguments: None if valid, else the names to blame)
def _size_rule(**minimums):
    def rule(a):
        bad = [k for k, low in minimums.items() if not (is_int(a[k]) and a[k] >= low)]
        return bad or None
    return rule


def _window_rule(a):
    bad = [k for k in ("kernel_size", "stride") if k in a and not (a[k] is None and k == "stride")
           and not pair_ok(a[k], 1)]
    bad += ["padding"] if "padding" in a and not pair_ok(a["padding"], 0) else []
    return bad or None


CONSTRUCTORS = {
    "Dense": (nn.Dense, {"in_features": SIZES, "out_features": SIZES}, _size_rule(in_features=0, out_features=0)),
    "Perceptron": (nn.Perceptron, {"in_features": SIZES}, _size_rule(in_features=0)),
    "Conv2d": (nn.Conv2d, {"in_channels": SIZES, "out_channels": SIZES, "kernel_size": SIZES + ((2, 1), (1,)),
                           "stride": (1, 2, 0, 1.0), "padding": (0, 1, -1, "same")},
               lambda a: (_size_rule(in_channels=0, out_channels=0)(a) or []) + (_window_rule(a) or []) or None),
    "MaxPool2d": (nn.MaxPool2d, {"kernel_size": SIZES + ((2, 1),), "stride": (None, 1, 2, 0, 1.5)}, _window_rule),
    "AvgPool2d": (nn.AvgPool2d, {"kernel_size": SIZES + ((2, 1),), "stride": (None, 1, 2, 0, 1.5)}, _window_rule),
    "Flatten": (nn.Flatten, {"start_dim": AXES, "end_dim": AXES},
                lambda a: [k for k in a if not is_int(a[k])] or None),
    "Dropout": (nn.Dropout, {"p": REALS}, lambda a: None if in_range(a["p"], 0, 1) else ["p"]),
    "BatchNorm": (nn.BatchNorm, {"num_features": SIZES, "eps": (1e-5, 0.0, -1.0, "1e-5"),
                                 "momentum": (0.1, None, 1.0, 2.0, "0.1")},
                  lambda a: ((_size_rule(num_features=1)(a) or []) + (["eps"] if not in_range(a["eps"], 0) else [])
                             + (["momentum"] if a["momentum"] is not None and not in_range(a["momentum"], 0, 1)
                                else [])) or None),
    "LeakyReLU": (nn.LeakyReLU, {"negative_slope": REALS}, lambda a: None if in_range(a["negative_slope"]) else
                  ["negative_slope"]),
    "ELU": (nn.ELU, {"alpha": REALS}, lambda a: None if in_range(a["alpha"]) else ["alpha"]),
    "Softmax": (nn.Softmax, {"axis": AXES}, lambda a: None if is_int(a["axis"]) else ["axis"]),
    "LogSoftmax": (nn.LogSoftmax, {"axis": AXES}, lambda a: None if is_int(a["axis"]) else ["axis"]),
}


def names_one_of(message, names):
    return any(re.search(rf"(?<![\w.]){re.escape(n)}(?!\w)", message) for n in names)


@pytest.mark.parametrize("name", CONSTRUCTORS)
@settings(max_examples=30)
@given(data=st.data())
def test_a_constructor_refuses_naming_the_argument_or_keeps_the_values(name, data):
    cls, pools, rule = CONSTRUCTORS[name]
    kwargs = {k: data.draw(st.sampled_from(pool), label=k) for k, pool in pools.items()}
    blame = rule(kwargs)
    if blame:
        event("refused")
        with pytest.raises((TypeError, ValueError)) as info:
            cls(**kwargs)
        assert names_one_of(str(info.value), blame), f"{info.value!s} names none of {blame}"
        return
    event("built")
    layer = cls(**kwargs)
    for k, v in kwargs.items():
        kept = getattr(layer, k)
        if v is not None and not isinstance(kept, tuple):
            same = kept == v or (np.isnan(kept) and np.isnan(v))
            assert same and type(kept) in (int, float), f"{name}.{k} = {kept!r}, passed {v!r}"


# ---------------------------------------------------------------- forward and backward

def layers():
    """(name, factory) for a small layer of each kind, float32 parameters."""
    return {
        "Dense": lambda: nn.Dense(3, 2, rng=0), "Dense0": lambda: nn.Dense(0, 2, rng=0),
        "Perceptron": lambda: nn.Perceptron(3), "Conv2d": lambda: nn.Conv2d(2, 3, 2, padding=1, rng=0),
        "MaxPool2d": lambda: nn.MaxPool2d(2), "AvgPool2d": lambda: nn.AvgPool2d(2, stride=1),
        "Flatten": lambda: nn.Flatten(), "Dropout": lambda: nn.Dropout(0.5, rng=0),
        "BatchNorm": lambda: nn.BatchNorm(3), "BatchNorm-eval": lambda: nn.BatchNorm(3).eval(),
        "ReLU": nn.ReLU, "LeakyReLU": nn.LeakyReLU, "Sigmoid": nn.Sigmoid, "Tanh": nn.Tanh, "Softmax": nn.Softmax,
        "LogSoftmax": nn.LogSoftmax, "ELU": nn.ELU, "SELU": nn.SELU, "Softplus": nn.Softplus,
        "Softsign": nn.Softsign, "Identity": nn.Identity, "Step": nn.Step,
    }


PARAMETRISED = {"Dense", "Dense0", "Perceptron", "Conv2d", "BatchNorm", "BatchNorm-eval"}
ROWWISE = {"Softmax", "LogSoftmax"}
ELEMENTWISE = {"ReLU", "LeakyReLU", "Sigmoid", "Tanh", "ELU", "SELU", "Softplus", "Softsign", "Identity"}


def expected_shape(name, s):
    """The output shape for input shape s, or None where the layer must refuse it."""
    if name in ("Dense", "Dense0"):
        return s[:-1] + (2,) if len(s) >= 1 and s[-1] == (3 if name == "Dense" else 0) else None
    if name == "Perceptron":
        return s[:1] if len(s) == 2 and s[1] == 3 else None
    if name in ("Conv2d", "MaxPool2d", "AvgPool2d"):
        if len(s) != 4 or (name == "Conv2d" and s[1] != 2):
            return None
        k, stride, pad = {"Conv2d": (2, 1, 1), "MaxPool2d": (2, 2, 0), "AvgPool2d": (2, 1, 0)}[name]
        h, w = ((d + 2 * pad - k) // stride + 1 for d in s[2:])
        return (s[0], 3 if name == "Conv2d" else s[1], h, w) if h >= 1 and w >= 1 else None
    if name == "Flatten":
        return (s[0], int(np.prod(s[1:]))) if len(s) >= 2 else None
    if name.startswith("BatchNorm"):
        if len(s) < 2 or s[1] != 3:
            return None
        n = int(np.prod(s)) // 3
        return s if name == "BatchNorm-eval" or n != 1 else None
    if name in ROWWISE:
        return s if len(s) >= 1 else None
    return s


DIM = st.sampled_from((2, 3, 1, 4, 0))
FITTING = {   # input shapes a layer accepts (mostly): drawn half of the time
    "Dense": st.tuples(DIM, st.just(3)) | st.tuples(DIM, DIM, st.just(3)), "Dense0": st.tuples(DIM, st.just(0)),
    "Perceptron": st.tuples(DIM, st.just(3)), "Conv2d": st.tuples(DIM, st.just(2), DIM, DIM),
    "MaxPool2d": st.tuples(DIM, DIM, DIM, DIM), "AvgPool2d": st.tuples(DIM, DIM, DIM, DIM),
    "BatchNorm": st.tuples(DIM, st.just(3)) | st.tuples(DIM, st.just(3), DIM, DIM),
}
FITTING["BatchNorm-eval"] = FITTING["BatchNorm"]


@st.composite
def inputs(draw, fitting=None):
    """(what is passed, its dtype name or None, its shape or None): mostly float32 arrays in a drawn view."""
    shape = tuple(draw(fitting if fitting is not None and draw(st.booleans()) else st.lists(DIM, max_size=4)))
    dtype = draw(st.sampled_from(("float32",) * 8 + ("float64", "float16", "int64", "bool")))
    elements = st.sampled_from((0.0, 1.0, -2.0, 0.5, np.nan, 3.0)) | st.floats(-5, 5)
    n = int(np.prod(shape))
    v = np.array(draw(st.lists(elements, min_size=n, max_size=n)), dtype=np.float64).reshape(shape)
    v = np.nan_to_num(v).astype(dtype) if dtype in ("int64", "bool") else v.astype(dtype)
    view = draw(st.sampled_from(("plain", "plain", "step", "transpose")))
    if view == "step" and v.ndim:
        wide = np.zeros(shape[:-1] + (2 * shape[-1],), dtype=dtype)
        wide[..., ::2] = v
        v = wide[..., ::2]
    elif view == "transpose" and v.ndim >= 2:
        v = np.ascontiguousarray(v.T).T
    kind = draw(st.sampled_from(("array",) * 12 + ("list", "scalar")))
    if kind == "list":
        return v.tolist(), None, None
    if kind == "scalar":
        return np.float32(1.0), None, None
    return v, dtype, shape


@pytest.mark.parametrize("name", list(layers()))
@settings(max_examples=25)
@given(data=st.data())
def test_a_layer_refuses_bad_input_naming_itself_or_answers_in_shape(name, data):
    layer = layers()[name]()
    x, dtype, shape = data.draw(inputs(FITTING.get(name)), label="x")
    want = expected_shape(name, shape) if shape is not None else None
    dtype_ok = dtype in ("float32",) if name in PARAMETRISED else dtype in ("float16", "float32", "float64")
    if want is None or not dtype_ok:
        event("refused")
        error = nn.LayerDtypeError if not dtype_ok else nn.LayerInputError
        with pytest.raises(error) as info:
            layer(x)
        assert str(info.value).startswith(type(layer).__name__ + "("), str(info.value)
        return
    event("answered")
    y = layer(x)
    assert isinstance(y, np.ndarray) and y.shape == want and y.dtype == x.dtype, (type(y), getattr(y, "shape", None))
    if name == "Dense":                     # a NaN in an input row makes that output row NaN
        assert np.isnan(y[np.isnan(x).any(-1)]).all()
    if name in ELEMENTWISE:                 # NaN in, NaN out, element by element
        assert np.isnan(y[np.isnan(x)]).all()
    if name in ROWWISE:
        assert np.isnan(y[np.broadcast_to(np.isnan(x).any(-1, keepdims=True), x.shape)]).all()
    g = np.ones(want, dtype=x.dtype)
    dx = layer.backward(g)
    assert isinstance(dx, np.ndarray) and dx.shape == x.shape and dx.dtype == x.dtype
    with pytest.raises(nn.LayerInputError, match=r"grad_output of the output's shape"):
        layer.backward(np.ones(want + (2,), dtype=x.dtype))


@settings(max_examples=30)
@given(widths=st.lists(st.sampled_from((2, 3, 4)), min_size=2, max_size=5), batch=st.sampled_from((0, 1, 3)))
def test_an_error_deep_in_a_sequential_names_the_failing_layer(widths, batch):
    """Dense layers whose sizes may not chain: the first mismatch is reported with its qualified name."""
    pairs = list(zip(widths[::2], widths[1::2]))
    model = nn.Sequential(*[m for i, o in pairs for m in (nn.Dense(i, o, rng=0), nn.Tanh())])
    x = np.ones((batch, pairs[0][0]), np.float32)
    broken = next((2 * k for k in range(1, len(pairs)) if pairs[k][0] != pairs[k - 1][1]), None)
    if broken is None:
        assert model(x).shape == (batch, pairs[-1][1])
        return
    with pytest.raises(nn.LayerInputError) as info:
        model(x)
    assert info.value.layer == str(broken) and f"at '{broken}'" in str(info.value)


# ---------------------------------------------------------------- losses and optimisers

LOSSES = {"MSELoss": nn.MSELoss, "BCELoss": nn.BCELoss, "BCEWithLogitsLoss": nn.BCEWithLogitsLoss,
          "CrossEntropyLoss": nn.CrossEntropyLoss, "KLDivLoss": nn.KLDivLoss}


@pytest.mark.parametrize("name", LOSSES)
@settings(max_examples=25)
@given(data=st.data())
def test_a_loss_refuses_naming_the_problem_or_gives_a_float_and_a_gradient_like_the_output(name, data):
    reduction = data.draw(st.sampled_from(("mean", "sum", "none", "avg")), label="reduction")
    if reduction == "avg":
        with pytest.raises(ValueError, match="reduction"):
            LOSSES[name](reduction=reduction)
        return
    loss_fn = LOSSES[name](reduction=reduction)
    out, dtype, shape = data.draw(inputs(), label="out")
    if isinstance(out, np.ndarray) and out.dtype.kind == "f" and name in ("BCELoss", "KLDivLoss"):
        out = np.abs(out) / (1 + np.abs(out)) if data.draw(st.booleans(), label="probabilities") else out
    y = data.draw(st.sampled_from(("like", "like", "labels", "shorter", "text")), label="target")
    target = {"like": lambda: np.full(getattr(out, "shape", ()), 0.5),
              "labels": lambda: np.zeros(getattr(out, "shape", (1,))[:1], np.int64),
              "shorter": lambda: np.zeros(getattr(out, "shape", (1,))[1:]),
              "text": lambda: np.array(["a"])}[y]()
    if name == "CrossEntropyLoss" and y == "like" and np.ndim(out) >= 1:
        target = np.full(np.shape(out), 1.0 / max(np.shape(out)[1 if np.ndim(out) >= 2 else 0], 1))
    try:
        value = loss_fn(out, target)
    except (TypeError, ValueError) as e:
        event("refused")
        assert names_one_of(str(e), (name, "target", "logits", "probs", "p", "q", "pred", "axis")), str(e)
        return
    except Exception as e:   # anything else is a crash
        raise AssertionError(f"{name}({getattr(out, 'shape', out)}, {target.shape}) crashed: {e!r}") from e
    event("answered")
    assert isinstance(value, float) if reduction != "none" else isinstance(value, np.ndarray)
    grad = loss_fn.backward()
    assert isinstance(grad, np.ndarray) and grad.shape == out.shape and grad.dtype == out.dtype


OPTIMISERS = {"SGD": (optim.SGD, {"lr": REALS, "momentum": (0.0, 0.9, -1.0, "0.9"), "weight_decay": (0.0, -1, None)}),
              "AdaGrad": (optim.AdaGrad, {"lr": REALS, "lr_decay": (0.0, -1.0), "eps": (1e-10, -1.0, "x")}),
              "RMSProp": (optim.RMSProp, {"lr": REALS, "alpha": (0.99, -0.1), "momentum": (0.0, 0.5, None)}),
              "Adam": (optim.Adam, {"lr": REALS, "betas": ((0.9, 0.999), (0.9,), (1.0, 0.9), "ab", (0.9, "x")),
                                    "eps": (1e-8, -1.0)})}


@pytest.mark.parametrize("name", OPTIMISERS)
@settings(max_examples=25)
@given(data=st.data())
def test_an_optimiser_refuses_bad_hyper_parameters_naming_them_or_takes_a_step(name, data):
    cls, pools = OPTIMISERS[name]
    kwargs = {k: data.draw(st.sampled_from(pool), label=k) for k, pool in pools.items()}
    params = data.draw(st.sampled_from(("parameters", "parameters", "module", "arrays", "empty")), label="params")
    model = nn.Dense(2, 1, rng=0)
    given_params = {"parameters": model.parameters(), "module": model, "arrays": [np.ones(2)], "empty": []}[params]
    bad = [k for k, v in kwargs.items() if not (in_range(v, 0) if k != "betas" else
                                                isinstance(v, tuple) and len(v) == 2 and all(in_range(b, 0, 0.999)
                                                                                           for b in v))]
    if bad or params != "parameters":
        with pytest.raises((TypeError, ValueError)) as info:
            cls(given_params, **kwargs)
        assert names_one_of(str(info.value), bad + ["params", "parameters", "parameter list"]), str(info.value)
        return
    opt = cls(given_params, **kwargs)
    model(np.ones((3, 2), np.float32))
    model.backward(np.ones((3, 1), np.float32))
    opt.step()
    assert all(p.data.dtype == np.float32 for p in model.parameters())
