"""The Report: a watched run's records (header, steps, findings, end) and what they add up to.

A report is built from the records alone, so `Report.from_log(path)` of a saved JSONL log and
`Report.from_monitor(monitor)` of a live monitor give the same report. Rendering never measures.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

from nnstab.report._format import KIND_ORDER, PHASE_ORDER, SEVERITY_ORDER, at_or_above, place, real, worst
from nnstab.report.records import read_log

_SUFFIXES = {".md": "markdown", ".markdown": "markdown", ".html": "html", ".htm": "html",
             ".json": "json", ".txt": "terminal", ".jsonl": "jsonl"}


class Report:
    """What a watched run found, rendered as terminal text, Markdown, one HTML file or JSON.

        report = monitor.report()            # or Report.from_log("nnstab-report/log.jsonl")
        print(report.to_terminal())
        report.save("report.html")           # format from the suffix: .md .html .json .txt .jsonl
    """

    def __init__(self, records, *, notes=(), running=False):
        self.records = [dict(r) for r in records]
        self.running = running      # the records of a monitor still open: no end record yet, and none missing
        # what a reader should know: what the monitor could not see, then about the log itself (e.g. cut short)
        self.notes = [r["message"] for r in self.records if r.get("type") == "note" and r.get("message")]
        self.notes += list(notes)
        headers = [r for r in self.records if r.get("type") == "header"]
        ends = [r for r in self.records if r.get("type") == "end"]
        self.header = headers[0] if headers else {}
        self.end = ends[-1] if ends else None
        self.steps = [_restore_step(r) for r in self.records if r.get("type") == "step"]
        self.findings = _findings(self.records)

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def from_log(cls, path) -> "Report":
        """The report of a saved JSONL log; a last line cut short by a killed process is dropped with a note."""
        records, notes = read_log(path)
        return cls(records, notes=notes)

    @classmethod
    def from_monitor(cls, monitor) -> "Report":
        """The report of a live (or closed) monitor, from the same records it streams to its log."""
        monitor.findings  # reading the findings reads any pending steps (every > 1) into the records
        return cls(monitor.records, running=not getattr(monitor, "_closed", True))

    # -- what the records add up to -----------------------------------------------------------
    @property
    def status(self) -> str:
        """How the run ended: "ok", "exception", "interrupted", "killed", or "incomplete" when the log has no end
        ("running" for the records of a monitor that is still open)."""
        if self.end:
            return self.end.get("status", "ok")
        return "running" if self.running else "incomplete"

    @property
    def n_steps(self) -> int:
        # Distinct step numbers: a log merged from several ranks holds one record per rank and step.
        seen = len({s.get("step") for s in self.steps})
        if self.end and isinstance(self.end.get("steps"), int):
            return max(self.end["steps"], seen)
        return seen

    @property
    def worst_severity(self) -> str | None:
        return worst(f.severity for f in self.findings)

    @property
    def first_nonfinite(self):
        """The earliest non-finite event: the first place the numbers broke, where a reader should start.

        Only errors count: a non-finite "info" is handled (a step GradScaler skipped) or not about the
        model's numbers at all (an internal error of the monitor)."""
        events = [(f.step, PHASE_ORDER.get(f.phase, 9), i, f) for i, f in enumerate(self.findings)
                  if f.kind == "nonfinite" and f.severity == "error" and not is_internal(f)]
        return min(events, key=lambda e: e[:3])[3] if events else None

    @property
    def internal_errors(self) -> list:
        """Findings that report a failure of the monitor itself (the affected probe was switched off)."""
        return [f for f in self.findings if is_internal(f)]

    def ordered_findings(self) -> list:
        """Findings worst first, then by when they happened; the first non-finite event leads."""
        first = self.first_nonfinite
        rest = sorted((f for f in self.findings if f is not first),
                      key=lambda f: (-SEVERITY_ORDER.get(f.severity, 0), f.step, PHASE_ORDER.get(f.phase, 9)))
        return ([first] if first is not None else []) + rest

    def kinds(self) -> list[str]:
        """Every kind the run was checked for, in reading order, plus any other kind that was found."""
        found = [f.kind for f in self.findings if f.kind not in KIND_ORDER]
        return list(KIND_ORDER) + sorted(set(found))

    def checked_kinds(self) -> set[str] | None:
        """The kinds the monitor ran a check for (from the header's options), or None when the log does not say."""
        if not self.header:
            return set()  # no model was watched: nothing was checked
        checks = (self.header.get("options") or {}).get("checks")
        return set(checks) if isinstance(checks, (dict, list)) else None

    @property
    def watched(self) -> bool:
        """Whether a model was watched at all (the log has a header)."""
        return bool(self.header)

    def summary(self) -> dict:
        """Counts per kind and severity, the verdict and how the run ended (plain data, JSON-able)."""
        by_kind = {}
        checked = self.checked_kinds()
        for kind in self.kinds():
            group = [f for f in self.findings if f.kind == kind and not is_internal(f)]
            by_kind[kind] = {
                "checked": checked is None or kind in checked or bool(group),
                "severity": worst(f.severity for f in group),
                "findings": len(group),
                "events": sum(max(int(f.count or 1), 1) for f in group),
                "layers": sorted({f.layer for f in group}),
                "first_step": min((f.step for f in group), default=None),
                "last_step": max((f.last_step if f.last_step is not None else f.step for f in group), default=None),
            }
        by_severity = {s: sum(1 for f in self.findings if f.severity == s) for s in ("error", "warning", "info")}
        return {
            "verdict": self.worst_severity or "healthy",
            "status": self.status,
            "steps": self.n_steps,
            "findings": len(self.findings),
            "by_severity": by_severity,
            "by_kind": by_kind,
            "internal_errors": len(self.internal_errors),
        }

    def layer_labels(self, kind: str) -> list[str]:
        """The places a kind was found, as a reader names them ("(loss)" or "(model)" for layer "")."""
        places = {}
        for f in self.findings:
            if f.kind == kind and not is_internal(f):
                places.setdefault(place(f), None)
        return sorted(places)

    def failed(self, fail_on: str = "error") -> bool:
        """True when a finding reaches `fail_on` ("info", "warning", "error" or "never")."""
        return any(at_or_above(f.severity, fail_on) for f in self.findings)

    def loss_summary(self) -> dict:
        """First, last and lowest finite loss, and where the loss first stopped being finite."""
        losses = [(r.get("step", i), r.get("loss")) for i, r in enumerate(self.steps) if r.get("loss") is not None]
        finite = [(s, v) for s, v in losses if isinstance(v, (int, float)) and math.isfinite(v)]
        bad = [(s, v) for s, v in losses if isinstance(v, (int, float)) and not math.isfinite(v)]
        lowest = min(finite, key=lambda p: p[1]) if finite else None
        return {
            "recorded": len(losses),
            "first": losses[0][1] if losses else None,
            "last": losses[-1][1] if losses else None,
            "min": lowest[1] if lowest else None,
            "min_step": lowest[0] if lowest else None,
            "first_nonfinite_step": bad[0][0] if bad else None,
            "nonfinite_steps": len(bad),
        }

    def layer_table(self) -> list[dict]:
        """One row per layer: what it is, and the extreme figures it reached over the run."""
        declared = {layer.get("name", ""): layer for layer in self.header.get("layers", [])}
        names = list(declared)
        for r in self.steps:
            for name in (r.get("layers") or {}):
                if name not in declared and name not in names:
                    names.append(name)
        rows = []
        for name in names:
            stats = [(r.get("layers") or {}).get(name) or {} for r in self.steps]
            rows.append({
                "name": name,
                "type": declared.get(name, {}).get("type", ""),
                "dtype": declared.get(name, {}).get("dtype", ""),
                "params": declared.get(name, {}).get("params"),
                "act_absmax": _extreme(stats, "act_absmax", max),
                "grad_norm_max": _extreme(stats, "param_grad_norm", max, fallback="grad_out_norm"),
                "grad_norm_min": _extreme(stats, "param_grad_norm", min, fallback="grad_out_norm"),
                "dead_frac": _last(stats, "dead_frac"),
                "saturated_frac": _last(stats, "saturated_frac"),
                "nonfinite_steps": sum(1 for st in stats if _flag(st, "act_nonfinite") or _flag(st, "grad_nonfinite")),
                "findings": sum(1 for f in self.findings if f.layer == name),
            })
        return rows

    # -- renderings ---------------------------------------------------------------------------
    def to_terminal(self, color: bool | None = None, *, ascii: bool | None = None) -> str:
        from nnstab.report.terminal import render
        return render(self, color=color, ascii=ascii)

    def to_markdown(self) -> str:
        from nnstab.report.markdown import render
        return render(self)

    def to_html(self) -> str:
        from nnstab.report.html import render
        return render(self)

    def to_dict(self) -> dict:
        from nnstab.report.jsonout import to_dict
        return to_dict(self)

    def to_json(self, indent: int | None = 1) -> str:
        from nnstab.report.jsonout import render
        return render(self, indent=indent)

    def to_jsonl(self) -> str:
        from nnstab.report.jsonout import render_records
        return render_records(self.records)

    def save(self, path) -> Path:
        """Write the report in the format its suffix names (.md .html .json .txt, or .jsonl for the log)."""
        path = Path(os.fspath(path))
        fmt = _SUFFIXES.get(path.suffix.lower())
        if fmt is None:
            raise ValueError(f"cannot tell the report format from {path.name!r}; end the file name with one of "
                             f"{', '.join(sorted(_SUFFIXES))}")
        text = {"markdown": self.to_markdown, "html": self.to_html, "json": self.to_json,
                "terminal": lambda: self.to_terminal(color=False), "jsonl": self.to_jsonl}[fmt]()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        return path

    def __repr__(self) -> str:
        s = self.summary()
        return f"<Report {s['verdict']}: {s['findings']} findings over {s['steps']} steps, status {s['status']}>"


