"""Arbitrary input to the 11 numeric functions: a clear refusal naming a wrong argument, or a right-shaped answer.

The law checked for every call, NumPy and torch (both torch paths: NumPy kernels on shared memory, and
the torch ops a CUDA tensor takes):

- if the call breaks the contract of reports/bad-input.md (a non-float or non-array input, a kind or device
  mismatch, a 'meta' tensor, mismatched shapes, a wrong axis, reduction, keepdims or log_input, labels
  out of range, probabilities outside [0, 1], soft labels not summing to 1), it raises TypeError or
  ValueError, of the type the contract gives, and the message names the argument;
- otherwise it returns the input's kind (NumPy array, NumPy scalar for 0-d, or tensor), dtype and
  device, in the documented shape; NaN in a row (or an element) makes exactly that result NaN, and
  nothing else is NaN except where the documentation says so (mean of nothing, (inf - inf)**2);
- a strided, transposed, reversed or broadcast view gives bit for bit what its contiguous copy gives;
- a tensor that requires grad gives the same values and a gradient of its own shape and dtype;
- no call emits a RuntimeWarning (overflow, invalid value): NaN and inf are input like any other.

`problems` below is the contract written as a checklist; it decides what must raise, the library decides how.
"""
from __future__ import annotations

import contextlib
import importlib
import re
import warnings
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch
from hypothesis import event, given, settings
from hypothesis import strategies as st

import nnstab

lse_module = importlib.import_module("nnstab.numerics.softmax_family")
ce_module = importlib.import_module("nnstab.numerics.categorical")

UNARY = ("sigmoid", "log_sigmoid", "softplus")
ROWS = ("softmax", "log_softmax", "logsumexp")
PAIRS = ("binary_cross_entropy", "binary_cross_entropy_with_logits", "mse")
FUNCTIONS = UNARY + ROWS + PAIRS + ("cross_entropy", "kl_div")
FIRST = {"binary_cross_entropy": ("probs", "target"), "binary_cross_entropy_with_logits": ("logits", "target"),
         "mse": ("pred", "target"), "cross_entropy": ("logits", "target"), "kl_div": ("p", "q")}   # argument names

FLOATS = ("float16", "float32", "float64")
NOT_FLOATS = ("int8", "int32", "int64", "uint8", "bool", "complex64", "complex128")
INTS = ("int8", "int16", "int32", "int64", "uint8")
BAD_TARGET = ("bool", "complex64", "complex128")    # cross_entropy takes integer targets as class indices
SPECIAL = (0.0, -0.0, 0.25, 0.5, 1.0, -1.0, 2.0, 1e-3, 30.0, -30.0, 1e4, -1e4, np.nan, np.inf, -np.inf)
VIEWS = ("plain", "plain", "step", "transpose", "reverse", "broadcast")
BAD_AXES = (1.0, None, "0", True, (0,))


# ---------------------------------------------------------------- arguments

@dataclass
class Arg:
    """One argument: what is passed, its values as NumPy (None if not an array), and its contiguous copy."""

    value: object
    values: np.ndarray | None = None
    dtype: str = ""
    backend: str = ""
    copy: object = None
    problems: list = field(default_factory=list)   # (exception type, names) this argument alone causes


@st.composite
def values(draw, dtype, shape, domain="any"):
    """float64/int/bool/complex NumPy values of a shape; domain "unit" ([0, 1] and NaN) or "nonpos" (<= 0, NaN)."""
    n = int(np.prod(shape))
    if dtype == "bool":
        return np.array(draw(st.lists(st.booleans(), min_size=n, max_size=n)), dtype=bool).reshape(shape)
    if dtype in INTS:
        lo = 0 if dtype == "uint8" else -3
        return np.array(draw(st.lists(st.integers(lo, 5), min_size=n, max_size=n)), dtype=dtype).reshape(shape)
    floats = st.sampled_from(SPECIAL) | st.floats(-10, 10) | st.floats(0, 1)
    if domain == "unit":
        floats = st.sampled_from((0.0, 1.0, 0.5, np.nan)) | st.floats(0, 1)
    elif domain == "nonpos":
        floats = st.sampled_from((0.0, -np.inf, -1.0, np.nan)) | st.floats(-40, 0)
    v = np.array(draw(st.lists(floats, min_size=n, max_size=n)), dtype=np.float64).reshape(shape)
    with np.errstate(invalid="ignore"):   # inf * 0.5j has a NaN real part: fine for a refused dtype
        return v + 0.5j * v if dtype.startswith("complex") else v


