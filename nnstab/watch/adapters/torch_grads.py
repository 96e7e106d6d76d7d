"""How the torch adapter watches gradients: pre-hooks on the autograd nodes of the step's own activations.

A module output's gradient is seen by a pre-hook on the node that made it (Node.register_prehook,
taken when the output was recorded, before any in-place op replaced the tensor's grad_fn): cheaper than a
tensor hook, and gone with the step's graph, so no module hook dictionary is touched. Where a node
takes no hooks, a tensor hook on the output does the same. Sentinel mode (host tensors, steps that do
not ask for every layer): only the gradients nearest the model's inputs (sinks) are measured, in the
hook while they are in cache; every other one is held and measured only if a sink is not finite.
"""
from __future__ import annotations

import math

import torch

from nnstab.watch import tape as T

HALVES = (torch.float16, torch.bfloat16)
# What a gradient hook does in sentinel mode (see _on_grad), decided when the forward is recorded:
SINK = "sink"      # nearest the model's inputs (no computing module upstream): measured in the hook
SMALL = "small"    # a sink whose layer's own parameter gradients are smaller: those, at the step's end
HELD = "held"      # any other: kept, measured only when a sink is not finite


class GradsMixin:
    def _watch_grad(self, tape, layer, t, rec, owner, pass_id=None, node=None):
        pass_id = tape.pass_id if pass_id is None else pass_id
        role = None                           # measured in the hook (every layer, or on an accelerator)
        if self.sentinels and not tape.plan.layers:   # decided now, while the forward's records are warm
            role = HELD if self.upstream_compute(tape, rec) else SMALL if self._small_layer(layer, t) else SINK
        node = t.grad_fn if node is None else node     # the node that made t (before any in-place op on it)
        if node is not None:
            k = t.output_nr                   # a pre-hook on the node that made t: cheaper than a tensor hook,
            try:                              # it goes away with the step's graph, and an in-place op on t
                node.register_prehook(        # later (ReLU(inplace=True), `t += ...`) leaves it in place
                    lambda grads: self._on_grad(tape, layer, rec, pass_id, owner, grads[k], role))
                return
            except RuntimeError:              # a node that takes no hooks: the tensor's own hook instead
                pass
        if t.requires_grad:                   # a leaf (an input that requires grad): a tensor hook sees it
            t.register_hook(lambda g: self._on_grad(tape, layer, rec, pass_id, owner, g, role))

    def _on_grad(self, tape, layer, rec, pass_id, owner, g, role=None):
        if g is None or not self.active or tape.svals is not None or owner in self.disabled:
            return
        try:
            if role is None or tape is not self.tape:
                self._grad(tape, layer, rec, pass_id, g)
            else:
                # sentinel mode: a gradient nearest the model's inputs (a sink) is looked at now, while
                # it is in cache -- or, for a layer whose own parameter gradients are smaller, those at
                # the step's end; every other one is held, measured only if a sink is not finite
                if role is SINK:
                    self._grad(tape, layer, rec, pass_id, g)
                self.held.append((layer, rec, pass_id, owner, g, role))
        except Exception as exc:     # never into training
            self.fail(f"gradient hook of {self.names[owner] or 'the model'!r}", exc, owner)

    def flush_grads(self):
        """Sentinel mode: the sinks (gradients nearest the model's inputs, where a NaN/inf made anywhere
        in backward flows on to) decide; every held gradient is measured only when a sink is not finite."""
        held, self.held = self.held, []
        tape = self.tape
        if not held or tape is None:
            return
        healthy = True
        for layer, rec, pass_id, owner, g, role in held:
            tape.passes_with_grad.add(pass_id)         # these passes had a backward, measured or not
            if role is SINK and rec.grad_meas is not None:     # measured in the hook
                v = tape.scalars[tape.meas[rec.grad_meas].s0]
                healthy &= v - v == 0
            elif role is SMALL:                        # through the layer's own (smaller) parameter gradients
                small = self._small_sentinel(layer)
                healthy &= all(_sumsq_finite(q) for q in small) if small else _sumsq_finite(g)
        if healthy:
            return
        order = {}                                     # gradient Meas -> its place in backward
        for k, (layer, rec, pass_id, owner, g, role) in enumerate(held):
            i = rec.grad_meas if rec.grad_meas is not None else self._measure(tape, layer, rec, pass_id, owner, g)
            if i is not None:
                order[i] = k
        tape.grad_events.sort(key=lambda i: order.get(i, -1))   # backward's own order, for the origin

    def _layer_params(self, layer):
        if self._own is None:
            self._own = {k: ps for k, ps in self._param_lists()}
        return self._own.get(layer, ())

    def _small_layer(self, layer, g) -> bool:
        """Whether `layer`'s own parameters hold fewer values than g (a convolution's kernel next to its
        output): their gradients, computed by backward from g, are then the cheaper sentinel."""
        if layer is None:
            return False
        n = self._trainable.get(layer)
        if n is None:       # counted once per layer: requires_grad rarely changes (a frozen layer counts 0)
            n = self._trainable[layer] = sum(p.numel() for p in self._layer_params(layer) if p.requires_grad)
        return 0 < n < g.numel()

    def _small_sentinel(self, layer):
        """The gradients of `layer`'s own parameters (NaN/inf when the gradient they came from is)."""
        return [p.grad for p in self._layer_params(layer) if p.requires_grad and p.grad is not None
                and not p.grad.is_sparse]

    def _measure(self, tape, layer, rec, pass_id, owner, g):
        if owner in self.disabled:
            return None
        try:
            return self._grad(tape, layer, rec, pass_id, g)
        except Exception as exc:
            self.fail(f"gradient hook of {self.names[owner] or 'the model'!r}", exc, owner)
            return None

    def _grad(self, tape, layer, rec, pass_id, g):
        # activations' gradients are dense floating tensors of the activation's dtype
        if g.requires_grad:     # create_graph=True: keep the measurement out of the double-backward graph
            g = g.detach()
        dtype = g.dtype
        if self.on_cpu and dtype is torch.float32:
            v = g.reshape(-1)
            ss = torch.dot(v, v).item()
            if ss - ss != 0:
                ss = _sumsq(g)
            n = v.shape[0]
        elif g.is_sparse or not g.is_floating_point():
            return
        else:
            ss = _sumsq(g)
            n = g.numel()
        i = tape.add(T.GRAD, layer, dtype, (ss,), trec=rec, pass_id=pass_id, aux=n)
        rec.grad_meas = i
        tape.grad_events.append(i)
        tape.passes_with_grad.add(pass_id)
        if layer is not None:
            if tape.plan.range:
                tape.add(T.GRAD_RANGE, layer, g.dtype, _min_max(g), pass_id=pass_id)
            if tape.plan.under:
                self._sample(tape, layer, g, "grad", pass_id)
        return i


def _min_max(x):
    """(min, max) of x in one pass (exact, as amin and amax), each as _now gives it."""
    lo, hi = torch.aminmax(x.detach())
    return _now(lo), _now(hi)


def _now(s):
    """A 0-d result as a float when it lives on the CPU (reading it costs a memory load), else the tensor."""
    return s.item() if s.device.type == "cpu" else s


def _sumsq_finite(g) -> bool:
    s = _sumsq(g)
    return s - s == 0


def _sumsq(x):
    """sum(x**2) in one pass (a BLAS dot on the CPU), NaN/inf exactly when a value of x is; as _sum."""
    x = x.detach()
    if x.dtype is torch.float32 and x.is_contiguous() and x.device.type == "cpu":
        v = x.view(-1)
        s = torch.dot(v, v).item()
        if s - s == 0:
            return s
    if x.device.type != "cpu":
        return torch.linalg.vector_norm(x, dtype=torch.float64).square()
    v = x.reshape(-1)
    if x.dtype in HALVES:
        s = torch.linalg.vector_norm(v, dtype=torch.float32).item() ** 2
    else:
        s = torch.dot(v, v).item()
    if math.isinf(s):
        v = v.double()
        s = torch.dot(v, v).item()
    return s
