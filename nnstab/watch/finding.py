"""Finding: one numerical problem the monitor saw, where (layer, step, phase) and how bad (severity).

Severity semantics (API.md section 3):
  "error"    the run's numbers are already broken (non-finite values, overflow to inf in the model's dtype);
  "warning"  training is impaired (vanishing/exploding gradients, dead or saturated units, divergence,
             underflow in the model's dtype);
  "info"     a risk or a note (what would overflow or flush to zero in float16/bfloat16, a step GradScaler skipped).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace

KINDS = (
    "nonfinite", "overflow", "underflow", "vanishing_gradient", "exploding_gradient",
    "saturation", "dead_relu", "loss_divergence", "unstable_formula",
)
PHASES = ("forward", "backward", "update", "loss")
SEVERITIES = ("info", "warning", "error")
_RANK = {s: i for i, s in enumerate(SEVERITIES)}


def severity_rank(severity: str) -> int:
    """info < warning < error, as 0 < 1 < 2; an unknown name is a ValueError that lists the known ones."""
    try:
        return _RANK[severity]
    except KeyError:
        raise ValueError(f"severity must be one of {SEVERITIES}, got {severity!r}") from None


def encode_float(x):
    """A float for strict JSON: NaN and infinities become the strings "nan", "inf", "-inf"."""
    if x is None or isinstance(x, (bool, int, str)):
        return x
    x = float(x)
    if math.isfinite(x):
        return x
    return "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")


def decode_float(x):
    """The inverse of encode_float: "nan", "inf", "-inf" back to floats; other values unchanged."""
    if isinstance(x, str) and x in ("nan", "inf", "-inf"):
        return float(x)
    return x


@dataclass(frozen=True)
class Finding:
    """One problem: `kind` at `layer` ("" = whole model or the loss), `step`, `phase`, with `severity`.

    `value` is the measured figure and `threshold` the limit it crossed; `message` says what happened
    and what to try. Repeats are folded in: `count` occurrences, the last at `last_step`.
    """

    kind: str
    layer: str
    step: int
    phase: str
    severity: str
    value: float
    threshold: float
    message: str
    count: int = 1
    last_step: int | None = None
    rank: int | None = None
    details: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"Finding kind must be one of {KINDS}, got {self.kind!r}")
        if self.phase not in PHASES:
            raise ValueError(f"Finding phase must be one of {PHASES}, got {self.phase!r}")
        severity_rank(self.severity)

    @property
    def severity_rank(self) -> int:
        return severity_rank(self.severity)

    def folded(self, step: int) -> "Finding":
        """This finding with one more repeat, seen at `step` (the first occurrence keeps its step and value)."""
        return replace(self, count=self.count + 1, last_step=step)

    def to_dict(self) -> dict:
        """Strict-JSON-ready dict (NaN/inf as strings)."""
        d = asdict(self)
        d["value"] = encode_float(self.value)
        d["threshold"] = encode_float(self.threshold)
        d["details"] = _encode_tree(self.details)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Finding":
        """Rebuild from to_dict() output (a log record's "type" key is ignored)."""
        names = cls.__dataclass_fields__.keys()
        kw = {k: v for k, v in d.items() if k in names}
        kw["value"] = float(decode_float(kw.get("value", math.nan)))
        kw["threshold"] = float(decode_float(kw.get("threshold", math.nan)))
        kw["details"] = _decode_tree(kw.get("details") or {})
        return cls(**kw)

    def __str__(self):
        where = self.layer or "<model>"
        rep = f" (x{self.count}, last at step {self.last_step})" if self.count > 1 else ""
        return f"[{self.severity}] {self.kind} at {where}, step {self.step}, {self.phase}: {self.message}{rep}"


def _encode_tree(x):
    if isinstance(x, dict):
        return {str(k): _encode_tree(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_encode_tree(v) for v in x]
    if isinstance(x, float):
        return encode_float(x)
    return x


def _decode_tree(x):
    if isinstance(x, dict):
        return {k: _decode_tree(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_decode_tree(v) for v in x]
    return decode_float(x)
