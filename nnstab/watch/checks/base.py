"""Check: what every kind of check shares — keyword options with defaults, a schedule, and making findings.

A check never measures: each step it is scheduled, it gets the StepView (nnstab.watch.summary) that
the adapter's measurements added up to, and returns findings. It says which measurements it needs
(`needs(step)`), so a step measures only what its scheduled checks will read.

Measurement names a check can need (module outputs' sums, which tell NaN/inf, and the loss are
always measured):
  "grads"   gradients are watched (sum of squares of module outputs' gradients)
  "layers"  every layer is measured (on the CPU other steps look at sentinels first: the model's outputs
            and the gradients nearest its inputs, where a NaN/inf made anywhere ends up)
  "range"   min/max of outputs and gradients
  "params"  norms of the parameters and of their gradients        "units"  per-unit max of ReLU outputs
  "pgrads"  norms of the parameters' gradients only (half the memory traffic of "params")
  "sat"     per-unit mean slope of sigmoid/tanh outputs, row maxima of softmax outputs
  "under"   a fixed subsample of outputs and gradients (underflow/overflow shares, on the host)
"""
from __future__ import annotations

import math
import numbers

from nnstab.watch.finding import Finding


class Check:
    """Base class: subclasses set `kind`, `OPTIONS` ({name: default}), `NEEDS` and `observe()`.

    Every check accepts `every` (check every n-th step, default 1).
    """

    kind = ""
    OPTIONS: dict = {}
    NEEDS: frozenset = frozenset()

    def __init__(self, **options):
        self.every = _positive_int("every", options.pop("every", 1), self.kind)
        for name, default in self.OPTIONS.items():
            value = options.pop(name, default)
            setattr(self, name, _validated(self.kind, name, value, default))
        if options:
            known = ", ".join(["every", *self.OPTIONS])
            raise TypeError(f"{self.kind} check got unknown option(s) {sorted(options)}; it accepts: {known}")
        self.ctx = None

    def bind(self, ctx):
        """Attach the run's context (layer names and types, framework); called once by the monitor."""
        self.ctx = ctx

    def scheduled(self, step: int) -> bool:
        return step % self.every == 0

    def needs(self, step: int) -> frozenset:
        """What must be measured during `step` for this check (empty when it is not scheduled)."""
        return self.NEEDS if self.scheduled(step) else frozenset()

    def periods(self) -> list[int]:
        """Every period this check's schedule repeats with (`every` and its `*_every` options)."""
        return [self.every] + [v for k, v in self.options().items()
                               if k.endswith("_every") and isinstance(v, int) and not isinstance(v, bool)]

    def observe(self, view) -> list[Finding]:
        raise NotImplementedError

    def options(self) -> dict:
        return {"every": self.every, **{name: getattr(self, name) for name in self.OPTIONS}}

    # -- helpers ----------------------------------------------------------------------------------
    def finding(self, layer, step, phase, severity, value, threshold, message, **details) -> Finding:
        return Finding(self.kind, layer, int(step), phase, severity, float(value), float(threshold), message,
                       details=details)

    def describe(self, layer: str) -> str:
        """'fc1' (Linear) for messages; the model itself for ""."""
        if not layer:
            return "the model"
        kind = self.ctx.types.get(layer, "") if self.ctx is not None else ""
        return f"'{layer}' ({kind})" if kind else f"'{layer}'"


def _positive_int(name, value, kind):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{kind} check option {name!r} must be a positive int, got {value!r}")
    if value < 1:
        raise ValueError(f"{kind} check option {name!r} must be a positive int (1 = every step), got {value!r}")
    return int(value)


def _validated(kind, name, value, default):
    """value must have the type of its default (ints accepted for floats); floats must not be NaN."""
    if default is None:                  # "auto" options take None or a positive int
        ok = value is None or (isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 1)
        want = "None or a positive int"
    elif isinstance(default, bool):
        ok = isinstance(value, bool)
        want = "a bool"
    elif isinstance(default, int):
        ok = isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 1
        want = "a positive int"
    elif isinstance(default, float):
        ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and not math.isnan(value) and value > 0
        want = "a positive number"
    else:
        ok, want = True, ""
    if not ok:
        raise TypeError(f"{kind} check option {name!r} must be {want}, got {value!r}")
    return type(default)(value) if isinstance(default, (int, float)) and not isinstance(default, bool) else value
