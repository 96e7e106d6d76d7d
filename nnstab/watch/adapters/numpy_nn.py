"""How the monitor watches an nnstab.nn model: a forward hook and a full backward hook per module.

The statistics are those of the torch adapter (same Tape, same measurements), computed with NumPy:
a forward hook notes the arrays to measure and the pass is measured when the model's forward returns
(adapters/base.py: flush_forward); a backward hook measures its module's gradients as they pass.
"""
from __future__ import annotations

import math

import numpy as np

from nnstab.nn import activations as act
from nnstab.nn import conv as nn_conv
from nnstab.nn import layers as nn_layers
from nnstab.watch import tape as T
from nnstab.watch.adapters.base import BaseAdapter, LayerInfo
from nnstab.watch.tape import SAMPLE_SIZE, sample_stride

THROUGH_TYPES = (
    act.ReLU, act.LeakyReLU, act.Sigmoid, act.Tanh, act.Softmax, act.LogSoftmax, act.ELU, act.Softplus,
    act.Softsign, act.Identity, act.Step, nn_layers.Flatten, nn_layers.Dropout, nn_conv.MaxPool2d, nn_conv.AvgPool2d,
)


def _units_of(module):
    if isinstance(module, act.ReLU):
        return "relu", None
    if isinstance(module, act.Sigmoid):
        return "sigmoid", 0.5
    if isinstance(module, act.Tanh):
        return "tanh", 0.0
    if isinstance(module, act.Softmax):
        return "softmax", module.axis
    return None


