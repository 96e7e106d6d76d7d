"""Linter: run-time detection of unstable formulas in torch code, as "unstable_formula" findings.

    with nnstab.lint.Linter(model) as linter:
        for x, y in batches:
            ...forward, loss, backward, optimiser step...
            linter.step()                  # once per optimiser step: this step's findings
    linter.findings                        # one per (pattern, layer, source line), repeats counted

A torch function mode sees every torch call of the thread: producers (softmax, sigmoid, exp, std, ...)
tag their outputs in a weak provenance map, and when a later operation consumes a tagged tensor in an
unstable way (log of a softmax output, a division by a std...) the consumed values are measured
against the pattern's losing range. The counts stay on the tensors' device until the step ends, when
they are read in one transfer per device. Nothing the training computes is changed: the mode calls
every function with the user's arguments and returns its result untouched.
"""
from __future__ import annotations

import math

import torch
from torch.overrides import TorchFunctionMode

from nnstab.lint.patterns import PATTERNS, Limits, replacement
from nnstab.lint.provenance import TagMap, taggable
from nnstab.lint.rules import INPLACE, RULES
from nnstab.lint.where import ModuleTracker, user_source

KIND = "unstable_formula"
_compiling = torch.compiler.is_compiling   # code traced by torch.compile runs unwatched (no graph breaks)


class _Mode(TorchFunctionMode):
    def __init__(self, linter):
        super().__init__()
        self.linter = linter

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        rule = RULES.get(func)
        if rule is None or not self.linter._active or _compiling():
            return func(*args, **kwargs)
        self.linter._func = func
        after = self.linter._guarded(rule, self.linter, args, kwargs)
        out = func(*args, **kwargs)
        if func in INPLACE and args:
            self.linter.tags.drop(args[0])   # the value changed: its old tag no longer holds
        if after is not None:
            self.linter._guarded(after, out)
        return out


class _Seen:
    """One (pattern, layer, source line): what it is and how often its inputs were in the losing range."""

    __slots__ = ("pattern", "layer", "phase", "source", "code", "formula", "op", "limits", "replacement",
                 "range_text", "from_layer", "calls", "observed", "bad", "first_step", "last_step", "warn_step")

    def __init__(self, pattern, layer, phase, source, formula, op, limits, tag, step):
        self.pattern, self.layer, self.phase, self.source, self.op = pattern, layer, phase, source, op
        self.code = source.code
        self.from_layer = tag.layer
        self.formula = formula or pattern.formula
        self.limits = limits
        self.replacement = replacement(pattern, tag)
        self.range_text = pattern.describe_range(limits, tag)
        self.calls = self.observed = self.bad = 0
        self.first_step = self.last_step = step
        self.warn_step = None


