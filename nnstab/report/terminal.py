"""The terminal summary: a verdict, the first non-finite event, one marked line per kind, the loss; colour on a TTY."""
from __future__ import annotations

import os
import sys
import textwrap

from nnstab.report._format import (
    MARKS_ASCII, MARKS_UNICODE, fmt, headline, place, plural, steps_span,
)
from nnstab.report.markdown import replay_parts

_COLORS = {"error": "\033[1;31m", "warning": "\033[33m", "info": "\033[36m", None: "\033[32m"}
_DIM, _BOLD, _RESET = "\033[2m", "\033[1m", "\033[0m"
WIDTH = 100          # wrap messages here: readable in an 80-120 column terminal
LAYERS_SHOWN = 3     # names per kind line before "+N more"


def wants_color(stream=None) -> bool:
    """Colour when writing to a terminal, unless NO_COLOR is set (https://no-color.org)."""
    stream = stream if stream is not None else sys.stdout
    if os.environ.get("NO_COLOR"):
        return False
    return bool(getattr(stream, "isatty", lambda: False)())


def can_encode(text: str, stream=None) -> bool:
    encoding = getattr(stream if stream is not None else sys.stdout, "encoding", None) or "ascii"
    try:
        text.encode(encoding)
    except (UnicodeEncodeError, LookupError):
        return False
    return True


def render(report, color: bool | None = None, ascii: bool | None = None) -> str:
    color = wants_color() if color is None else color
    ascii = (not can_encode("".join(MARKS_UNICODE.values()) + "—·→")) if ascii is None else ascii
    marks = MARKS_ASCII if ascii else MARKS_UNICODE
    dash, dot, arrow = ("-", "|", "->") if ascii else ("—", "·", "→")

    def paint(text, severity=None, style=None):
        if not color:
            return text
        return f"{style if style is not None else _COLORS[severity]}{text}{_RESET}"

    s = report.summary()
    header = report.header
    model = f"{header['model']} ({header.get('framework') or '?'})" if report.watched else "no model watched"
    lines = [f"nnstab {dot} {model} {dot} {plural(s['steps'], 'step')} {dot} run ended: {s['status']}"]
    verdict, words = headline(report.worst_severity, report.status, report.watched)
    counts = s["by_severity"]
    lines.append(paint(f"{marks[verdict]} {words.replace('·', dot)}", verdict,
                       None if verdict else _COLORS[None] + _BOLD)
                 + f" {dash} {plural(counts['error'], 'error')}, {plural(counts['warning'], 'warning')}, "
                   f"{plural(counts['info'], 'note')}")
    if report.end and report.end.get("error"):
        lines.append(paint(f"  the script stopped with: {report.end['error']}", "error"))
    first = report.first_nonfinite
    if first is not None:
        where = place(first)
        lines.append(paint(f"  first non-finite: {steps_span(first.step, None)} {dot} {where} "
                           f"{dot} {first.phase} {dot} value {fmt(first.value)}", "error"))
        lines.extend(textwrap.wrap(first.message, WIDTH, initial_indent="    ", subsequent_indent="    ",
                                   break_on_hyphens=False))
        replay = replay_parts(first)
        if replay:
            where = f" at {replay['source']}" if replay["source"] else ""
            lines.append(paint(f"  replayed: {replay['op']} {dot} {replay['module']} {dot} {replay['phase']}{where}",
                               "error"))
            if replay["code"]:
                lines.append(f"    {replay['code']}")
            if replay.get("replacement"):
                lines.append(f"    use {replay['replacement']} instead ({replay['formula']})")
    name_width = max(len(k) for k in s["by_kind"]) + 1
    unchecked = [kind for kind, k in s["by_kind"].items() if not k["checked"]]
    for kind, k in s["by_kind"].items():
        if not k["checked"]:
            continue
        mark = paint(marks[k["severity"]], k["severity"])
        if not k["findings"]:
            lines.append(f"  {mark} {kind}")
            continue
        events = f", {plural(k['events'], 'event')}" if k["events"] != k["findings"] else ""
        layers = report.layer_labels(kind)
        shown = ", ".join(layers[:LAYERS_SHOWN]) + (f" +{len(layers) - LAYERS_SHOWN} more"
                                                     if len(layers) > LAYERS_SHOWN else "")
        lines.append(f"  {mark} {kind:<{name_width}} {plural(k['findings'], 'finding')}{events} "
                     f"{dot} {k['severity']} {dot} {shown} {dot} "
                     f"{steps_span(k['first_step'], k['last_step'], '-' if ascii else '–')}")
    if unchecked:
        lines.append(paint(f"  {marks['unchecked']} not checked: {', '.join(unchecked)}", None, _DIM))
    loss = report.loss_summary()
    if loss["recorded"]:
        tail = f"lowest {fmt(loss['min'])} at step {loss['min_step']}" if loss["min"] is not None else "never finite"
        if loss["first_nonfinite_step"] is not None:
            tail += f"; non-finite from step {loss['first_nonfinite_step']}"
        lines.append(f"  loss {fmt(loss['first'])} {arrow} {fmt(loss['last'])} ({tail})")
    for f in report.internal_errors:
        lines.append(paint(f"  note: {f.message}", None, _DIM))
    for note in report.notes:
        lines.append(paint(f"  note: {note}", None, _DIM))
    return "\n".join(lines) + "\n"
