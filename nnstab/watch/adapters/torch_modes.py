"""How the torch adapter copes with activation checkpointing, torch.compile and in-place operations.

Activation checkpointing (torch.utils.checkpoint) runs a segment's forward twice: once in the forward
pass and once more inside backward, to recompute the activations it did not keep. Module forward hooks
fire both times. Each module call is recorded once, as forward:
  use_reentrant=False  the first forward runs with gradients on and is recorded as usual; the
                       recomputation (inside backward: torch._C._current_graph_task_id() != -1) is ignored.
  use_reentrant=True   the first forward runs under no_grad inside CheckpointFunction.forward: it is
                       recorded (in its place in forward order) when that call will have a backward
                       (ctx.next_functions is not empty: gradients were on and an input requires grad);
                       the recomputation inside CheckpointFunction.backward (same ctx) is matched call
                       by call to that record, and only lends its tensors' autograd nodes, so that the
                       gradients of the segment's outputs are measured and attributed as without it.
A forward pass under no_grad that is no checkpoint's (an evaluation) is not recorded, as before.

torch.compile: dynamo inlines module calls and their hooks. Our hooks are not traceable Python (they
keep tensors by identity and read results on the host), so under tracing they call a
torch.compiler.disable'd copy: dynamo ends the graph at each watched module's output and runs the hook
eagerly on the real tensor; nothing is skipped, and gradients are watched on the compiled pieces'
autograd nodes. The cost is that the compiler cannot fuse across a watched module boundary.
`torch.compile(model, fullgraph=True)` (or error_on_graph_break) forbids graph breaks: there the hooks
are traced as no-ops (a comptime callback reads the tracer's setting, see `graph_breaks_allowed`) and
only what runs outside the compiled graph is seen: the loss, the parameters and their gradients at the
step's end; the adapter notes this in `notes`.
An OptimizedModule's wrapper is not a layer: its `_orig_mod` takes its place and name, so layers keep
the user's names (no "_orig_mod." in them); the layer's hooks go on the wrapper, outside the graph.
"""
from __future__ import annotations

import sys

import torch

from nnstab.watch.tape import COMPUTE

FRAMES = 64                 # how far up the stack a hook looks for a checkpoint's frame: deeper nesting
                            # than this between CheckpointFunction and a module call is not expected
_graph_task_id = torch._C._current_graph_task_id


def in_backward() -> bool:
    """Whether this code runs inside an autograd backward pass (e.g. a checkpoint's recomputation)."""
    return _graph_task_id() != -1


def _checkpoint_codes():
    cp = sys.modules.get("torch.utils.checkpoint")
    fn = getattr(cp, "CheckpointFunction", None) if cp is not None else None
    if fn is None:
        return None, None
    return fn.forward.__code__, fn.backward.__code__


def checkpoint_ctx(backward: bool):
    """The ctx of the reentrant checkpoint whose forward (backward: whose recomputation) is running, or None.

    In its forward, only a call that will have a backward counts (gradients on, an input requiring grad:
    its ctx has next_functions); a checkpoint run under no_grad is an evaluation, not recorded.
    """
    fwd, bwd = _checkpoint_codes()
    if fwd is None:
        return None
    want = bwd if backward else fwd
    frame = sys._getframe(2)
    for _ in range(FRAMES):
        if frame is None:
            return None
        if frame.f_code is want:
            ctx = frame.f_locals.get("ctx")
            if ctx is None or (not backward and not ctx.next_functions):
                return None
            return ctx
        frame = frame.f_back
    return None


def unwrap_compiled(named_modules):
    """([(name, module)], {id(module): its wrapper}) with torch.compile's OptimizedModule wrappers unwrapped.

    A wrapper's `_orig_mod` is the layer, under the wrapper's name (so "_orig_mod." never appears in a
    layer name), and its hooks go on the wrapper: they run outside the compiled graph, so the wrapped
    module's inputs and outputs are seen even under fullgraph=True."""
    optimized = _optimized_type()
    out, wrappers = [], {}
    for name, module in named_modules:
        parts = name.split(".") if name else []
        if parts and parts[-1] == "_orig_mod" and optimized is not None:
            continue                                   # listed already, under its wrapper's name
        name = ".".join(p for p in parts if p != "_orig_mod")
        if optimized is not None and isinstance(module, optimized):
            wrappers[id(module._orig_mod)] = module
            module = module._orig_mod
        out.append((name, module))
    return out, wrappers