class Linter:
    """Watches the torch operations of this thread for unstable formulas (see the module docstring).

    model     the torch.nn.Module whose named_modules() name the layers (None: the first module with
              trainable parameters called at top level, as `nnstab lint` finds a script's model).
    patterns  which patterns to report: None (all) or names from nnstab.lint.PATTERNS.
    step      the number of the first step (a monitor passes its own count).

    start()/close() or a `with` block install and remove the mode and the module hooks, in the calling
    thread. Close in the reverse order of opening when other torch function modes are in use (a mode
    pushed later is kept either way).
    """

    def __init__(self, model=None, *, patterns=None, step=0):
        if model is not None and not isinstance(model, torch.nn.Module):
            raise TypeError(f"Linter(model) needs a torch.nn.Module, got {type(model).__name__}; the lint watches "
                            f"torch operations (nnstab.nn models compute in NumPy and have no formulas to lint)")
        if patterns is not None:
            unknown = sorted(set(patterns) - set(PATTERNS))
            if unknown:
                raise ValueError(f"unknown lint pattern(s) {unknown}; the patterns are: {', '.join(PATTERNS)}")
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise TypeError(f"Linter option 'step' must be a non-negative int, got {step!r}")
        self.patterns = set(PATTERNS if patterns is None else patterns)
        self.tags = TagMap()
        self.errors = []           # (where, "Type: message") of failures inside the lint, once each
        self._tracker = ModuleTracker(model)
        self._mode = _Mode(self)
        self._step = step
        self._seen = {}            # (pattern, layer, file, line) -> _Seen, over the whole run
        self._open = {}            # key -> [calls, observed, in-range count] of the step under way
        self._closed = []          # (step, entries) of steps ended but not read yet
        self._active = False
        self._func = None          # the torch function being handled (for the name of the operation)

    # -- public ------------------------------------------------------------------------------------
    def start(self) -> "Linter":
        """Install the torch function mode and the module hooks (in the calling thread)."""
        if not self._active:
            self._tracker.attach()
            self._mode.__enter__()
            self._active = True
        return self

    def step(self, *, read: bool = True) -> list:
        """End a training step and clear the provenance map. Returns the findings of the steps ended since
        the last read (one per pattern, layer and line, with that step's calls and share); with
        read=False the in-range counts stay on their device until read() (no synchronisation now)."""
        self._closed.append((self._step, self._open))
        self._open = {}
        self.tags.clear()
        self._step += 1
        return self.read() if read else []

    def read(self) -> list:
        """The findings of the ended steps not read yet, in step order; one transfer per device for all."""
        closed, self._closed = self._closed, []
        _to_host([entries for _, entries in closed])
        found = []
        for step, entries in closed:
            for key, (calls, observed, bad) in entries.items():
                seen = self._seen[key]
                seen.calls += calls
                seen.observed += observed
                seen.bad += bad
                seen.last_step = step
                if bad and seen.warn_step is None:
                    seen.warn_step = step
                found.append(self._finding(seen, calls, observed, bad, step, None))
        return found

    @property
    def findings(self) -> list:
        """Every formula seen so far, one Finding per (pattern, layer, source line), in order of first sight:
        `count` its calls, `value` the share of all its inputs in the losing range, `step` the first step
        it was seen in that range (or at all, when never), `last_step` the last step it ran."""
        self.read()
        _to_host([self._open])
        found = []
        for key, seen in self._seen.items():
            calls, observed, bad = seen.calls, seen.observed, seen.bad
            warn, last = seen.warn_step, seen.last_step
            entry = self._open.get(key)
            if entry is not None:
                calls, observed, bad, last = calls + entry[0], observed + entry[1], bad + entry[2], self._step
                if entry[2] and warn is None:
                    warn = self._step
            found.append(self._finding(seen, calls, observed, bad, warn if bad else seen.first_step, last))
        return found

    @property
    def models(self) -> list:
        """The class names of the root modules whose named_modules() name the layers (the model given, or
        those found), in the order they were first seen."""
        return list(self._tracker.root_types)

    @property
    def steps(self) -> int:
        """How many steps were ended (counting from the `step` option)."""
        return self._step

    def close(self) -> list:
        """Remove the mode and the hooks. Returns the findings not read yet, those of a step left open
        (no step() after it) included; they stay in `findings`."""
        if self._active:
            self._active = False
            _remove_mode(self._mode)
            self._tracker.detach()
        if self._open:
            self._closed.append((self._step, self._open))
            self._open = {}
        self.tags.clear()
        return self.read()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()
        return False

    def __repr__(self):
        state = "active" if self._active else "inactive"
        return f"<nnstab.lint Linter {state}: {self._step} steps, {len(self._seen)} formulas>"

    # -- called by the rules --------------------------------------------------------------------------
    def user_call(self) -> bool:
        """Whether the operation being handled was called by the user's code (not torch's or nnstab's)."""
        return user_source(2) is not None

    def layer(self) -> str:
        """The layer whose forward is running ("" outside the model)."""
        return self._tracker.where()[0]

    def observe(self, name, tensor, tag, formula=None):
        """Measure `tensor`, consumed by pattern `name`, against the pattern's losing range."""
        if name not in self.patterns or not taggable(tensor):
            return
        source = user_source(2)
        if source is None:
            return   # inside nnstab's own functions: not the user's formula
        pattern = PATTERNS[name]
        limits = Limits.of(tag.dtype, tensor.dtype)
        layer, phase = self._tracker.where()
        key = (name, layer, source.file, source.line)
        if key not in self._seen:
            self._seen[key] = _Seen(pattern, layer, phase, source, formula, _op_name(self._func), limits, tag,
                                    self._step)
        with torch.no_grad():
            bad = pattern.losing(tensor.detach(), limits, tag).sum()
        entry = self._open.get(key)
        if entry is None:
            self._open[key] = [1, tensor.numel(), bad]
        else:
            entry[0] += 1
            entry[1] += tensor.numel()
            entry[2] = entry[2] + bad   # stays on the device until read

    # -- internals ---------------------------------------------------------------------------------
    def _guarded(self, fn, *args):
        """Run a rule; a failure of the lint is noted once and never reaches the training code."""
        try:
            return fn(*args)
        except Exception as exc:
            where = getattr(fn, "__qualname__", repr(fn))
            if all(w != where for w, _ in self.errors):
                self.errors.append((where, f"{type(exc).__name__}: {exc}"))
            return None

    def _finding(self, seen, calls, observed, bad, step, last_step):
        from nnstab.watch.finding import Finding

        share = bad / observed if observed else math.nan
        where = f"layer {seen.layer!r}" if seen.layer else ("the loss" if seen.phase == "loss" else "the model")
        if bad:
            said = (f"{_percent(share)} of its {observed:,} inputs were in the range where it loses precision "
                    f"({seen.range_text})")
        else:
            said = (f"none of its {observed:,} inputs were yet in the range where it loses precision "
                    f"({seen.range_text})")
        origin = f" (its input from layer {seen.from_layer!r})" if seen.from_layer not in (None, "", seen.layer) else ""
        message = (f"{seen.formula} in {where}{origin} at {seen.source.short}: {said}; use {seen.replacement} "
                   f"instead")
        details = {
            "pattern": seen.pattern.name, "formula": seen.formula, "op": seen.op, "replacement": seen.replacement,
            "file": seen.source.file, "line": seen.source.line, "code": seen.code, "location": seen.source.short,
            "share": share, "in_range": bad, "observed": observed, "range": seen.range_text,
            "dtype": seen.limits.dtype, "input_layer": seen.from_layer,
        }
        return Finding(KIND, seen.layer, step, seen.phase, "warning" if bad else "info", share, 0.0, message,
                       count=calls, last_step=last_step if last_step is not None and last_step != step else None,
                       details=details)


