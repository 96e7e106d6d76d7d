"""The HTML rendering: one self-contained page that works offline (inline CSS and SVG plots, nothing fetched)."""
from __future__ import annotations

from html import escape

from nnstab.report import plots
from nnstab.report._format import (
    MARKS_UNICODE, fmt, fmt_share, headline, layer_label, place, plural, steps_span,
)
from nnstab.report.markdown import FINDINGS_SHOWN, check_options, kind_result, replay_parts, run_options
from nnstab.report.schema import SCHEMA_VERSION

_CSS = """
:root { --error:#c62828; --warning:#b26a00; --info:#00838f; --ok:#2e7d32; --line:#ddd; --muted:#666; }
* { box-sizing: border-box; }
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color:#222; margin:0;
       background:#fafafa; }
main { max-width: 1040px; margin: 0 auto; padding: 24px 20px 48px; background:#fff; }
h1 { font-size: 1.5em; margin: 0 0 6px; }
h2 { font-size: 1.15em; margin: 28px 0 8px; border-bottom:1px solid var(--line); }
.meta { color: var(--muted); font-size: .9em; }
.verdict { display:inline-block; padding: 4px 12px; border-radius: 4px; color:#fff; font-weight:600; margin: 8px 0; }
.v-error { background: var(--error); } .v-warning { background: var(--warning); } .v-info { background: var(--info); }
.v-None { background: var(--ok); }
.alert { border-left: 5px solid var(--error); background:#fdecea; padding: 10px 14px; margin: 12px 0; }
.note { border-left: 5px solid var(--muted); background:#f3f3f3; padding: 8px 14px; margin: 8px 0; }
table { border-collapse: collapse; width: 100%; font-size: .88em; }
th, td { border-bottom: 1px solid var(--line); padding: 4px 8px; text-align: left; vertical-align: top; }
th { background:#f3f3f3; } td.num { text-align:right; font-variant-numeric: tabular-nums; white-space:nowrap; }
tr.first-nonfinite td { background:#fdecea; font-weight:600; }
.mark { font-weight:700; } .s-error { color: var(--error); } .s-warning { color: var(--warning); }
.s-info { color: var(--info); } .s-None { color: var(--ok); } .s-unchecked { color: var(--muted); }
code { background:#f3f3f3; padding: 0 3px; border-radius:3px; }
figure { margin: 10px 0 18px; } figcaption { color: var(--muted); font-size: .88em; }
svg.plot { width: 100%; height: auto; display:block; }
.empty { color: var(--muted); font-style: italic; }
footer { color: var(--muted); font-size: .8em; margin-top: 32px; }
"""

_FIGURES = (
    ("loss", "Loss over steps", plots.loss_plot,
     "Red crosses on the top edge mark steps whose loss was NaN or infinite."),
    ("gradients", "Gradient norm per layer (log scale)", plots.grad_norm_plot,
     "A line falling by decades is a vanishing gradient; one climbing steeply, an exploding one."),
    ("activations", "Activation ranges against the float16/bfloat16 limits", plots.activation_plot,
     "A bar reaching the red dashed line overflows in float16; one left of the dotted line loses precision."),
    ("units", "Dead and saturated units", plots.dead_saturated_plot,
     "Dead units never activate (no gradient flows through them); saturated ones sit on a flat part of "
     "their activation."),
)


def _e(value) -> str:
    return escape(str(value), quote=True)


def _sev(severity) -> str:
    return f'<span class="mark s-{severity}">{MARKS_UNICODE[severity]}</span>'


def render(report) -> str:
    s = report.summary()
    header = report.header
    verdict, words = headline(report.worst_severity, report.status, report.watched)
    counts = s["by_severity"]
    title = f"nnstab report: {header.get('model') or 'model'}"
    body = [f"<h1>{_e(title)}</h1>",
            f'<div class="meta">{_e(header.get("framework") or "?")} · {plural(s["steps"], "step")} · run ended: '
            f'{_e(s["status"])}{" · started " + _e(header["started"]) if header.get("started") else ""}</div>',
            f'<div class="verdict v-{verdict}">{MARKS_UNICODE[verdict]} {_e(words)}</div> '
            f'{plural(counts["error"], "error")}, {plural(counts["warning"], "warning")}, '
            f'{plural(counts["info"], "note")}']
    if report.end and report.end.get("error"):
        body.append(f'<div class="alert">The script stopped with an exception: <code>{_e(report.end["error"])}</code>'
                    f'</div>')
    first = report.first_nonfinite
    if first is not None:
        body.append(f'<div class="alert" id="first-nonfinite"><strong>First non-finite event</strong>: '
                    f'{steps_span(first.step, None)}, layer <code>{_e(place(first))}</code>, '
                    f'{_e(first.phase)}'
                    f' (value {_e(fmt(first.value))}). {_e(first.message)} '
                    f'<a href="#finding-first">See it in the findings table.</a></div>')
        replay = replay_parts(first)
        if replay:
            body.append(_replay(replay))
    body += [f'<div class="note">{_e(n)}</div>' for n in report.notes]
    body += _summary(report, s)
    for key, heading, draw, caption in _FIGURES:
        svg = draw(report)
        body.append(f'<h2 id="plot-{key}">{_e(heading)}</h2>')
        body.append(f"<figure>{svg}<figcaption>{_e(caption)}</figcaption></figure>" if svg
                    else '<p class="empty">Not recorded in this run.</p>')
    body += _findings(report, first)
    body += _layers(report)
    body += _run(report)
    body.append(f"<footer>nnstab report, schema version {SCHEMA_VERSION}. The same figures are in report.json."
                f"</footer>")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            "<link rel=\"icon\" href=\"data:,\">"  # no favicon request: the page makes no request at all
            f"<title>{_e(title)}</title><style>{_CSS}</style></head>\n<body><main>\n"
            + "\n".join(body) + "\n</main></body></html>\n")


