"""Per-step figures as arrays for the plots: the loss and each layer's statistics, and thinning of long runs."""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from nnstab.report._format import real

# Points kept per line in a plot: enough to show every spike in a 1000-pixel figure, small enough
# that the inline SVG of a 100k-step run stays a few hundred kilobytes.
MAX_PLOT_POINTS = 1200


class Line(NamedTuple):
    """One plotted quantity over the steps: values (NaN where absent or broken), where it was recorded
    (a check that runs every n-th step records every n-th value), and where it was recorded but not finite."""
    y: np.ndarray
    recorded: np.ndarray
    broken: np.ndarray

    def points(self, x):
        """(steps, values) where recorded: a line joins them across the steps in between; a broken value
        is NaN here, so the line breaks there (the plots mark it separately)."""
        return x[self.recorded], self.y[self.recorded]


def step_axis(steps: list[dict]) -> np.ndarray:
    return np.array([int(r.get("step", i)) for i, r in enumerate(steps)], dtype=np.int64)


def loss_line(steps: list[dict]) -> Line:
    return _line([r.get("loss") for r in steps])


def layer_lines(steps: list[dict], stat: str, layers=None) -> dict[str, Line]:
    """{layer: Line} for one statistic; layers that never recorded it are left out."""
    names = list(layers) if layers is not None else _layer_names(steps)
    out = {}
    for name in names:
        raw = [((r.get("layers") or {}).get(name) or {}).get(stat) for r in steps]
        if any(v is not None for v in raw):
            out[name] = _line(raw)
    return out


def _line(raw) -> Line:
    y = np.array([_as_float(v) for v in raw], dtype=np.float64)
    recorded = np.array([v is not None for v in raw], dtype=bool)
    broken = recorded & ~np.isfinite(y)
    return Line(np.where(broken, np.nan, y), recorded, broken)


def _layer_names(steps):
    seen = {}
    for r in steps:
        for name in (r.get("layers") or {}):
            seen.setdefault(name, None)
    return list(seen)


def _as_float(value) -> float:
    value = real(value)
    if value is None or isinstance(value, str):
        return np.nan
    return float(value)


def thin(x, y, max_points: int = MAX_PLOT_POINTS):
    """Keep at most ~max_points of a long line, and in every bucket its lowest and highest finite point.

    Striding would drop the single spike that matters in an exploding run; a min/max envelope per
    bucket keeps it. Non-finite points are not thinned here: the plots mark them from the full series.
    """
    n = len(x)
    if n <= max_points:
        return x, y
    buckets = max_points // 2
    edges = np.linspace(0, n, buckets + 1).astype(np.int64)
    keep = []
    finite = np.isfinite(y)
    for lo, hi in zip(edges[:-1], edges[1:]):
        idx = np.nonzero(finite[lo:hi])[0] + lo
        if idx.size == 0:
            keep.append(lo)  # a NaN here leaves a visible gap in the line, as in the full series
            continue
        seg = y[idx]
        keep.extend((idx[np.argmin(seg)], idx[np.argmax(seg)]))
    keep = np.unique(np.array(keep, dtype=np.int64))
    return x[keep], y[keep]