def as_array(v, dtype, backend):
    if backend == "numpy":
        with np.errstate(invalid="ignore", over="ignore"):
            return v.astype(dtype)
    if dtype == "bfloat16":
        return torch.from_numpy(v.astype(np.float32)).to(torch.bfloat16)
    return torch.from_numpy(np.array(v, dtype=dtype, order="C", copy=True))


def make_view(v, dtype, backend, how):
    """(a view with the values v as stored in dtype, or None when `how` does not apply to this shape/backend)."""
    if how == "step" and v.ndim >= 1:
        wide = np.zeros(v.shape[:-1] + (2 * v.shape[-1],), dtype=v.dtype)
        wide[..., ::2] = v
        return as_array(wide, dtype, backend)[..., ::2]
    if how == "transpose" and v.ndim >= 2:
        base = as_array(np.ascontiguousarray(v.T), dtype, backend)
        return base.T if backend == "numpy" else (base.t() if v.ndim == 2 else base.permute(*range(v.ndim - 1, -1, -1)))
    if how == "reverse" and v.ndim >= 1 and backend == "numpy":
        return as_array(np.ascontiguousarray(v[..., ::-1]), dtype, backend)[..., ::-1]
    if how == "broadcast" and v.ndim >= 1:
        row = as_array(np.ascontiguousarray(v[:1]), dtype, backend)
        return np.broadcast_to(row, v.shape) if backend == "numpy" else row.expand(*v.shape)
    return None


@st.composite
def array_arg(draw, backend, shape, name, domain="any", faults=(), dtypes=None, bad_dtypes=NOT_FLOATS, fixed=None):
    """An array argument named `name` of `shape`, in a drawn view; `faults` may ask for a wrong dtype/kind/device.

    dtypes: the dtypes to draw from (default: the floats of the backend); "dtype" in faults draws one of
    bad_dtypes instead. fixed: the values to hold (else drawn from `domain`).
    """
    floats = dtypes or FLOATS + (("bfloat16",) if backend == "torch" else ())
    dtype = draw(st.sampled_from(bad_dtypes if "dtype" in faults else floats))
    v = fixed if fixed is not None else draw(values(dtype if dtype in NOT_FLOATS + INTS else "float64", shape, domain))
    how = draw(st.sampled_from(VIEWS if dtype != "bool" else ("plain",)))
    if how == "broadcast" and v.ndim >= 1:
        v = np.broadcast_to(v[:1], v.shape).copy()
    a = make_view(v, dtype, backend, how)
    a = as_array(v, dtype, backend) if a is None else a
    kind = draw(st.sampled_from(("list", "other-kind") + (("meta",) if backend == "torch" else ()))) \
        if "kind" in faults else "array"
    if kind == "list":
        return Arg(v.tolist(), problems=[(TypeError, {name})])
    if kind == "other-kind":   # a problem only next to an argument of the other library
        a = torch.from_numpy(np.array(a, order="C", copy=True)) if backend == "numpy" else \
            (a.float() if dtype == "bfloat16" else a).numpy()
        dtype = "float32" if dtype == "bfloat16" else dtype
        backend = "torch" if backend == "numpy" else "numpy"
    arg = Arg(a, dtype=dtype, backend=backend)
    if dtype in bad_dtypes:
        arg.problems.append((TypeError, {name}))
        return arg
    arg.values = np.asarray(a.float() if dtype == "bfloat16" else a, dtype=None if dtype in INTS else np.float64)
    arg.copy = np.array(a, order="C", copy=True) if backend == "numpy" else a.contiguous().clone()
    if kind == "meta":
        arg.value = a.to("meta")
        arg.problems.append((ValueError, {name}))
    return arg