def _replay(p) -> str:
    """The replay of the first non-finite step: the operation, its module, phase and source line."""
    where = f" at <code>{_e(p['source'])}</code>" if p["source"] else ""
    code = f"<pre><code>{_e(p['code'])}</code></pre>" if p["code"] else ""
    inputs = f"<div class=\"meta\">inputs: {_e(p['inputs'])}</div>" if p["inputs"] else ""
    fix = (f"<div>It is {_e(p['formula'])}: use <code>{_e(p['replacement'])}</code> instead.</div>"
           if p.get("replacement") else "")
    return (f'<div class="alert" id="replay"><strong>Replayed to the operation</strong>: <code>{_e(p["op"])}</code> in '
            f'<code>{_e(p["module"])}</code> ({_e(p["phase"])}){where}{code}{inputs}{fix}</div>')


def _summary(report, s) -> list[str]:
    rows = []
    for kind, k in s["by_kind"].items():
        layers = ", ".join(report.layer_labels(kind)) or "—"
        when = steps_span(k["first_step"], k["last_step"]) if k["findings"] else "—"
        mark, result = kind_result(k)
        rows.append(f"<tr><td><span class=\"mark s-{k['severity'] if k['checked'] else 'unchecked'}\">{mark}</span>"
                    f"</td><td>{_e(kind)}</td><td>{_e(result)}</td>"
                    f"<td class=num>{k['findings']}</td><td class=num>{k['events']}</td><td>{_e(layers)}</td>"
                    f"<td>{_e(when)}</td></tr>")
    return ['<h2 id="summary">Summary</h2>',
            "<table><thead><tr><th></th><th>kind</th><th>result</th><th>findings</th><th>events</th><th>layers</th>"
            "<th>when</th></tr></thead><tbody>", *rows, "</tbody></table>"]


def _findings(report, first) -> list[str]:
    out = ['<h2 id="findings">Findings</h2>']
    ordered = report.ordered_findings()
    if not ordered:
        return out + ["<p>No findings: every check passed on every step.</p>"]
    out.append("<table><thead><tr><th></th><th>kind</th><th>layer</th><th>when</th><th>phase</th><th>value</th>"
               "<th>threshold</th><th>count</th><th>what happened and what to try</th></tr></thead><tbody>")
    for f in ordered[:FINDINGS_SHOWN]:
        attrs = ' class="first-nonfinite" id="finding-first"' if f is first else ""
        out.append(f"<tr{attrs}><td>{_sev(f.severity)} {_e(f.severity)}</td><td>{_e(f.kind)}</td>"
                   f"<td><code>{_e(place(f))}</code></td>"
                   f"<td>{_e(steps_span(f.step, f.last_step))}</td>"
                   f"<td>{_e(f.phase)}</td><td class=num>{_e(fmt(f.value))}</td>"
                   f"<td class=num>{_e(fmt(f.threshold))}</td><td class=num>{f.count}</td>"
                   f"<td>{_e(f.message)}</td></tr>")
    out.append("</tbody></table>")
    if len(ordered) > FINDINGS_SHOWN:
        out.append(f"<p>{len(ordered) - FINDINGS_SHOWN} more findings are in report.json.</p>")
    return out


def _layers(report) -> list[str]:
    rows = report.layer_table()
    out = ['<h2 id="layers">Layers</h2>']
    if not rows:
        return out + ['<p class="empty">No layers were recorded.</p>']
    out.append("<table><thead><tr><th>layer</th><th>type</th><th>dtype</th><th>params</th><th>max |activation|</th>"
               "<th>min grad norm</th><th>max grad norm</th><th>dead</th><th>saturated</th><th>findings</th>"
               "</tr></thead><tbody>")
    for r in rows:
        cells = [fmt(r["params"]), fmt(r["act_absmax"]), fmt(r["grad_norm_min"]), fmt(r["grad_norm_max"]),
                 fmt_share(r["dead_frac"]), fmt_share(r["saturated_frac"]), r["findings"]]
        out.append(f"<tr><td><code>{_e(layer_label(r['name']))}</code></td><td>{_e(r['type'])}</td>"
                   f"<td>{_e(r['dtype'])}</td>" + "".join(f"<td class=num>{_e(c)}</td>" for c in cells) + "</tr>")
    out.append("</tbody></table>")
    return out


def _run(report) -> list[str]:
    header = report.header
    items = [("command", " ".join(header.get("command") or []) or None), ("started", header.get("started")),
             ("rank", header.get("rank")), ("world size", header.get("world_size")),
             ("duration (s)", fmt(report.end.get("time")) if report.end else None)]
    items += [(f"option {k}", v) for k, v in sorted(run_options(header).items())]
    rows = [f"<tr><th>{_e(k)}</th><td><code>{_e(v)}</code></td></tr>" for k, v in items if v is not None]
    out = ['<h2 id="run">Run</h2>', "<table><tbody>", *rows, "</tbody></table>"] if rows else []
    checks = check_options(header)
    if checks:
        out += ['<h2 id="checks">Checks and their thresholds</h2>', "<table><tbody>"]
        out += [f"<tr><th>{_e(kind)}</th><td><code>{_e(opts)}</code></td></tr>" for kind, opts in checks.items()]
        out.append("</tbody></table>")
    return out
