"""The report's figures as inline SVG (matplotlib, no pyplot state): loss, gradient norms, activation ranges,
dead and saturated shares.

Each function returns an <svg> element as text, or None when the run recorded nothing to draw.
Non-finite points cannot sit on an axis, so they are marked with a red cross along the top edge,
and the first non-finite step gets a vertical line, in every plot over steps.
"""
from __future__ import annotations

import io
import math

import numpy as np

from nnstab.report._format import layer_label
from nnstab.report.series import layer_lines, loss_line, step_axis, thin

FP16_MAX = 65504.0                    # largest finite float16
FP16_TINY = 2.0 ** -14                # smallest normal float16 (6.1e-5): below it precision drains away
BF16_MAX = 3.3895313892515355e38      # largest finite bfloat16 (same exponent range as float32)
MAX_LINES = 10                        # lines per plot before the legend stops being readable
MAX_ROWS = 30                         # layers per bar chart
BROKEN = "#c62828"                    # the one colour that means "not finite"
WIDTH_IN = 9.0


def _figure(height):
    from matplotlib.figure import Figure

    return Figure(figsize=(WIDTH_IN, height), dpi=96, layout="constrained")


def _svg(fig, salt: str, label: str) -> str:
    """The figure as an <svg> element: glyphs as paths (no fonts needed), ids salted per plot so several
    inline SVGs in one page never share an id, no timestamp (same input, same bytes)."""
    import matplotlib

    buf = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "path", "svg.hashsalt": salt}):
        fig.savefig(buf, format="svg", metadata={"Date": None})
    text = buf.getvalue()
    text = text[text.index("<svg"):]
    return text.replace("<svg ", f'<svg role="img" aria-label="{label}" class="plot" ', 1)


def _mark_broken(ax, x, lines, first_step):
    """Red crosses on the top edge where a value was NaN/inf; a line at the first non-finite step."""
    transform = ax.get_xaxis_transform()  # x in data, y in axes fraction
    labelled = False
    for line in lines:
        if line.broken.any():
            ax.plot(x[line.broken], np.full(int(line.broken.sum()), 0.97), "x", color=BROKEN, markersize=6,
                    transform=transform, clip_on=False, label=None if labelled else "non-finite")
            labelled = True
    if first_step is not None:
        ax.axvline(first_step, color=BROKEN, linestyle="--", linewidth=1)
        ax.text(first_step, 1.01, f" first non-finite (step {first_step})", color=BROKEN, fontsize=8,
                transform=transform, va="bottom", ha="left")


def _positive_finite(values):
    v = np.asarray(values, dtype=np.float64)
    return v[np.isfinite(v) & (v > 0)]


def loss_plot(report) -> str | None:
    if not report.steps:
        return None
    x = step_axis(report.steps)
    line = loss_line(report.steps)
    if not (np.isfinite(line.y).any() or line.broken.any()):
        return None
    fig = _figure(3.0)
    ax = fig.add_subplot()
    tx, ty = thin(*line.points(x))
    ax.plot(tx, ty, color="#1f5fa8", linewidth=1.4, label="loss", **_markers(tx))
    positive = _positive_finite(line.y)
    if positive.size and positive.size == np.isfinite(line.y).sum() and positive.max() / positive.min() > 100:
        ax.set_yscale("log")  # a loss spanning decades reads better on a log axis
    _mark_broken(ax, x, [line], _first_step(report))
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    if line.broken.any():
        ax.legend(loc="best", fontsize=8)
    return _svg(fig, "loss", "loss over steps")


def _markers(x) -> dict:
    # a few points (a short run, or a statistic read every n-th step) are drawn as dots too
    return {"marker": "o", "markersize": 2.5} if len(x) < 60 else {}


def _gradient_stat(report):
    """The parameter-gradient norm, or the output-gradient norm when it was recorded on more steps."""
    best = (None, {}, 0)
    for stat in ("param_grad_norm", "grad_out_norm"):
        lines = layer_lines(report.steps, stat)
        coverage = max((int(line.recorded.sum()) for line in lines.values()), default=0)
        if coverage > best[2]:
            best = (stat, lines, coverage)
    return best[:2]


def _pick_layers(lines: dict, report, kinds, limit=MAX_LINES):
    """The layers worth a line: those named in findings of `kinds` first, then the extremes (largest
    maximum, smallest minimum) so both exploding and vanishing layers stay visible."""
    if len(lines) <= limit:
        return list(lines)
    named = [f.layer for f in report.findings if f.kind in kinds and f.layer in lines]
    chosen = list(dict.fromkeys(named))[:limit]

    def peak(name):
        v = lines[name].y
        return np.nanmax(v) if np.isfinite(v).any() else -math.inf

    def floor(name):
        v = lines[name].y
        return np.nanmin(v) if np.isfinite(v).any() else math.inf

    by_peak = sorted(lines, key=peak, reverse=True)
    by_floor = sorted(lines, key=floor)
    for a, b in zip(by_peak, by_floor):
        for name in (a, b):
            if len(chosen) < limit and name not in chosen:
                chosen.append(name)
    return chosen