def _to_host(groups):
    """Turn the device counts in these entry dicts into ints: one stack and transfer per device."""
    by_device = {}
    for entries in groups:
        for entry in entries.values():
            if isinstance(entry[2], torch.Tensor):
                by_device.setdefault(entry[2].device, []).append(entry)
    for entries in by_device.values():
        with torch.no_grad():
            values = torch.stack([e[2].reshape(()) for e in entries]).tolist()
        for e, v in zip(entries, values):
            e[2] = int(v)


def _op_name(func) -> str:
    """How a user would spell the operation: torch.log, Tensor.log, torch.nn.functional.binary_cross_entropy."""
    name = getattr(func, "__name__", None) or repr(func)
    owner = (getattr(func, "__qualname__", "") or "").rpartition(".")[0]
    if owner in ("TensorBase", "Tensor", "_TensorBase"):
        return f"Tensor.{name}"
    if owner == "_VariableFunctionsClass":
        return f"torch.{name}"
    module = getattr(func, "__module__", None) or "torch"
    return f"{module}.{name}"


def _percent(share) -> str:
    if share >= 0.001 or share == 0:
        return f"{100 * share:.1f}%"
    return f"{100 * share:.2g}%"


def _remove_mode(mode):
    """Pop `mode` from this thread's torch function mode stack, keeping any modes pushed after it."""
    from torch.overrides import _pop_mode, _push_mode

    depth = torch._C._len_torch_function_stack()
    above = []
    for _ in range(depth):
        top = _pop_mode()
        if top is mode:
            break
        above.append(top)
    else:   # not on the stack (another thread, or already popped): restore what was taken
        pass
    for m in reversed(above):
        _push_mode(m)
