"""How the torch adapter watches gradients: pre-hooks on the autograd nodes of the step's own activations.

A module output's gradient is seen by a pre-hook on the node that made it (Node.register_prehook,
taken when the output was recorded, before any in-place op replaced the tensor's grad_fn): cheaper than a
tensor hook, and gone with the step's graph, so no module hook dictionary is touched. Where a node
takes no hooks, a tensor hook on the output does the same. Sentinel mode (host tensors, steps that do
not ask for every layer): only the gradients nearest the model's inputs (sinks) are measured, in the
hook while they are in cache; every other one is held and measured only if a sink is not finite.

Large gradients are not held when their layer's own parameter gradients can stand in for them: a
Linear, convolution or normalisation layer's parameter gradients are sums over every position of g
times finite numbers, NaN/inf whenever a value of g is. Holding megabytes of gradients until the
step's end kept the allocator from reusing their memory in backward (page faults: on the benchmark CNN,
~0.4 ms a step just to give 12 MB back); the stand-ins are parameter-sized and already in memory.
They are read when the backward that filled them ends (a callback queued on the autograd engine), before
code between backward and monitor.step() zeroes, clips or all-reduces them; not across processes (a
DDP all-reduce of the gradients may run before that callback) nor for autograd.grad() (nothing is
accumulated): there the gradient is held as any other.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from nnstab.watch import tape as T

_will_run = torch._C._will_engine_execute_node
_current_task = torch._C._current_graph_task_id

HALVES = (torch.float16, torch.bfloat16)
# What a gradient hook does in sentinel mode (see _on_grad), decided when the forward is recorded:
SINK = "sink"      # nearest the model's inputs (no computing module upstream): measured in the hook
SMALL = "small"    # a sink whose layer's own parameter gradients are smaller: those, at the step's end
HELD = "held"      # any other: kept, measured only when a sink is not finite

HOLD_MAX = 1 << 18  # values of a gradient (1 MiB in float32) above which it is not held when stand-ins exist
# Layers whose parameter gradients are NaN/inf whenever a value of their output's gradient is (each is
# a sum over the batch and positions of g times finite inputs): they stand in for a large held gradient.
STAND_IN_TYPES = (nn.Linear, nn.Bilinear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
                  nn.ConvTranspose3d, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.LayerNorm, nn.GroupNorm)
_STAND_IN_DEPTH = 3  # autograd nodes between a layer's node and its parameters' (transpose, autocast's copy)


class GradsMixin:
    def _watch_grad(self, tape, layer, t, rec, owner, pass_id=None, node=None):
        pass_id = tape.pass_id if pass_id is None else pass_id
        role = None                           # measured in the hook (every layer, or on an accelerator)
        node = t.grad_fn if node is None else node     # the node that made t (before any in-place op on it)
        stand = None                          # AccumulateGrad nodes of the parameters standing in for t's gradient
        if self.sentinels and not tape.plan.layers:   # decided now, while the forward's records are warm
            role = HELD if self.upstream_compute(tape, rec) else SMALL if self._small_layer(layer, t) else SINK
            if role is not SINK and node is not None and self.stand_ins and t.numel() > HOLD_MAX:
                stand = self._stand_in_nodes(layer, node, t)
        if node is not None:
            k = t.output_nr                   # a pre-hook on the node that made t: cheaper than a tensor hook,
            try:                              # it goes away with the step's graph, and an in-place op on t
                node.register_prehook(        # later (ReLU(inplace=True), `t += ...`) leaves it in place
                    lambda grads: self._on_grad(tape, layer, rec, pass_id, owner, grads[k], role, stand))
                return
            except RuntimeError:              # a node that takes no hooks: the tensor's own hook instead
                pass
        if t.requires_grad:                   # a leaf (an input that requires grad): a tensor hook sees it
            t.register_hook(lambda g: self._on_grad(tape, layer, rec, pass_id, owner, g, role))

    def _on_grad(self, tape, layer, rec, pass_id, owner, g, role=None, stand=None):
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
                    g = None                           # measured: nothing more to keep
                elif stand is not None and _accumulates(stand):
                    g = self._stand_in(layer)          # this backward fills the stand-ins: g is not kept
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
                if type(g) is _StandIn:                 # read as its backward ended
                    healthy &= g.value is None or g.value - g.value == 0
                else:
                    small = self._small_sentinel(layer)
                    healthy &= all(_sumsq_finite(q) for q in small) if small else _sumsq_finite(g)
        if healthy:
            return
        order = {}                                     # gradient Meas -> its place in backward
        for k, (layer, rec, pass_id, owner, g, role) in enumerate(held):
            if rec.grad_meas is not None:
                i = rec.grad_meas
            elif type(g) is _StandIn:
                i = self._measure_stand_in(tape, layer, rec, pass_id, g)
            else:
                i = self._measure(tape, layer, rec, pass_id, owner, g)
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

    def _stand_in_nodes(self, layer, node, t):
        """The AccumulateGrad nodes of `layer`'s trainable parameters, reached from the node that made its
        output t within a few steps, when the layer's parameter gradients can stand in for t's gradient
        (STAND_IN_TYPES) and hold fewer values; else None (the gradient is held)."""
        if layer is None or not isinstance(self.modules[layer], STAND_IN_TYPES) or not self._small_layer(layer, t):
            return None
        params = [p for p in self._layer_params(layer) if p.requires_grad]
        if not params:
            return None
        found, frontier = {}, [node]
        for _ in range(_STAND_IN_DEPTH):
            nxt = []
            for n in frontier:
                for m, _ in n.next_functions:
                    if m is None:
                        continue
                    v = getattr(m, "variable", None)      # an AccumulateGrad node: the leaf it fills
                    if v is not None:
                        found[id(v)] = m
                    else:
                        nxt.append(m)
            frontier = nxt
        stand = tuple(found.get(id(p)) for p in params)
        return stand if None not in stand else None

    def _stand_in(self, layer):
        """A _StandIn for `layer`, read when this backward ends (see the module doc)."""
        box = _StandIn(layer)
        pending = self._stand_ins
        if not pending or self._stand_in_task != _current_task():
            self._stand_in_task = _current_task()
            pending = self._stand_ins = []
            torch.autograd.Variable._execution_engine.queue_callback(lambda: self._take_stand_ins(pending))
        pending.append(box)
        return box

    def _take_stand_ins(self, pending):
        """End of a backward: the stand-ins' sums of squares, NaN/inf when a stand-in gradient is."""
        try:
            for box in pending:
                grads = self._small_sentinel(box.layer)
                if grads:
                    box.value = math.fsum(_sumsq(q) for q in grads)
                    box.dtype = grads[0].dtype
        except Exception as exc:     # never into training (nor into the engine's callback)
            self.fail("gradient stand-ins", exc)
        pending.clear()

    def _measure_stand_in(self, tape, layer, rec, pass_id, box):
        """A gradient that was not held, as its stand-ins tell: NaN/inf exactly when one of them was
        (their sum of squares; not the gradient's own norm, so never a statistic)."""
        if box.value is None:
            return None
        return _gradient_event(tape, rec, pass_id,
                               tape.add(T.GRAD_VIA, layer, box.dtype, (box.value,), trec=rec, pass_id=pass_id))

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
        _gradient_event(tape, rec, pass_id, i)
        if layer is not None:
            if tape.plan.range:
                tape.add(T.GRAD_RANGE, layer, g.dtype, _min_max(g), pass_id=pass_id)
            if tape.plan.under:
                self._sample(tape, layer, g, "grad", pass_id)
        return i


def _gradient_event(tape, rec, pass_id, i):
    """Measurement i is rec's gradient, made by backward now (its order is the origin's order)."""
    rec.grad_meas = i
    tape.grad_events.append(i)
    tape.passes_with_grad.add(pass_id)
    return i


def _accumulates(nodes) -> bool:
    """Whether the backward running now will fill these AccumulateGrad nodes' .grad (not autograd.grad())."""
    try:
        return all(map(_will_run, nodes))
    except RuntimeError:      # autograd.grad(): leaves are captured, not accumulated
        return False


class _StandIn:
    """In place of a gradient not held: its layer, and its stand-ins' sum of squares once backward ended."""
    __slots__ = ("layer", "value", "dtype")

    def __init__(self, layer):
        self.layer = layer
        self.value = None     # None: not read (no stand-in gradient, or the backward never ended)
        self.dtype = None


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