def grad_norm_plot(report) -> str | None:
    stat, lines = _gradient_stat(report)
    if not lines:
        return None
    x = step_axis(report.steps)
    shown = _pick_layers(lines, report, ("nonfinite", "exploding_gradient", "vanishing_gradient"))
    fig = _figure(3.4)
    ax = fig.add_subplot()
    for name in shown:
        tx, ty = thin(*lines[name].points(x))
        ax.plot(tx, ty, linewidth=1.1, label=layer_label(name), **_markers(tx))
    if _positive_finite(np.concatenate([lines[n].y for n in shown])).size:
        ax.set_yscale("log")
    _mark_broken(ax, x, [lines[n] for n in shown], _first_step(report))
    ax.set_xlabel("step")
    ax.set_ylabel("parameter gradient norm" if stat == "param_grad_norm" else "output gradient norm")
    ax.grid(alpha=0.3, which="both")
    title = f"{len(shown)} of {len(lines)} layers shown" if len(shown) < len(lines) else None
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, title=title, title_fontsize=8)
    return _svg(fig, "grad", "gradient norm per layer over steps")


def activation_plot(report) -> str | None:
    """Per layer: a bar over the largest |activation| of each step, from its lowest to its highest step,
    on a log axis with the float16 and bfloat16 limits, so a layer nearing 65504 stands out before it overflows."""
    peaks = layer_lines(report.steps, "act_absmax")
    if not peaks:
        return None
    rows = []
    for name, line in peaks.items():
        finite = line.y[np.isfinite(line.y) & (line.y > 0)]
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (None, None)
        rows.append((name, lo, hi, bool(line.broken.any())))
    rows.sort(key=lambda r: (not r[3], -(r[2] or 0.0)))
    rows = rows[:MAX_ROWS]
    values = [v for _, lo, hi, _ in rows for v in (lo, hi) if v is not None and v > 0]
    left = min(values + [FP16_TINY]) / 10
    right = max(values + [FP16_MAX]) * 10
    fig = _figure(1.9 + 0.32 * len(rows))
    ax = fig.add_subplot()
    ax.set_xscale("log")
    ax.set_xlim(left, right)
    for i, (name, lo, hi, broken) in enumerate(rows):
        if hi is not None and hi > 0:
            ax.plot([lo, hi], [i, i], color="#1f5fa8", linewidth=5, solid_capstyle="butt", alpha=0.55)
            ax.plot([hi], [i], "o", color="#1f5fa8", markersize=5)
        if broken:
            ax.plot([right / 1.5], [i], "x", color=BROKEN, markersize=8)
    ax.set_yticks(range(len(rows)), [layer_label(r[0]) for r in rows], fontsize=8)
    ax.set_ylim(len(rows) - 0.5, -0.5)
    ax.axvline(FP16_MAX, color=BROKEN, linestyle="--", linewidth=1, label="float16 max 65504")
    ax.axvline(FP16_TINY, color="#ef6c00", linestyle=":", linewidth=1.2, label="float16 smallest normal 6.1e-5")
    if right >= BF16_MAX:
        ax.axvline(BF16_MAX, color="#6a1b9a", linestyle="--", linewidth=1, label="bfloat16 max 3.4e38")
    else:
        ax.annotate("bfloat16 max 3.4e38 →", xy=(1.0, 1.01), xycoords="axes fraction", ha="right", va="bottom",
                    fontsize=8, color="#6a1b9a")
    if any(r[3] for r in rows):
        ax.plot([], [], "x", color=BROKEN, label="non-finite seen")
    ax.set_xlabel("largest |activation| of a step: bar from the lowest to the highest step, dot at the highest")
    ax.grid(alpha=0.3, axis="x")
    fig.legend(loc="outside lower center", ncol=4, fontsize=8, frameon=False)
    return _svg(fig, "act", "activation ranges per layer against float16 and bfloat16 limits")


def dead_saturated_plot(report) -> str | None:
    """Per layer: the share of dead units (never active) and of saturated units, at the last step recorded."""
    dead = layer_lines(report.steps, "dead_frac")
    sat = layer_lines(report.steps, "saturated_frac")
    names = list(dict.fromkeys(list(dead) + list(sat)))
    if not names:
        return None

    def last(lines, name):
        line = lines.get(name)
        if line is None:
            return None
        finite = line.y[np.isfinite(line.y)]
        return float(finite[-1]) if finite.size else None

    rows = [(n, last(dead, n), last(sat, n)) for n in names]
    rows.sort(key=lambda r: -max(r[1] or 0.0, r[2] or 0.0))
    rows = rows[:MAX_ROWS]
    fig = _figure(1.3 + 0.36 * len(rows))
    ax = fig.add_subplot()
    y = np.arange(len(rows))
    for offset, k, color, label in ((-0.2, 1, "#6d4c41", "dead units"), (0.2, 2, "#f9a825", "saturated units")):
        shares = [100 * (r[k] or 0.0) for r in rows]
        bars = ax.barh(y + offset, shares, height=0.38, color=color, label=label)
        ax.bar_label(bars, labels=[f"{v:.0f}%" if r[k] is not None else "" for v, r in zip(shares, rows)],
                     fontsize=7, padding=2)
    ax.set_yticks(y, [layer_label(r[0]) for r in rows], fontsize=8)
    ax.set_ylim(len(rows) - 0.5, -0.5)
    ax.set_xlim(0, 100)
    ax.set_xlabel("share of the layer's units at the last step (%)")
    ax.grid(alpha=0.3, axis="x")
    ax.legend(loc="lower right", fontsize=8)
    return _svg(fig, "units", "dead and saturated unit shares per layer")


def _first_step(report):
    first = report.first_nonfinite
    return first.step if first is not None else None