def shape_strategy(min_dims=0):
    """Up to 3 dimensions of 1-4 entries, some of them empty (0)."""
    return st.lists(st.sampled_from((1, 2, 3, 4, 0)), min_size=min_dims, max_size=3).map(tuple)


def without(shape, axis):
    return shape[:axis] + shape[axis + 1:]


def valid_axis(axis, ndim):
    return isinstance(axis, (int, np.integer)) and not isinstance(axis, bool) and ndim > 0 and -ndim <= axis < ndim


# ---------------------------------------------------------------- calls

@dataclass
class Call:
    name: str
    args: list            # Arg objects, positional
    kwargs: dict
    problems: list = field(default_factory=list)
    axis: int | None = None
    hard: bool = False     # cross_entropy with class indices
    valid_rows: np.ndarray | None = None   # cross_entropy: rows not ignored

    def run(self, contiguous=False):
        args = [a.copy if contiguous else a.value for a in self.args]
        return getattr(nnstab, self.name)(*args, **self.kwargs)


def fault_kinds(name):
    """What a call of `name` can get wrong (besides the values that happen to be drawn)."""
    kinds = ["dtype:0", "kind:0"]
    if name not in UNARY:
        kinds += ["axis-type", "axis-range"] if name not in PAIRS else []
    if name == "logsumexp":
        kinds.append("keepdims")
    if name in PAIRS + ("cross_entropy", "kl_div"):
        kinds += ["dtype:1", "kind:1", "shape", "reduction", "values:0", "values:1"]
    if name == "cross_entropy":
        kinds.append("ignore_index")
    if name == "kl_div":
        kinds.append("log_input")
    return kinds


@st.composite
def calls(draw, name, backend):
    """A call of nnstab.<name>: mostly valid arguments with 0-2 deliberate faults (the checklist decides)."""
    n_faults = draw(st.sampled_from((0, 0, 0, 0, 1, 1, 2)))
    faults = set(draw(st.lists(st.sampled_from(fault_kinds(name)), min_size=n_faults, max_size=n_faults, unique=True)))
    on = {i: {f.split(":")[0] for f in faults if f.endswith(f":{i}")} for i in (0, 1)}
    shape = draw(shape_strategy(min_dims=0 if name in UNARY + PAIRS or draw(st.integers(0, 5)) == 0 else 1))
    axis = draw(st.sampled_from((-1, -1, -1, 0, 1, 2, -2)))
    axis = draw(st.sampled_from(BAD_AXES)) if "axis-type" in faults else \
        draw(st.sampled_from((len(shape), -len(shape) - 1, 7))) if "axis-range" in faults else \
        axis if valid_axis(axis, len(shape)) else -1
    if name in UNARY + ROWS:
        call = Call(name, [draw(array_arg(backend, shape, "x", faults=on[0]))], {"axis": axis} if name in ROWS else {})
        if name == "logsumexp":
            call.kwargs["keepdims"] = draw(st.sampled_from((1, "yes", None) if "keepdims" in faults
                                                           else (False, True, np.True_)))
    elif name == "cross_entropy":
        call = draw(cross_entropy_calls(backend, shape, axis, faults, on))
    else:
        log_input = draw(st.sampled_from((1, None, "yes"))) if "log_input" in faults else draw(st.booleans())
        if name == "kl_div":     # probabilities, or log-probabilities (<= 0) with log_input=True
            domains = ["nonpos" if log_input is True else "unit"] * 2
        else:                    # probs and the binary targets in [0, 1]; logits, pred and mse's target anything
            domains = ["unit" if name == "binary_cross_entropy" else "any", "any" if name == "mse" else "unit"]
        domains = ["any" if f"values:{i}" in faults else d for i, d in enumerate(domains)]
        names = FIRST[name]
        a = draw(array_arg(backend, shape, names[0], domains[0], on[0]))
        b_shape = draw(st.sampled_from((shape[1:], shape + (2,), shape[:-1] + (5,)))) if "shape" in faults else shape
        b = draw(array_arg(backend, b_shape, names[1], domains[1], on[1]))
        call = Call(name, [a, b], {})
        if name == "kl_div":
            call.kwargs.update(axis=axis, log_input=log_input)
    if name in PAIRS + ("cross_entropy", "kl_div"):
        call.kwargs["reduction"] = draw(st.sampled_from(("batchmean", None, "MEAN") if "reduction" in faults
                                                        else ("none", "mean", "sum")))
    if call.kwargs.get("axis") == -1 and draw(st.booleans()):
        call.kwargs.pop("axis")     # the default, -1
    call.problems = problems(call)
    return call


