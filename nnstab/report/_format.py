"""Shared wording and number formatting of the renderers: severities, marks, kind order, figures."""
from __future__ import annotations

import math

SEVERITY_ORDER = {"info": 0, "warning": 1, "error": 2}
# Within one step, events happen in this order: a forward overflow precedes the loss, which precedes backward.
PHASE_ORDER = {"forward": 0, "loss": 1, "backward": 2, "update": 3}
# Every kind the watch can report, in the order a reader should meet them (broken numbers first).
KIND_ORDER = (
    "nonfinite", "overflow", "loss_divergence", "exploding_gradient", "vanishing_gradient",
    "underflow", "saturation", "dead_relu", "unstable_formula",
)
# Levels accepted by --fail-on; "never" turns findings off as a failure cause.
FAIL_LEVELS = ("info", "warning", "error", "never")

VERDICT_WORDS = {"error": "FAILED", "warning": "WARNINGS", "info": "NOTES", None: "HEALTHY"}
# How the run ended, when not cleanly: said next to the verdict, and at least as loud as it.
STATUS_WORDS = {"exception": ("error", "SCRIPT RAISED"), "killed": ("warning", "KILLED"),
                "interrupted": ("warning", "INTERRUPTED"), "incomplete": ("warning", "LOG ENDS EARLY"),
                "running": ("info", "IN PROGRESS")}
MARKS_UNICODE = {"error": "✗", "warning": "⚠", "info": "i", None: "✓", "unchecked": "–"}
MARKS_ASCII = {"error": "X", "warning": "!", "info": "i", None: "+", "unchecked": "-"}


def worst(severities) -> str | None:
    """The highest severity among `severities`, or None when there is none."""
    best = None
    for s in severities:
        if best is None or SEVERITY_ORDER.get(s, 0) > SEVERITY_ORDER.get(best, 0):
            best = s
    return best


def headline(worst_severity, status, watched: bool = True) -> tuple[str | None, str]:
    """(severity that sets the mark and colour, words) of the report's first line: the verdict of the
    findings, and how the run ended when it did not end cleanly ("HEALTHY" never stands beside a crash,
    nor for a run in which no model was watched)."""
    if not watched:
        severity, said = STATUS_WORDS.get(status, ("warning", ""))
        return severity, "NOTHING WATCHED" + (f" · {said}" if said else "")
    if status not in STATUS_WORDS:
        return worst_severity, VERDICT_WORDS[worst_severity]
    severity, said = STATUS_WORDS[status]
    found = VERDICT_WORDS[worst_severity] if worst_severity else "NO FINDINGS"
    return worst([severity, worst_severity] if worst_severity else [severity]), f"{found} · {said}"


def at_or_above(severity: str, level: str) -> bool:
    """True when `severity` reaches the --fail-on `level` ("never" is never reached)."""
    if level == "never":
        return False
    if level not in SEVERITY_ORDER:
        raise ValueError(f"fail_on must be one of {FAIL_LEVELS}, got {level!r}")
    return SEVERITY_ORDER.get(severity, 0) >= SEVERITY_ORDER[level]


def real(value):
    """A number from a record: the strings "nan", "inf", "-inf" of strict JSON back to floats; None stays None."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def fmt(value, digits: int = 3) -> str:
    """A figure for people: 3 significant digits, "nan"/"inf" spelled out, "—" for missing."""
    value = real(value)
    if value is None:
        return "—"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if value == 0:
        return "0"
    magnitude = abs(value)
    if 1e-3 <= magnitude < 1e5:
        return f"{value:.{digits}g}"
    return f"{value:.{digits - 1}e}"


def fmt_share(value) -> str:
    """A fraction in [0, 1] as a percentage."""
    value = real(value)
    if value is None or not isinstance(value, (int, float)) or math.isnan(value):
        return fmt(value)
    return f"{100 * value:.1f}%"


def steps_span(first: int, last: int | None, dash: str = "–") -> str:
    """ "step 3" or "steps 3–40". """
    if last is None or last == first:
        return f"step {first}"
    return f"steps {first}{dash}{last}"


def plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def place(finding) -> str:
    """Where a finding happened, as a reader names it: its layer, or "(input)" when the model's input
    was already non-finite, "(loss)", or "(model)"; prefixed with "rank N: " in a distributed run."""
    if not finding.layer and (finding.details or {}).get("source") == "input":
        where = "(input)"
    else:
        where = layer_label(finding.layer, finding.phase)
    rank = getattr(finding, "rank", None)
    return where if rank is None else f"rank {rank}: {where}"


def layer_label(name: str, phase: str | None = None) -> str:
    """The layer as a reader sees it: "" is the loss (in the loss phase) or the whole model."""
    if name:
        return name
    return "(loss)" if phase == "loss" else "(model)"