def _optimized_type():
    ev = sys.modules.get("torch._dynamo.eval_frame")
    return getattr(ev, "OptimizedModule", None) if ev is not None else None


_ALLOWED = [True]            # the setting of the compile being traced (written at trace time, see below)


def _read_tracer(ctx):
    tx = getattr(ctx, "_ComptimeContext__tx", None)
    _ALLOWED[0] = not (tx is not None and (getattr(tx, "one_graph", False) or getattr(tx, "error_on_graph_break", False)))


def graph_breaks_allowed() -> bool:
    """Under dynamo tracing: whether the compile being traced allows a graph break (not fullgraph=True).

    A comptime callback runs at trace time and stores the tracer's setting in a global, which the traced
    code then reads (as a guarded constant). Outside tracing: True."""
    try:
        from torch._dynamo.comptime import comptime
    except ImportError:     # no comptime: assume breaks are allowed (the default of torch.compile)
        return True
    comptime(_read_tracer)
    return _ALLOWED[0]


def eager(fn):
    """fn as dynamo sees it: never traced (a graph break, fn run eagerly on real tensors)."""
    return torch.compiler.disable(fn, recursive=True)


FULLGRAPH_NOTE = ("torch.compile(fullgraph=True) forbids graph breaks: the activations and gradients of the "
                  "modules inside the compiled graph are not seen (those of a model compiled before watch() "
                  "are: its inputs, outputs and their gradients); the loss, the parameters and their "
                  "gradients at the step's end are")


class ModesMixin:
    """TorchAdapter's part for checkpoint recomputation and in-place modules (see the module docstring)."""

    def _reset_checkpoints(self):
        self.checkpoints = {}     # id(ctx) -> (ctx, {layer: [call index, ...]}) of this step's reentrant checkpoints

    def checkpointed(self, ctx, idx, role, units, conv, inputs, output):
        """A module call inside a reentrant checkpoint's first (no_grad) forward: recorded as forward, and
        remembered so that the recomputation in backward can lend its autograd nodes to it."""
        self.link_pending()                     # the calls before it, in their order
        entry = self.checkpoints.get(id(ctx))
        if entry is None or entry[0] is not ctx:
            entry = self.checkpoints[id(ctx)] = (ctx, {})
        ci = len(self.tape.calls)
        self.record_forward(idx, role, units, conv, inputs, output)
        entry[1].setdefault(idx, []).append(ci)

    def recomputed(self, idx, role, inputs, output):
        """A module call inside backward. A reentrant checkpoint's recomputation: watch the gradients of its
        new tensors as those of the call recorded in forward (same layer, same order). Anything else (the
        non-reentrant checkpoint's recomputation; forward and gradients were recorded already) is skipped."""
        ctx = checkpoint_ctx(backward=True)
        entry = self.checkpoints.get(id(ctx)) if ctx is not None else None
        if entry is None or entry[0] is not ctx:
            return
        queue = entry[1].get(idx)
        if not queue:
            return
        ci = queue.pop(0)
        tape = self.tape
        if role is not COMPUTE or not tape.plan.grads:
            return
        call = tape.calls[ci]
        for t, (rec, created) in zip(self.floats(output, idx), call.outputs):
            if created:
                self._watch_grad(tape, idx, t, rec, idx, call.pass_id)
        for t, rec in zip(self.floats(inputs, idx, True), call.inputs):
            if rec.producer < 0 and rec.consumers and rec.consumers[0] == ci:   # an input first seen here
                self._watch_grad(tape, None, t, rec, idx, call.pass_id)

    def _before_inplace(self, module, args):
        """Forward pre-hook of a module that overwrites its input (inplace=True): a module output it takes
        and whose measurement was deferred is measured now, while it holds the values its module made."""
        if torch.compiler.is_compiling() or not self.defer or self.tape is None or not self.active:
            return None
        try:
            self.link_pending()                 # the call that made its input, among others
            seen = self.seen
            for t in args:
                entry = seen.get(id(t)) if type(t) is torch.Tensor else None
                if entry is not None and entry[0] is t and entry[1].producer >= 0:
                    rec = entry[1]
                    self.measure_early(self.tape, self.tape.calls[rec.producer].layer, rec, t)
        except Exception as exc:   # never into training
            self.fail("the in-place pre-hook", exc)
        return None

    def _version(self, t):
        return t._version