@st.composite
def cross_entropy_calls(draw, backend, shape, axis, faults, on):
    logits = draw(array_arg(backend, shape, "logits", faults=on[0]))
    ok_axis = valid_axis(axis, len(shape))
    n_classes = shape[axis] if ok_axis else 2
    hard = draw(st.booleans())
    ignore_index = draw(st.sampled_from((1.5, True, "-100") if "ignore_index" in faults
                                        else ((None, None, -100, 0) if hard else (None,))))
    if hard:       # class indices of the shape of logits without axis
        t_shape = without(shape, axis) if ok_axis else shape[1:]
        if "shape" in faults:
            t_shape = draw(st.sampled_from((shape, t_shape + (1,))))
        dtype = draw(st.sampled_from(INTS))
        lo, hi = (-3, n_classes + 1) if "values:1" in faults or not n_classes else (0, n_classes - 1)
        lo, hi = (max(lo, 0), max(hi, 0)) if dtype == "uint8" else (lo, hi)
        n = int(np.prod(t_shape))
        v = np.array(draw(st.lists(st.integers(lo, hi), min_size=n, max_size=n)), dtype=np.int64).reshape(t_shape)
        if ignore_index == -100 and dtype != "uint8" and v.size:
            v.flat[draw(st.integers(0, v.size - 1))] = -100
        target = draw(array_arg(backend, t_shape, "target", faults=on[1], dtypes=(dtype,), bad_dtypes=BAD_TARGET,
                                 fixed=v))
    else:          # probabilities, rows normalised along axis
        w = draw(values("float64", shape, "unit"))
        if ok_axis and "values:1" not in faults:
            w = np.where(np.isnan(w), 0.5, w)
            w = np.where(w.sum(axis, keepdims=True) == 0, 1.0, w)
            w = w / w.sum(axis, keepdims=True)
            if draw(st.integers(0, 5)) == 0 and w.size:
                w.flat[draw(st.integers(0, w.size - 1))] = np.nan
        if "shape" in faults:
            w = w[..., :-1] if w.ndim and w.shape[-1] else w[None]
        target = draw(array_arg(backend, w.shape, "target", faults=on[1], bad_dtypes=BAD_TARGET, fixed=w))
    call = Call("cross_entropy", [logits, target], {"axis": axis})
    if ignore_index is not None:
        call.kwargs["ignore_index"] = ignore_index
    return call


# ---------------------------------------------------------------- the contract, as a checklist

