"""What every adapter shares: the layer list, attaching/detaching hooks, the step's tape, and hook failures.

An adapter knows one framework. Its forward hooks record each module call into the current Tape
(nnstab.watch.tape): which tensors it took and made, and what to measure of them. On an accelerator the
measurements are launched in the hooks and stay on the device; on the host they run together when the
model's forward returns (flush_forward), looking at sentinels first when the step does not ask for every
layer. At the step's end the adapter adds the parameters, the loss and the AMP scale, and `read()`s the
pending tapes (one transfer for device results). Everything after that is framework-neutral.
"""
from __future__ import annotations

import math
from typing import NamedTuple

from nnstab.watch.tape import COMPUTE, EARLY, FINITE, MODIFIED, NOTED, SKIPPED, Call, Tape, TRec


class LayerInfo(NamedTuple):
    name: str      # qualified name, as named_modules() gives it ("" is the model itself)
    type: str      # class name
    dtype: str     # dtype of its own parameters ("" without parameters)
    params: int    # number of its own parameter values


class BaseAdapter:
    framework = ""
    SENTINELS = False      # may look at sentinels first on the host (see flush_forward)

    def __init__(self, model):
        self.model = model
        self.names: list[str] = []
        self.modules: list = []
        self.handles: list = []
        self.tape: Tape | None = None   # the step being recorded
        self.seen: dict = {}            # id(tensor) -> (tensor, TRec) for the forward pass in progress
        self.defer = False              # measure at the end of the forward pass / step (host tensors)
        self.later: list = []           # what the forward pass noted to measure (see flush_forward)
        self.pending: list = []         # host tensors: forward calls as the hooks saw them, recorded together
                                        # when the model's forward ends (see link_pending)
        self._hint = None               # (version, autograd node) of the output of the call being linked,
                                        # as they were when its hook ran
        self.sentinels = False          # on steps not asking for every layer, look at the model's outputs
                                        # and at the gradients nearest its inputs first (see flush_forward)
        self.active = False
        self.noting = False             # active, recording a step, host tensors: hooks only note (see link_pending)
        self.on_cpu = True              # the model's parameters are on the CPU: results can be read at once
        self._own_params = None         # [(layer, its own parameters)], listed on first use
        self.disabled: set = set()      # layers whose hooks failed once: skipped from then on
        self.errors: list = []          # (where, exception): the monitor turns each into an info finding
        self.modified_layers: set = set()   # layers whose outputs were changed in place before the pass ended:
                                            # measured in their hook from then on (see measure_early)
        self.notes: set = set()         # what the adapter could not see (e.g. inside a fullgraph compile), once each
        self.read_loss_now = False      # a host loss is read at the step's end (replay scans each step at once),
                                        # else with the pending steps' statistics

    # -- subclasses provide ----------------------------------------------------------------------
    def _modules(self):
        raise NotImplementedError

    def layer_info(self, name, module) -> LayerInfo:
        raise NotImplementedError

    def _attach_one(self, idx, module):
        raise NotImplementedError

    def _params(self, tape, only=None, grads_only=False):
        """Record the norms of the trainable parameters and their gradients (of layer `only`, or all);
        with grads_only, of the gradients alone (a PARAM measurement with no parameter norms)."""
        raise NotImplementedError

    def _loss(self, tape, loss) -> int:
        raise NotImplementedError

    def _scale(self, tape, scaler_state) -> int:
        raise NotImplementedError

    def read(self, tapes):
        raise NotImplementedError

    def floats(self, x, layer, inputs=False):
        """The floating arrays in a module's inputs or output (tuples, lists, dicts of them)."""
        raise NotImplementedError

    def _finite(self, tape, layer, t, rec) -> int:
        """Record a number that is NaN/inf exactly when some value of t is (its sum)."""
        raise NotImplementedError

    def _range(self, tape, layer, t):
        """Record t's min and max."""
        raise NotImplementedError

    def _sample(self, tape, layer, t, role):
        """Record a fixed subsample of t's values (underflow shares are estimated from it on the host)."""
        raise NotImplementedError

    def _finite_value(self, t):
        """The number _finite records for t (its sum, exact about NaN/inf)."""
        raise NotImplementedError

    def _version(self, t):
        """t's in-place version counter (torch), or None where the framework has none."""
        return None


    def _units(self, tape, layer, units, conv, rec, t):
        raise NotImplementedError

    def _watch_grad(self, tape, layer, t, rec, owner, pass_id=None, node=None):
        """Arrange for t's gradient to be measured (torch: a hook on the node `node` that made it, t.grad_fn
        by default); nothing by default."""

    def _called(self, idx, ci):
        """A call was recorded (the NumPy adapter pairs it with its backward)."""

    # -- shared ----------------------------------------------------------------------------------
    def _update_noting(self):
        self.noting = self.active and self.tape is not None and self.defer

    def link_pending(self):
        """Record the forward calls the hooks noted (host tensors), in the order they completed.

        Python run between two layers finds its data evicted by the layer's arithmetic, so the hooks
        only append what they saw; the linking, noting and hook registration run here, together, when
        the model's forward ends (or earlier, when something needs the record at once)."""
        pending = self.pending[:]       # the list itself stays: the hooks hold its append
        self.pending.clear()
        for idx, role, units, conv, inputs, output, hint in pending:
            if self.tape is None or not self.active or idx in self.disabled:
                continue
            self._hint = hint
            try:
                self.record_forward(idx, role, units, conv, inputs, output)
            except Exception as exc:   # never into training
                self.fail(f"forward hook of {self.names[idx] or 'the model'!r}", exc, idx)
        self._hint = None

    def record_forward(self, idx, role, units, conv, inputs, output):
        """One forward call: link its inputs to the calls that produced them, and note what to measure.

        A tensor already seen in this pass (a child's output handed up by its parent, an in-place
        result) is not measured again. A COMPUTE call measures its new outputs, and every input whose
        finiteness is unknown (the batch, a functional op's result) so that the origin of a NaN can be
        told apart from its victims; a THROUGH call (cannot create NaN/inf) passes its input's
        measurement on. With `defer` (host tensors) the measurements run together when the model's
        forward ends (see flush_forward); on an accelerator they are launched here, asynchronously.
        """
        tape = self.tape
        ci = len(tape.calls)
        call = Call(idx, tape.pass_id, role)
        tape.calls.append(call)
        seen = self.seen
        if role is not COMPUTE:
            first = None
            for t in self.floats(inputs, idx, True):
                entry = seen.get(id(t))
                if entry is None or entry[0] is not t:
                    rec = TRec(-1)
                    seen[id(t)] = (t, rec)
                else:
                    rec = entry[1]
                rec.consumers.append(ci)
                call.inputs.append(rec)
                first = rec if first is None else first
            for t in self.floats(output, idx):
                entry = seen.get(id(t))
                if entry is not None and entry[0] is t:   # an in-place result
                    rec = entry[1]
                    call.outputs.append((rec, False))
                else:
                    rec = TRec(ci, first.meas if first is not None else None)
                    seen[id(t)] = (t, rec)
                    call.outputs.append((rec, True))
                if units is not None:
                    if self.defer:
                        self.later.append((idx, units, conv, rec, t))
                    else:
                        self._units(tape, idx, units, conv, rec, t)
            self._called(idx, ci)
            if idx == 0:
                self._end_pass(call)
            return
        plan = tape.plan
        defer = self.defer
        hint = self._hint
        watch = []                  # outputs whose gradients to watch, once the inputs are linked too
        for t in self.floats(output, idx):
            entry = seen.get(id(t))
            if entry is not None and entry[0] is t:       # a child's output handed up, or an in-place result
                rec = entry[1]
                call.outputs.append((rec, False))
            else:
                rec = TRec(ci)
                if defer:
                    rec.meas = tape.add(FINITE, idx, None, (None,), trec=rec)   # filled in by flush_forward
                    rec.version = self._version(t) if hint is None else hint[0]
                    self.later.append((idx, None, call, rec, t))
                    if self.modified_layers and idx in self.modified_layers:
                        self.measure_early(tape, idx, rec, t)
                else:
                    rec.meas = self._finite(tape, idx, t, rec)
                    self._more(tape, idx, t, plan)
                if plan.grads:
                    watch.append((t, rec))
                seen[id(t)] = (t, rec)
                call.outputs.append((rec, True))
            if units is not None:
                if defer:
                    self.later.append((idx, units, conv, rec, t))
                else:
                    self._units(tape, idx, units, conv, rec, t)
        for t in self.floats(inputs, idx, True):
            entry = seen.get(id(t))
            if entry is None or entry[0] is not t:
                rec = TRec(-1)
                seen[id(t)] = (t, rec)
                if plan.grads:
                    self._watch_grad(tape, None, t, rec, idx)
                if defer:
                    self.later.append((idx, False, call, rec, t))     # measured only if it matters
                else:
                    rec.meas = self._finite(tape, None, t, rec)
            else:
                rec = entry[1]
            rec.consumers.append(ci)
            call.inputs.append(rec)
        for t, rec in watch:
            self._watch_grad(tape, idx, t, rec, idx, None, None if hint is None else hint[1])
        self._called(idx, ci)
        if idx == 0:
            self._end_pass(call)

    def _more(self, tape, idx, t, plan):
        """The scheduled extras of a module output: min/max, and a sample for the underflow shares."""
        if plan.range:
            self._range(tape, idx, t)
        if plan.under:
            self._sample(tape, idx, t, "act")

    def flush_forward(self, model_outputs=None):
        """Measure what the forward pass noted, in one tight loop (warm caches, a fraction of the cost of
        measuring between layers): outputs' sums and extras; units; then, only for calls whose output
        came out non-finite, their unknown inputs and their parameters — before the optimiser step.

        Sentinel mode (`sentinels`, on steps that do not ask for every layer): only the model's own
        outputs are summed first — a NaN/inf anywhere upstream reaches them through the layers that
        mix every value — and the other layers only when one of those came out non-finite.
        """
        later, self.later = self.later, []
        tape = self.tape
        if not later or tape is None:
            return
        plan = tape.plan
        # the model's outputs by their measurement: an output of a pass-through module (LogSoftmax, ReLU
        # last) carries the measurement of the COMPUTE output it came from, which is the one to look at
        # (a model whose outputs hold no tensor the adapter can find gives no sentinel: everything is measured)
        sentinel = self.sentinels and not plan.layers and bool(model_outputs)
        outs = {rec.meas for rec in model_outputs} if sentinel else set()
        if sentinel and None not in outs:
            healthy = True
            for idx, what, x, rec, t in later:
                if what is None and rec.meas in outs:
                    healthy &= self._fill_noted(tape, idx, rec, t)
            if healthy:
                for idx, what, x, rec, t in later:
                    if what is None:
                        m = tape.meas[rec.meas]
                        if rec.state is EARLY:                 # looked at already; recorded as the rest
                            if rec.meas not in outs:
                                m.what = SKIPPED
                                tape.scalars[m.s0] = 0.0
                            continue
                        if tape.scalars[m.s0] is None:         # not looked at: the pass was finite
                            self._check_version(idx, rec, t)
                            m.what = SKIPPED
                            tape.scalars[m.s0] = 0.0
                        if rec.state is NOTED:                 # (a changed output's values are not its module's)
                            self._more(tape, idx, t, plan)
                    elif what is not False:
                        self._units(tape, idx, what, x, rec, t)
                return
        broken = set()
        for idx, what, x, rec, t in later:
            if what is None:                                   # a COMPUTE output
                value = tape.scalars[tape.meas[rec.meas].s0]
                if not (self._fill_noted(tape, idx, rec, t) if value is None else value - value == 0):
                    broken.add(id(x))
                if rec.state is NOTED:                         # measured early, or changed since: not again
                    self._more(tape, idx, t, plan)
            elif what is not False:                            # units of an activation
                self._units(tape, idx, what, x, rec, t)
        for idx, what, x, rec, t in later:
            if what is False and rec.meas is None and id(x) in broken:
                rec.meas = self._finite(tape, None, t, rec)    # an input of a call that went non-finite
        if broken and not plan.params:
            # a layer whose output went non-finite has its own parameters looked at now, before the
            # optimiser step: were they broken by the last update?
            for idx in {idx for idx, what, x, rec, t in later if what is None and id(x) in broken}:
                self._params(tape, only=idx)

    def flush_grads(self):
        """Measure the gradients held back during backward (sentinel mode); nothing by default."""

    def upstream_compute(self, tape, rec, depth=0) -> bool:
        """Whether the call that produced rec took (through THROUGH calls) the output of a COMPUTE call:
        if not, rec's gradient is one of the last backward makes (nearest the model's inputs)."""
        if rec.producer < 0 or depth > 32:
            return False
        for inp in tape.calls[rec.producer].inputs:
            if inp.producer >= 0:
                c = tape.calls[inp.producer]
                if c.role is COMPUTE or self.upstream_compute(tape, inp, depth + 1):
                    return True
        return False

    def _fill_noted(self, tape, idx, rec, t) -> bool:
        """_fill for a noted output, unless it was measured early; notes an in-place change since."""
        if rec.state is EARLY:
            v = tape.scalars[tape.meas[rec.meas].s0]
            return v - v == 0
        self._check_version(idx, rec, t)
        return self._fill(tape, rec, t)

    def _check_version(self, idx, rec, t):
        """An output changed in place after its module returned it (its values are no longer the module's):
        mark it, and measure that layer's outputs in its hook from the next pass on."""
        if rec.version is not None and self._version(t) != rec.version:
            rec.state = MODIFIED
            self.modified_layers.add(idx)

    def measure_early(self, tape, idx, rec, t):
        """Measure a noted output now, before an in-place operation overwrites it (unless one did already)."""
        if rec.state is not NOTED or rec.meas is None:
            return
        self._check_version(idx, rec, t)
        if rec.state is not NOTED:
            return
        m = tape.meas[rec.meas]
        if m.what is not FINITE or tape.scalars[m.s0] is not None:
            return
        self._fill(tape, rec, t)
        self._more(tape, idx, t, tape.plan)
        rec.state = EARLY

    def _fill(self, tape, rec, t) -> bool:
        """Fill in the sum of a noted output; whether it is finite."""
        value = self._finite_value(t)
        m = tape.meas[rec.meas]
        m.dtype = t.dtype
        tape.scalars[m.s0] = value
        return value - value == 0

    def _end_pass(self, call):
        """The model's own forward finished: one pass; its outputs take their gradient from the loss."""
        for rec, _ in call.outputs:
            rec.root_output = True
        self.flush_forward([rec for rec, _ in call.outputs])
        self.seen.clear()
        self.tape.pass_id += 1

    def accelerated(self) -> bool:
        """Whether the model's parameters live on an accelerator (a GPU), not the CPU."""
        return False

    def layers(self) -> list[LayerInfo]:
        return [self.layer_info(n, m) for n, m in zip(self.names, self.modules)]

    def attach(self):
        for name, module in self._modules():
            self.names.append(name)
            self.modules.append(module)
        try:
            for idx, module in enumerate(self.modules):
                self.handles.append(self._attach_one(idx, module))
        except BaseException:
            self.detach()
            raise
        self.active = True

    def detach(self):
        for h in reversed(self.handles):
            h.remove()
        self.handles.clear()
        self.active = False
        self.tape = None
        self.seen.clear()
        self.pending.clear()
        self._update_noting()

    def begin(self, step: int, plan) -> Tape:
        """Start recording step `step`, measuring what `plan` asks for."""
        self.seen.clear()
        self.later.clear()
        self.pending.clear()
        if step % 64 == 0:                # where the model lives changes rarely (model.to(...)); look now and then
            self.on_cpu = not self.accelerated()
            self.defer = self.on_cpu
            self.sentinels = self.on_cpu and self.SENTINELS
        self.tape = Tape(step, plan)
        self._update_noting()
        return self.tape

    def check_loss(self, loss):
        """A TypeError naming the fix unless `loss` is None, a float or a one-element array of the framework."""

    def end(self, loss=None, scaler_state=None) -> Tape | None:
        """Close the current step: add parameter norms (if planned), the loss and the AMP scale."""
        try:
            self.link_pending()         # a forward whose model-level hook never ran (submodules called directly)
            self.flush_forward()
            self.flush_grads()
        except Exception as exc:
            self.fail("measuring the step", exc)
        tape, self.tape = self.tape, None
        self._update_noting()
        self.seen.clear()
        self.later.clear()
        self.pending.clear()
        self.held = []
        if tape is None:
            return None
        if None in tape.scalars:        # placeholders a failed measurement never filled
            tape.scalars = [math.nan if v is None else v for v in tape.scalars]
        try:
            if tape.plan.params:
                self._params(tape)
            elif tape.plan.pgrads:
                self._params(tape, grads_only=True)
        except Exception as exc:
            self.fail("parameter statistics", exc)
        if loss is not None:
            tape.loss = self._loss(tape, loss)
        if scaler_state:
            tape.scale = self._scale(tape, scaler_state)
        return tape

    def fail(self, where: str, exc: BaseException, layer: int | None = None):
        """A hook broke: remember it for the monitor and stop measuring that layer (or everything when
        `layer` is None); the step's hook data is dropped. Training goes on untouched."""
        self.errors.append((where, exc))
        if layer is None:
            self.active = False
            self.noting = False
        else:
            self.disabled.add(layer)
        if self.tape is not None:
            self.tape.broken = True
        self.seen.clear()
        self.later.clear()
        self.pending.clear()
        self.held = []
