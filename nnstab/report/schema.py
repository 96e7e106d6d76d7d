"""The versioned JSON Schema (draft 2020-12) of `Report.to_json()`; `python -m nnstab.report.schema` prints it.

Version history
  1  first release: run, end, summary, first_nonfinite, findings, loss, layers, steps, notes.
A change that removes or retypes a field raises SCHEMA_VERSION; adding an optional field does not.
Figures that may be NaN or infinite are "real": a JSON number, or one of the strings "nan", "inf", "-inf"
(strict JSON has no NaN or Infinity); `float(s)` in Python reads such a string back.
"""
from __future__ import annotations

import json

FORMAT_NAME = "nnstab-report"
SCHEMA_VERSION = 1

_REAL_OR_NULL = {"oneOf": [{"type": "number"}, {"enum": ["nan", "inf", "-inf"]}, {"type": "null"}]}
_INT_OR_NULL = {"type": ["integer", "null"]}
_SEVERITY = {"enum": ["info", "warning", "error"]}

_FINDING = {
    "type": "object",
    "required": ["kind", "layer", "step", "phase", "severity", "value", "threshold", "message"],
    "properties": {
        "kind": {"type": "string", "description": "nonfinite, overflow, underflow, vanishing_gradient, "
                 "exploding_gradient, saturation, dead_relu, loss_divergence, unstable_formula"},
        "layer": {"type": "string", "description": "qualified module name; \"\" is the whole model or the loss"},
        "step": {"type": "integer", "minimum": 0, "description": "0-based count of steps before the event"},
        "phase": {"enum": ["forward", "backward", "update", "loss"]},
        "severity": _SEVERITY,
        "value": _REAL_OR_NULL,
        "threshold": _REAL_OR_NULL,
        "message": {"type": "string", "minLength": 1, "description": "what happened and what to try"},
        "count": {"type": "integer", "minimum": 1},
        "last_step": _INT_OR_NULL,
        "rank": _INT_OR_NULL,
        "details": {"type": "object"},
    },
}

_KIND_SUMMARY = {
    "type": "object",
    "required": ["checked", "severity", "findings", "events", "layers", "first_step", "last_step"],
    "properties": {
        "checked": {"type": "boolean", "description": "false: the run had this check switched off"},
        "severity": {"oneOf": [_SEVERITY, {"type": "null"}]},
        "findings": {"type": "integer", "minimum": 0},
        "events": {"type": "integer", "minimum": 0},
        "layers": {"type": "array", "items": {"type": "string"}},
        "first_step": _INT_OR_NULL,
        "last_step": _INT_OR_NULL,
    },
}

_STEP = {
    "type": "object",
    "required": ["step", "layers"],
    "properties": {
        "step": {"type": "integer", "minimum": 0},
        "loss": _REAL_OR_NULL,
        "time": _REAL_OR_NULL,
        "rank": _INT_OR_NULL,
        "layers": {"type": "object", "additionalProperties": {
            "type": "object", "additionalProperties": _REAL_OR_NULL,
            "description": "statistic name (act_absmax, param_grad_norm, dead_frac, ...) -> figure"}},
    },
}

_LAYER_ROW = {
    "type": "object",
    "required": ["name", "act_absmax", "grad_norm_max", "grad_norm_min", "dead_frac", "saturated_frac", "findings"],
    "properties": {
        "name": {"type": "string"}, "type": {"type": "string"}, "dtype": {"type": "string"},
        "params": _INT_OR_NULL,
        "act_absmax": _REAL_OR_NULL, "grad_norm_max": _REAL_OR_NULL, "grad_norm_min": _REAL_OR_NULL,
        "dead_frac": _REAL_OR_NULL, "saturated_frac": _REAL_OR_NULL,
        "nonfinite_steps": {"type": "integer", "minimum": 0, "description": "steps with a NaN/inf output or gradient"},
        "findings": {"type": "integer", "minimum": 0},
    },
}

REPORT_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "nnstab report",
    "description": "Numerical health of one watched training run (Report.to_json()).",
    "type": "object",
    "required": ["format", "schema_version", "nnstab_version", "run", "end", "summary", "first_nonfinite",
                 "findings", "loss", "layers", "steps", "notes"],
    "properties": {
        "format": {"const": FORMAT_NAME},
        "schema_version": {"const": SCHEMA_VERSION},
        "nnstab_version": {"type": "string"},
        "run": {"type": "object", "required": ["model", "framework", "options"], "properties": {
            "model": {"type": ["string", "null"]},
            "framework": {"type": ["string", "null"]},
            "started": {"type": ["string", "null"]},
            "command": {"oneOf": [{"type": "array", "items": {"type": "string"}}, {"type": "null"}]},
            "rank": _INT_OR_NULL, "world_size": _INT_OR_NULL, "log_schema_version": _INT_OR_NULL,
            "options": {"type": "object"},
        }},
        "end": {"type": "object", "required": ["status", "steps"], "properties": {
            "status": {"enum": ["ok", "exception", "interrupted", "killed", "incomplete", "running"],
                       "description": "incomplete: the log has no end record (killed, or still running); running: "
                                      "the report of a monitor still open"},
            "error": {"type": ["string", "null"]},
            "steps": {"type": "integer", "minimum": 0},
            "time": _REAL_OR_NULL,
        }},
        "summary": {"type": "object", "required": ["verdict", "status", "steps", "findings", "by_severity", "by_kind"],
                    "properties": {
                        "verdict": {"enum": ["healthy", "info", "warning", "error"],
                                    "description": "the worst severity found, or healthy"},
                        "status": {"type": "string"},
                        "steps": {"type": "integer", "minimum": 0},
                        "findings": {"type": "integer", "minimum": 0},
                        "by_severity": {"type": "object", "additionalProperties": {"type": "integer", "minimum": 0}},
                        "by_kind": {"type": "object", "additionalProperties": _KIND_SUMMARY},
                        "internal_errors": {"type": "integer", "minimum": 0,
                                            "description": "failures of the monitor itself (not in by_kind)"},
                    }},
        "first_nonfinite": {"oneOf": [_FINDING, {"type": "null"}],
                            "description": "the earliest non-finite event: where to start reading"},
        "findings": {"type": "array", "items": _FINDING},
        "loss": {"type": "object", "properties": {
            "recorded": {"type": "integer"}, "first": _REAL_OR_NULL, "last": _REAL_OR_NULL, "min": _REAL_OR_NULL,
            "min_step": _INT_OR_NULL, "first_nonfinite_step": _INT_OR_NULL, "nonfinite_steps": {"type": "integer"},
        }},
        "layers": {"type": "array", "items": _LAYER_ROW},
        "steps": {"type": "array", "items": _STEP},
        "notes": {"type": "array", "items": {"type": "string"}},
    },
}


if __name__ == "__main__":
    print(json.dumps(REPORT_SCHEMA, indent=2))
