"""Replay an nnstab.nn model's failing layer, step by step, to the NumPy operation that made its first NaN/inf.

Kept per step (hooks registered here on every module, removed on close): references to each layer's
inputs (forward hook) and incoming gradients (backward pre-hook) -- the arrays exist anyway -- and a copy
of every parameter, refreshed in place at each monitor.step() (after the optimiser step: the values the
next step starts from). The replay deep-copies the failing layer (hooks dropped), gives it the step's
starting parameters, and runs its forward (and, for a backward finding, its backward from the same
incoming gradient) under np.errstate(over/divide/invalid="raise"): the first floating-point error
stops it there, and its traceback gives the line in the layer's code and NumPy's name of the operation
("overflow encountered in exp" -> np.exp). Underflow is not an error (flushing to 0 is how exp(-big)
works). The copy is thrown away: the real model, its gradients and the run are untouched.
"""
from __future__ import annotations

import copy
import linecache
import math
import os
import re
import time

import numpy as np

MAX_CALLS = 8          # calls of one layer kept per step (a layer used several times, gradient accumulation)
_NUMPY_DIR = os.path.dirname(np.__file__) + os.sep
_THIS_FILE = os.path.abspath(__file__)
_MESSAGE = re.compile(r"(overflow|divide by zero|invalid value) encountered in (\w+)")
_PRODUCES = {"overflow": "infinity", "divide by zero": "infinity", "invalid value": "NaN"}


class _Snapshot:
    def __init__(self):
        self.step = 0


class NumpyReplayer:
    framework = "nnstab.nn"

    def __init__(self, model, mode: str):
        self.model = model
        self.mode = mode             # an nnstab.nn model lives in host memory either way
        self.snapshot = _Snapshot()
        self.runs = 0
        self.seconds = 0.0
        self.loss = None
        self._handles = []
        self._inputs = {}            # id(module) -> [inputs tuple, ...] of the step
        self._grads = {}             # id(module) -> [grad_output, ...] of the step
        self._params = {}            # (id(module), attribute) -> copy of the parameter at the step's start
        self.broken = None           # why the snapshots stopped, if keeping them failed

    def start(self):
        for module in self.model.modules():
            self._handles.append(module.register_forward_hook(self._forward))
            self._handles.append(module.register_full_backward_pre_hook(self._backward))
        self._copy_params()
        return self

    def stop(self):
        for h in self._handles:
            h.remove()
        self._handles = []
        self._inputs, self._grads, self.loss = {}, {}, None

    close = stop

    def stepped(self, step: int):
        self.snapshot.step = step
        self._inputs, self._grads = {}, {}
        self._copy_params()

    def _forward(self, module, inputs, output):
        kept = self._inputs.setdefault(id(module), [])
        if len(kept) < MAX_CALLS:
            kept.append(inputs)

    def _backward(self, module, grad_output):
        kept = self._grads.setdefault(id(module), [])
        if len(kept) < MAX_CALLS and grad_output:
            kept.append(grad_output[0])

    def _copy_params(self):
        for module in self.model.modules():
            for attr, p in module._parameters.items():
                if p is None:
                    continue
                key = (id(module), attr)
                kept = self._params.get(key)
                if kept is None or kept.shape != p.data.shape or kept.dtype != p.data.dtype:
                    self._params[key] = p.data.copy()
                else:
                    np.copyto(kept, p.data)

    # -- the replay -------------------------------------------------------------------------------
    def replay(self, finding, from_snapshot: bool) -> dict:
        t0 = time.perf_counter()
        self.runs += 1
        try:
            if self.broken is not None:
                return {"status": "failed", "reason": self.broken}
            modules = dict(self.model.named_modules())
            if finding.phase == "update":
                return self._update(finding, modules, from_snapshot)
            if finding.phase == "loss" or finding.layer not in modules:
                return {"status": "found", "phase": "loss", "op": None, "module": "", "source": None, "code": None,
                        "reason": "the NaN/inf was made in the loss, computed outside the model"}
            return self._layer(finding, modules[finding.layer])
        finally:
            self.seconds += time.perf_counter() - t0

    def _layer(self, finding, module) -> dict:
        calls = self._inputs.get(id(module), [])
        if not calls:
            return {"status": "failed", "reason": f"no forward call of {finding.layer!r} was recorded in this step"}
        grads = self._grads.get(id(module), [])
        backward = finding.phase == "backward"
        for k, inputs in enumerate(calls):
            twin, names = self._twin(module)
            try:
                if backward:
                    if k >= len(grads):
                        break
                    with np.errstate(all="ignore"):
                        twin(*inputs)
                    with _raising():
                        twin.backward(grads[len(grads) - 1 - k] if len(grads) == len(calls) else grads[k])
                else:
                    with _raising():
                        out = twin(*inputs)
                    if isinstance(out, np.ndarray) and out.dtype.kind == "f" and not np.isfinite(out).all():
                        return self._silent(finding, inputs, k)
            except FloatingPointError as exc:
                return _from_error(exc, finding, names, inputs, backward, k)
        return {"status": "not_reproduced", "phase": finding.phase, "module": finding.layer,
                "reason": "re-running the layer from the step's inputs raised no floating-point error"}

    def _twin(self, module):
        """A copy of `module` without hooks, holding the parameters the step started with; and its modules' names."""
        twin = copy.deepcopy(module)
        names = {}
        for (name, sub), (_, real) in zip(twin.named_modules(), module.named_modules()):
            names[id(sub)] = name
            for d in (sub._forward_hooks, sub._backward_pre_hooks, sub._backward_hooks):
                d.clear()
            for attr, p in sub._parameters.items():
                kept = self._params.get((id(real), attr))
                if p is not None and kept is not None:
                    p.data = kept.copy()
                    p.grad = None
        return twin, names

    def _silent(self, finding, inputs, k):
        return {"status": "found", "phase": finding.phase, "module": finding.layer, "op": None, "source": None,
                "code": None, "produced": "NaN", "inputs": [_stats(x) for x in inputs if _is_float(x)],
                "reason": "the layer's output is non-finite but no floating-point error was raised "
                          "(a NaN constant, or errors silenced by np.errstate in the layer's code)"}

    def _update(self, finding, modules, from_snapshot) -> dict:
        bad = []
        for name, module in modules.items():
            for attr, p in module._parameters.items():
                if p is not None and not np.isfinite(p.data).all():
                    bad.append((f"{name}.{attr}" if name else attr, module, attr, p))
        d = {"status": "found", "phase": "update", "op": None, "module": finding.layer, "source": None,
             "code": None, "parameters": [b[0] for b in bad][:8]}
        if from_snapshot:    # seen at the end of the step itself: its gradients and starting values are at hand
            grads = [p.grad for *_, p in bad if p.grad is not None]
            if grads:
                d["grads_finite"] = all(bool(np.isfinite(g).all()) for g in grads)
            d["before_finite"] = all(bool(np.isfinite(self._params[(id(m), a)]).all())
                                     for _, m, a, _ in bad if (id(m), a) in self._params)
        return d