def is_internal(finding) -> bool:
    """True for a finding about the monitor failing, not about the model (details["internal_error"])."""
    return bool((finding.details or {}).get("internal_error"))


def _findings(records) -> list:
    """Findings with their repeats folded in: a "finding_update" record carries the running count and
    last step of finding `id`, and the last update of an id holds its totals."""
    from nnstab.watch.finding import Finding

    found, by_id = [], {}
    for r in records:
        if r.get("type") == "finding":
            data = {k: v for k, v in r.items() if k not in ("type", "id")}
            found.append(data)
            if "id" in r:
                by_id[r["id"]] = data
        elif r.get("type") == "finding_update" and r.get("id") in by_id:
            by_id[r["id"]].update({k: r[k] for k in ("count", "last_step") if k in r})
    return [Finding.from_dict(data) for data in found]


def _restore_step(record: dict) -> dict:
    out = dict(record)
    out["loss"] = real(record.get("loss"))
    out["layers"] = {name: {k: real(v) for k, v in (stats or {}).items()}
                     for name, stats in (record.get("layers") or {}).items()}
    return out


def _numbers(stats, key):
    values = [s.get(key) for s in stats]
    return [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]


def _extreme(stats, key, pick, fallback=None):
    """The max (or min) of a statistic over the run. For the max a non-finite value wins: it is what a
    reader must see; the min is taken over finite values (NaN has no order)."""
    values = _numbers(stats, key) or (_numbers(stats, fallback) if fallback else [])
    finite = [v for v in values if math.isfinite(v)]
    if pick is max and len(finite) < len(values):
        return next(v for v in values if not math.isfinite(v))
    return pick(finite) if finite else (values[0] if values else None)


def _flag(stats, key) -> bool:
    value = stats.get(key)
    return isinstance(value, (int, float)) and (value != 0 or math.isnan(value))


def _last(stats, key):
    values = _numbers(stats, key)
    return values[-1] if values else None
