"""The JSON rendering: strict JSON (NaN and infinities as the strings "nan", "inf", "-inf") following REPORT_SCHEMA."""
from __future__ import annotations

import json
import math

from nnstab.report.schema import FORMAT_NAME, SCHEMA_VERSION


def strict(value):
    """`value` made strict-JSON-able: non-finite floats become "nan"/"inf"/"-inf", NumPy scalars plain numbers."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return value
    if isinstance(value, dict):
        return {str(k): strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # NumPy / torch scalars
        try:
            return strict(value.item())
        except (TypeError, ValueError, RuntimeError):
            pass
    return str(value)


def to_dict(report) -> dict:
    """The report as plain data (still holding float NaN/inf; `render` makes it strict)."""
    from nnstab import __version__

    header = report.header
    first = report.first_nonfinite
    return {
        "format": FORMAT_NAME,
        "schema_version": SCHEMA_VERSION,
        "nnstab_version": __version__,
        "run": {
            "model": header.get("model"),
            "framework": header.get("framework"),
            "started": header.get("started"),
            "command": header.get("command"),
            "rank": header.get("rank"),
            "world_size": header.get("world_size"),
            "log_schema_version": header.get("schema_version"),
            "options": header.get("options", {}),
        },
        "end": {
            "status": report.status,
            "error": (report.end or {}).get("error"),
            "steps": report.n_steps,
            "time": (report.end or {}).get("time"),
        },
        "summary": report.summary(),
        "first_nonfinite": first.to_dict() if first is not None else None,
        "findings": [f.to_dict() for f in report.findings],
        "loss": report.loss_summary(),
        "layers": report.layer_table(),
        "steps": [{k: v for k, v in r.items() if k != "type"} for r in report.steps],
        "notes": list(report.notes),
    }


def render(report, indent: int | None = 1) -> str:
    """Strict JSON text of the report; `json.loads` reads it back, and it validates against REPORT_SCHEMA."""
    return json.dumps(strict(to_dict(report)), indent=indent, allow_nan=False, ensure_ascii=False) + "\n"


def render_records(records) -> str:
    """Records as a JSONL log, one strict-JSON object per line (the format nnstab.watch streams)."""
    return "".join(json.dumps(strict(r), allow_nan=False, ensure_ascii=False) + "\n" for r in records)