def problems(call):
    """(exception type, names any of which the message may name) for each broken rule; empty if the call is valid."""
    out = [p for a in call.args for p in a.problems]
    first = call.args[0]
    names = ("x",) if call.name in UNARY + ROWS else FIRST[call.name]
    if len(call.args) == 2 and len({a.backend for a in call.args}) == 2:
        out.append((TypeError, set(names)))
    if len(call.args) == 2 and all(_is_tensor(a.value) for a in call.args) \
            and call.args[0].value.device != call.args[1].value.device:
        out.append((ValueError, set(names)))
    ndim = np.ndim(first.values) if first.values is not None else None
    axis = call.kwargs.get("axis", -1)
    if "axis" in call.kwargs or call.name in ROWS + ("cross_entropy", "kl_div"):
        if not (isinstance(axis, (int, np.integer)) and not isinstance(axis, bool)):
            out.append((TypeError, {"axis"}))
        elif ndim is not None and not valid_axis(axis, ndim):
            out.append((ValueError, {"axis", names[0]}))
        elif ndim is not None:
            call.axis = axis % ndim
    if "keepdims" in call.kwargs and not isinstance(call.kwargs["keepdims"], (bool, np.bool_)):
        out.append((TypeError, {"keepdims"}))
    if "reduction" in call.kwargs and call.kwargs["reduction"] not in ("none", "mean", "sum"):
        out.append((ValueError, {"reduction"}))
    if "log_input" in call.kwargs and not isinstance(call.kwargs["log_input"], (bool, np.bool_)):
        out.append((TypeError, {"log_input"}))
    ignore_index = call.kwargs.get("ignore_index")
    if ignore_index is not None and (isinstance(ignore_index, bool) or not isinstance(ignore_index, int)):
        out.append((TypeError, {"ignore_index"}))
    a, b = (call.args + [None])[:2]
    if call.name in PAIRS + ("kl_div",) and a.values is not None and b.values is not None \
            and a.values.shape != b.values.shape:
        out.append((ValueError, set(names)))
    if out or any(a.values is None for a in call.args):
        return out or [(TypeError, set(names))]
    if call.name == "binary_cross_entropy":
        out += _outside_unit(a, "probs")
    if call.name in ("binary_cross_entropy", "binary_cross_entropy_with_logits"):
        out += _outside_unit(b, "target")
    if call.name == "kl_div" and not out:
        for arg, name in ((a, "p"), (b, "q")):
            out += _outside_unit(arg, name) if not call.kwargs["log_input"] else \
                ([(ValueError, {name})] if (arg.values > 0).any() else [])
    if call.name == "cross_entropy":
        out += _cross_entropy_problems(call, a, b)
    return out


def _outside_unit(arg, name):
    with np.errstate(invalid="ignore"):
        return [(ValueError, {name})] if ((arg.values < 0) | (arg.values > 1)).any() else []


def _cross_entropy_problems(call, logits, target):
    ignore_index = call.kwargs.get("ignore_index")
    out = []
    axis, shape = call.axis, logits.values.shape
    if target.dtype in INTS:
        call.hard = True
        if target.values.shape != without(shape, axis):
            return [(ValueError, {"target"})]
        t = target.values.astype(np.int64)
        bad = (t < 0) | (t >= shape[axis])
        call.valid_rows = np.ones(t.shape, bool) if ignore_index is None else t != ignore_index
        if (bad & call.valid_rows).any():
            out.append((ValueError, {"target"}))
        return out
    if ignore_index is not None:
        out.append((ValueError, {"ignore_index"}))
    if target.values.shape != shape:
        return out + [(ValueError, {"target"})]
    out += _outside_unit(target, "target")
    eps = float(torch.finfo(torch.bfloat16).eps) if target.dtype == "bfloat16" else float(np.finfo(target.dtype).eps)
    sums = target.values.sum(axis)
    if (np.abs(sums - 1.0) > ce_module.PROBABILITY_SUM_TOLERANCE_EPS * eps).any():   # NaN rows compare False
        out.append((ValueError, {"target"}))
    return out


def _is_tensor(v):
    return isinstance(v, torch.Tensor)


# ---------------------------------------------------------------- what a valid call returns

def expected_none_shape(call):
    """Shape of the result for reduction "none" (or of the function's only result)."""
    shape = call.args[0].values.shape
    if call.name == "logsumexp":
        keep = bool(call.kwargs.get("keepdims", False))
        return shape[:call.axis] + ((1,) if keep else ()) + shape[call.axis + 1:]
    if call.name in ("cross_entropy", "kl_div"):
        return without(shape, call.axis)
    return shape


def expected_nan(call):
    """Where the "none" result must be NaN: an element with a NaN input, or a row holding one."""
    nan = [np.isnan(a.values) if a.values.dtype.kind == "f" else np.zeros(a.values.shape, bool) for a in call.args]
    if call.name in UNARY:
        return nan[0]
    if call.name in ROWS:
        rows = nan[0].any(call.axis, keepdims=True)
        if call.name == "logsumexp":
            return rows if call.kwargs.get("keepdims", False) else rows.squeeze(call.axis)
        return np.broadcast_to(rows, nan[0].shape)
    if call.name in PAIRS:
        return nan[0] | nan[1]
    rows = nan[0].any(call.axis)
    if call.name == "kl_div" or not call.hard:
        rows = rows | nan[1].any(call.axis)
    return rows & call.valid_rows if call.hard else rows


