"""The Markdown rendering: verdict, first non-finite event, per-kind summary, findings, loss, layers, run details."""
from __future__ import annotations

from nnstab.report._format import (
    MARKS_UNICODE, fmt, fmt_share, headline, layer_label, place, plural, steps_span,
)

FINDINGS_SHOWN = 500  # beyond this the table stops being read; report.json holds every finding


def _text(text) -> str:
    """Prose from the run (messages, notes): < and > as entities, so a module named like a tag stays text."""
    return str(text).replace("<", "&lt;").replace(">", "&gt;")


def _cell(text) -> str:
    """A table cell: pipes escaped (else they split the cell), one line; outside code spans, < and > as
    entities, so a module or class name with angle brackets stays text."""
    text = str(text).replace("|", "\\|").replace("\n", " ")
    return text if "`" in text else _text(text)


def _table(head, rows) -> list[str]:
    out = ["| " + " | ".join(_cell(c) for c in head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return out + [""]


def render(report) -> str:
    s = report.summary()
    header = report.header
    verdict, words = headline(report.worst_severity, report.status, report.watched)
    counts = s["by_severity"]
    out = [f"# nnstab report: {header.get('model') or 'model'}", ""]
    out.append(f"**{MARKS_UNICODE[verdict]} {words}**: {plural(counts['error'], 'error')}, "
               f"{plural(counts['warning'], 'warning')}, {plural(counts['info'], 'note')} over "
               f"{plural(s['steps'], 'step')} ({header.get('framework') or '?'}; run ended: {s['status']}).")
    out.append("")
    if report.end and report.end.get("error"):
        out += [f"The script stopped with an exception: `{_cell(report.end['error'])}`", ""]
    first = report.first_nonfinite
    if first is not None:
        out += [f"> **First non-finite event**: {steps_span(first.step, None)}, "
                f"layer `{place(first)}`, "
                f"{first.phase} (value {fmt(first.value)}). {_text(first.message)}", ""]
        replay = replay_text(first)
        if replay:
            out += [f"> **Replayed to the operation**: {replay}", ""]
    for note in report.notes:
        out += [f"*Note: {_text(note)}*", ""]

    out += ["## Summary", ""]
    rows = []
    for kind, k in s["by_kind"].items():
        mark, result = kind_result(k)
        rows.append([mark, kind, result, k["findings"], k["events"],
                     ", ".join(report.layer_labels(kind)) or "—",
                     steps_span(k["first_step"], k["last_step"]) if k["findings"] else "—"])
    out += _table(["", "kind", "result", "findings", "events", "layers", "when"], rows)

    out += ["## Findings", ""]
    ordered = report.ordered_findings()
    if not ordered:
        out += ["No findings: every check passed on every step.", ""]
    else:
        rows = [[("**first** " if f is first else "") + f.severity, f.kind, f"`{place(f)}`",
                 steps_span(f.step, f.last_step), f.phase, fmt(f.value), fmt(f.threshold), f.count, f.message]
                for f in ordered[:FINDINGS_SHOWN]]
        out += _table(["severity", "kind", "layer", "when", "phase", "value", "threshold", "count", "what to try"],
                      rows)
        if len(ordered) > FINDINGS_SHOWN:
            out += [f"{len(ordered) - FINDINGS_SHOWN} more findings are in report.json.", ""]

    loss = report.loss_summary()
    out += ["## Loss", ""]
    if loss["recorded"]:
        line = (f"First {fmt(loss['first'])}, last {fmt(loss['last'])}, lowest {fmt(loss['min'])}"
                + (f" at step {loss['min_step']}" if loss["min_step"] is not None else "") + ".")
        if loss["first_nonfinite_step"] is not None:
            line += (f" Non-finite from step {loss['first_nonfinite_step']} "
                     f"({plural(loss['nonfinite_steps'], 'step')} in all).")
        out += [line, ""]
    else:
        out += ["No loss was recorded (pass it with monitor.step(loss=loss)).", ""]

    out += ["## Layers", ""]
    rows = [[f"`{layer_label(r['name'])}`", r["type"], r["dtype"], fmt(r["params"]), fmt(r["act_absmax"]),
             fmt(r["grad_norm_min"]), fmt(r["grad_norm_max"]), fmt_share(r["dead_frac"]),
             fmt_share(r["saturated_frac"]), r["findings"]] for r in report.layer_table()]
    out += _table(["layer", "type", "dtype", "params", "max |activation|", "min grad norm", "max grad norm",
                   "dead", "saturated", "findings"], rows) if rows else ["No layers were recorded.", ""]

    out += ["## Run", ""]
    run = [("started", header.get("started")), ("command", " ".join(header.get("command") or []) or None),
           ("rank", header.get("rank")), ("world size", header.get("world_size")),
           ("duration (s)", fmt((report.end or {}).get("time")) if report.end else None)]
    out += [f"- {k}: {v}" for k, v in run if v is not None]
    out += [f"- option {k}: {v}" for k, v in sorted(run_options(header).items())]
    out.append("")
    checks = check_options(header)
    if checks:
        out += ["## Checks", ""]
        out += _table(["check", "options (thresholds)"], [[kind, opts] for kind, opts in checks.items()])
    return "\n".join(out)


def replay_parts(finding) -> dict | None:
    """What a nonfinite finding's replay found (details["replay"]), as texts: op, module, phase, source, code,
    inputs; None when it was not replayed or named no operation."""
    r = (finding.details or {}).get("replay") if finding is not None else None
    if not isinstance(r, dict) or r.get("status") != "found":
        return None
    if r.get("op") is None:
        if r.get("phase") == "loss":
            chain = " -> ".join(r.get("loss_ops") or [])
            return {"op": "the loss code", "module": "outside the model", "phase": "loss", "source": None,
                    "code": None, "inputs": f"autograd nodes {chain}" if chain else ""}
        if r.get("phase") == "update":
            who = r.get("optimizer") or "the optimiser"
            return {"op": f"{who} step", "module": ", ".join(r.get("parameters") or []) or "parameters",
                    "phase": "update", "source": None, "code": None, "inputs": ""}
        return None
    inputs = "; ".join(f"{list(i.get('shape', []))} {i.get('dtype', '')} in [{fmt(i.get('min'))}, {fmt(i.get('max'))}]"
                       f", {i.get('zeros', 0)} zeros, {i.get('nonfinite', 0)} non-finite"
                       for i in (r.get("inputs") or [])[:4])
    return {"op": r["op"], "module": r.get("module") or "<model>", "phase": r.get("phase") or "",
            "source": r.get("source"), "code": r.get("code"), "inputs": inputs,
            "replacement": r.get("replacement"), "formula": r.get("formula")}


def replay_text(finding) -> str:
    """One Markdown line: `op` in `module` (phase) at `file:line`: `code` (inputs)."""
    p = replay_parts(finding)
    if p is None:
        return ""
    text = f"`{p['op']}` in `{p['module']}` ({p['phase']})"
    if p["source"]:
        text += f" at `{p['source']}`"
    if p["code"]:
        text += f": `{_cell(p['code'])}`"
    if p["inputs"]:
        text += f" (inputs: {_cell(p['inputs'])})"
    if p.get("replacement"):
        text += f". It is {_cell(p['formula'])}: use `{_cell(p['replacement'])}` instead"
    return text + "."


def kind_result(k) -> tuple[str, str]:
    """(mark, word) of one kind's summary row."""
    if not k["checked"]:
        return MARKS_UNICODE["unchecked"], "not checked"
    return MARKS_UNICODE[k["severity"]], k["severity"] or "clean"


def run_options(header) -> dict:
    """The monitor's options except the per-check ones (shown in their own table)."""
    return {k: v for k, v in (header.get("options") or {}).items() if k != "checks"}


def check_options(header) -> dict[str, str]:
    """{kind: "option=value, ..."} of the checks the run had, from the header."""
    checks = (header.get("options") or {}).get("checks")
    if isinstance(checks, list):
        return {kind: "defaults" for kind in checks}
    if not isinstance(checks, dict):
        return {}
    return {kind: ", ".join(f"{k}={v}" for k, v in (opts or {}).items()) or "defaults"
            for kind, opts in checks.items()}