def _raising():
    """Overflow, division by zero and invalid operations raise; underflow stays silent."""
    return np.errstate(over="raise", divide="raise", invalid="raise", under="ignore")


def _from_error(exc, finding, names, inputs, backward, k) -> dict:
    m = _MESSAGE.search(str(exc))
    kind, ufunc = (m.group(1), m.group(2)) if m else ("invalid value", None)
    file = line = None
    module = finding.layer
    frames = []
    tb = exc.__traceback__
    while tb is not None:
        frames.append((tb.tb_frame, tb.tb_lineno))
        tb = tb.tb_next
    for frame, lineno in reversed(frames):     # innermost first: the line that called the failing ufunc
        path = os.path.abspath(frame.f_code.co_filename)
        if path.startswith(_NUMPY_DIR) or path == _THIS_FILE:
            continue
        if file is None:
            file, line = frame.f_code.co_filename, lineno
        owner = frame.f_locals.get("self")
        if id(owner) in names:                 # the (sub)module whose code it is
            sub = names[id(owner)]
            module = ".".join(p for p in (finding.layer, sub) if p)
            break
    code = linecache.getline(file, line).strip() if file else None
    d = {"status": "found", "op": f"np.{ufunc}" if ufunc else _op_on_line(code), "module": module,
         "phase": "backward" if backward else "forward", "produced": _PRODUCES.get(kind, "NaN"),
         "error": str(exc), "source": f"{_short(file)}:{line}" if file else None, "file": file, "line": line,
         "code": code, "inputs": [_stats(x) for x in inputs if _is_float(x)]}
    if k:
        d["call"] = k
    return d


def _op_on_line(code):
    m = re.search(r"\bnp\.(\w+)\(", code or "")
    return f"np.{m.group(1)}" if m else None


def _short(path):
    rel = os.path.relpath(path)
    return path if rel.startswith("..") else rel


def _is_float(x):
    return isinstance(x, np.ndarray) and x.dtype.kind == "f"


def _stats(x) -> dict:
    finite = np.isfinite(x)
    vals = x[finite]
    return {"shape": list(x.shape), "dtype": str(x.dtype),
            "min": float(vals.min()) if vals.size else math.nan, "max": float(vals.max()) if vals.size else math.nan,
            "nonfinite": int(x.size - finite.sum()), "zeros": int((x == 0).sum())}