def nan_allowed(call):
    """Where the documentation gives NaN without a NaN input: (inf - inf)**2 in mse; a mean of nothing."""
    if call.name == "mse":
        a, b = call.args[0].values, call.args[1].values
        return np.isinf(a) & (a == b)
    return np.zeros(expected_none_shape(call), bool)


def check_result(call, result):
    first = call.args[0]
    reduced = call.kwargs.get("reduction", "none") != "none"
    shape = () if reduced else expected_none_shape(call)
    if first.backend == "numpy":
        kind = np.generic if shape == () else np.ndarray
        assert isinstance(result, kind), f"{call.name} returned {type(result).__name__}, expected {kind.__name__}"
        assert result.dtype == np.dtype(first.dtype), f"dtype {result.dtype}, expected {first.dtype}"
        got = np.asarray(result, dtype=np.float64)
    else:
        assert isinstance(result, torch.Tensor), f"{call.name} returned {type(result).__name__}, expected a tensor"
        assert result.dtype == first.value.dtype and result.device == first.value.device
        got = result.detach().double().numpy()
    assert got.shape == shape, f"{call.name} returned shape {got.shape}, expected {shape}"
    must, may = expected_nan(call), nan_allowed(call)
    if reduced:
        counted = call.valid_rows if call.hard else np.ones(must.shape, bool)
        empty_mean = call.kwargs["reduction"] == "mean" and not counted.any()
        must, may = np.array(must.any()), np.array(may.any() or empty_mean)
    assert np.isnan(got)[must].all(), f"{call.name}: NaN input did not give NaN: {got}"
    assert not np.isnan(got)[~must & ~may].any(), f"{call.name}: NaN from input without NaN: {got}"


def names_an_argument(message, names):
    return any(re.search(rf"(?<![\w.]){re.escape(n)}(?!\w)", message) for n in names)


@contextlib.contextmanager
def torch_path(numpy_kernels):
    saved = lse_module.NUMPY_ON_CPU
    lse_module.NUMPY_ON_CPU = numpy_kernels
    try:
        yield
    finally:
        lse_module.NUMPY_ON_CPU = saved


def same_bits(a, b):
    a = a.detach().double().numpy() if isinstance(a, torch.Tensor) else np.asarray(a, dtype=np.float64)
    b = b.detach().double().numpy() if isinstance(b, torch.Tensor) else np.asarray(b, dtype=np.float64)
    np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------- the law

@pytest.mark.parametrize("backend", ["numpy", "torch"])
@pytest.mark.parametrize("name", FUNCTIONS)
@settings(max_examples=50)
@given(data=st.data())
def test_a_call_either_refuses_naming_the_argument_or_answers_in_shape(name, backend, data):
    call = data.draw(calls(name, backend), label="call")
    numpy_kernels = data.draw(st.booleans(), label="numpy kernels") if backend == "torch" else True
    with torch_path(numpy_kernels), warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)   # no NumPy noise either: NaN and inf are expected input
        if call.problems:
            types = tuple({t for t, _ in call.problems})
            event(f"refused: {' / '.join(sorted(t.__name__ for t in types))}")
            with pytest.raises(types) as info:
                call.run()
            names = set().union(*(n for t, n in call.problems if isinstance(info.value, t)))
            assert names_an_argument(str(info.value), names), \
                f"{type(info.value).__name__}: {info.value!s} names none of {sorted(names)}"
            return
        event("answered")
        result = call.run()
        check_result(call, result)
        same_bits(result, call.run(contiguous=True))
        if call.args[0].backend == "torch" and data.draw(st.booleans(), label="backward"):
            check_backward(call, result)


def check_backward(call, result):
    """With the first argument requiring grad: the same values, and a gradient of its shape and dtype."""
    x = call.args[0].value.detach().requires_grad_()
    out = getattr(nnstab, call.name)(x, *(a.value for a in call.args[1:]), **call.kwargs)
    same_bits(out, result)
    out.sum().backward()
    assert x.grad is not None and x.grad.shape == x.shape and x.grad.dtype == x.dtype