class NumpyAdapter(BaseAdapter):
    framework = "nnstab.nn"

    def __init__(self, model):
        super().__init__(model)
        self._open = {}    # layer -> stack of its calls awaiting their backward

    def _modules(self):
        return list(self.model.named_modules())

    def layer_info(self, name, module) -> LayerInfo:
        params = list(module._parameters.values())
        params = [p for p in params if p is not None]
        dtype = str(params[0].data.dtype) if params else ""
        return LayerInfo(name, type(module).__name__, dtype, int(sum(p.data.size for p in params)))

    def begin(self, step, plan):
        self._open.clear()
        return super().begin(step, plan)

    def _attach_one(self, idx, module):
        role = T.THROUGH if isinstance(module, THROUGH_TYPES) else T.COMPUTE
        units = _units_of(module)

        def forward_hook(mod, inputs, output):
            if self.active and self.tape is not None and idx not in self.disabled:
                try:
                    with np.errstate(all="ignore"):
                        self.record_forward(idx, role, units, False, inputs, output)
                except Exception as exc:
                    self.fail(f"forward hook of {self.names[idx] or 'the model'!r}", exc, idx)

        def backward_hook(mod, grad_input, grad_output):
            if self.active and self.tape is not None and idx not in self.disabled:
                try:
                    with np.errstate(all="ignore"):
                        self._backward(idx, role, grad_input, grad_output)
                except Exception as exc:
                    self.fail(f"backward hook of {self.names[idx] or 'the model'!r}", exc, idx)

        h1 = module.register_forward_hook(forward_hook)
        h2 = module.register_full_backward_hook(backward_hook)
        return _Handles(h1, h2)

    # -- forward ---------------------------------------------------------------------------------
    def floats(self, x, layer=None, inputs=False):
        if isinstance(x, np.ndarray):
            if x.dtype.kind == "f":
                yield x
        elif isinstance(x, (tuple, list)):
            for v in x:
                if isinstance(v, np.ndarray) and v.dtype.kind == "f":
                    yield v

    def _called(self, idx, ci):
        self._open.setdefault(idx, []).append(ci)

    def _finite(self, tape, layer, t, rec):
        return tape.add(T.FINITE, layer, t.dtype, (self._finite_value(t),), trec=rec)

    def _finite_value(self, t):
        # the sum is NaN/inf exactly when a value is; redone in float64 when it is inf, to tell a true
        # infinity from a sum beyond the format's range
        total = float(t.sum(dtype=np.float32) if t.dtype == np.float16 else t.sum())
        if math.isinf(total):
            total = float(t.sum(dtype=np.float64))
        if total != total and np.isinf(t).any():
            total = math.inf      # +inf and -inf summed to NaN: values overflowed (NaN may follow from them)
        return total

    def _range(self, tape, layer, t):
        if t.size:
            tape.add(T.RANGE, layer, t.dtype, (t.min(), t.max()))

    def _sample(self, tape, layer, t, role, pass_id=None):
        flat = t.reshape(-1)
        tape.add(T.SAMPLE, layer, t.dtype, vectors=(flat[::sample_stride(flat.size)][:SAMPLE_SIZE].copy(),),
                 aux=(role, flat.size), pass_id=pass_id)

    def _units(self, tape, layer, units, conv, rec, t):
        kind, arg = units
        if t.ndim < 2 or not (tape.plan.units if kind == "relu" else tape.plan.sat):
            return
        if kind == "softmax":
            tape.add(T.SOFTMAX, layer, t.dtype, vectors=(t.max(axis=arg).ravel(),))
            return
        dims = tuple(d for d in range(t.ndim) if d != 1)   # units: features (N, F) or channels (N, C, ...)
        if kind == "relu":
            tape.add(T.RELU, layer, t.dtype, vectors=(t.max(axis=dims),))
        else:
            d = t.astype(np.float32) if t.dtype == np.float16 else t
            if kind == "sigmoid":
                d = d - 0.5
            tape.add(T.SAT, layer, t.dtype, vectors=((d * d).mean(axis=dims),), aux=kind)

    # -- backward --------------------------------------------------------------------------------
    def _backward(self, idx, role, grad_input, grad_output):
        tape = self.tape
        stack = self._open.get(idx)
        if not stack:
            return
        call = tape.calls[stack.pop()]
        tape.passes_with_grad.add(call.pass_id)
        if role is not T.COMPUTE:   # as in torch: a THROUGH module's gradients are its neighbours'
            return
        for (rec, _), g in zip(call.outputs, grad_output):
            self._grad(tape, rec, g, call.pass_id)
        for rec, g in zip(call.inputs, grad_input):
            if rec.producer < 0:    # a tensor from outside the watched modules (the batch, a functional op)
                self._grad(tape, rec, g, call.pass_id)

    def _grad(self, tape, rec, g, pass_id):
        if rec.grad_meas is not None or not isinstance(g, np.ndarray) or g.dtype.kind != "f" or g.size == 0:
            return
        layer = tape.calls[rec.producer].layer if rec.producer >= 0 else None
        i = tape.add(T.GRAD, layer, g.dtype, (_sumsq(g),), trec=rec, pass_id=pass_id, aux=g.size)
        rec.grad_meas = i
        tape.grad_events.append(i)
        if layer is not None:
            if tape.plan.range:
                tape.add(T.GRAD_RANGE, layer, g.dtype, (g.min(), g.max()), pass_id=pass_id)
            if tape.plan.under:
                self._sample(tape, layer, g, "grad", pass_id)

    # -- the step's end --------------------------------------------------------------------------
    def _params(self, tape, only=None, grads_only=False):
        with np.errstate(all="ignore"):
            for idx, module in enumerate(self.modules):
                if only is not None and idx != only:
                    continue
                params = [p for p in module._parameters.values() if p is not None]
                if not params:
                    continue
                grads = [p.grad for p in params if p.grad is not None]
                norms = (() if grads_only else tuple(_sumsq(p.data) for p in params)) + tuple(_sumsq(g) for g in grads)
                tape.add(T.PARAM, idx, params[0].data.dtype, norms,
                         aux=(0 if grads_only else len(params), len(grads), only is not None))

    def check_loss(self, loss):
        if loss is None:
            return
        try:
            value = np.asarray(loss, dtype=np.float64)
        except (TypeError, ValueError):
            raise TypeError(f"loss must be a float or a one-element array, got {type(loss).__name__}") from None
        if value.size != 1:
            raise TypeError(f"loss must be a scalar (a float or a one-element array), got shape {value.shape}; "
                            f"pass loss=float(loss.mean())")

    def _loss(self, tape, loss):
        value = np.asarray(loss, dtype=np.float64)
        return tape.add(T.LOSS, None, "float64", (value.reshape(()),))

    def _scale(self, tape, scaler_state):
        return tape.add(T.SCALE, None, "float32", tuple(np.asarray(x, dtype=np.float64) for x in scaler_state))

    def read(self, tapes):
        for tp in tapes:
            tp.set_values([float(x) for x in tp.scalars], [np.asarray(v, dtype=np.float64).ravel() for v in tp.vectors])


def _sumsq(x) -> float:
    """sum(x**2) in one BLAS pass; float16 in float32, so the sum itself does not overflow."""
    v = np.asarray(x).ravel()
    if v.dtype == np.float16:
        v = v.astype(np.float32)
    s = float(np.dot(v, v))
    if math.isinf(s):
        v = v.astype(np.float64)
        s = float(np.dot(v, v))
    return s


class _Handles:
    """The forward and backward hook handles of one module, removed together."""

    def __init__(self, *handles):
        self.handles = handles

    def remove(self):
        for h in self.handles:
            h.remove()
