"""The plots: non-finite values are marked rather than dropped, long runs are thinned without losing spikes."""
import math
import re

import numpy as np

from nnstab.report import Report, plots, series
from nnstab.report.series import thin


def test_thin_keeps_the_spike_and_bounds_the_points():
    x = np.arange(100_000)
    y = np.ones(100_000)
    y[77_777] = 1e6
    tx, ty = thin(x, y, max_points=1000)
    assert len(tx) <= 1000 and 77_777 in tx and ty.max() == 1e6
    assert tx[0] == 0 and np.all(np.diff(tx) > 0)


def test_thin_leaves_short_lines_alone():
    x, y = np.arange(10), np.linspace(0, 1, 10)
    tx, ty = thin(x, y)
    assert np.array_equal(tx, x) and np.array_equal(ty, y)


def test_nonfinite_steps_are_marked_on_the_loss_and_gradient_plots(runs):
    broken = Report(runs.nonfinite_run(n=40, first_bad=30))
    healthy = Report(runs.healthy_run(n=40))
    for draw in (plots.loss_plot, plots.grad_norm_plot):
        assert "first non-finite" not in _text_labels(draw(healthy))
        assert draw(broken).count("<path") > draw(healthy).count("<path")  # the crosses and the step line


def test_a_long_run_makes_a_bounded_page(runs):
    n = 20_000
    records = [runs.header()] + [runs.step(i, broken=i == n // 2) for i in range(n)] + [runs.end(n)]
    page = Report(records).to_html()
    assert len(page) < 3_000_000  # thinned to ~1200 points per line; an unthinned page would be ~10x this


def test_plots_are_none_when_nothing_was_recorded(runs):
    report = Report([runs.header(), runs.end(0)])
    assert all(draw(report) is None for draw in (plots.loss_plot, plots.grad_norm_plot,
                                                 plots.activation_plot, plots.dead_saturated_plot))


def test_activation_plot_draws_the_float16_limit_and_marks_layers_that_broke(nonfinite_records):
    svg = plots.activation_plot(Report(nonfinite_records))
    assert "float16 max 65504" in _text_labels(svg)
    assert plots.FP16_MAX == 65504.0 and math.isclose(plots.BF16_MAX, (2 - 2 ** -7) * 2.0 ** 127)


def test_many_layers_are_limited_to_a_readable_legend(runs):
    layers = {f"block{i}": {"param_grad_norm": 10.0 ** (i - 10)} for i in range(25)}
    records = [runs.header(layers=[])] + [{"type": "step", "step": s, "loss": 1.0, "layers": layers}
                                          for s in range(5)] + [runs.end(5)]
    svg = plots.grad_norm_plot(Report(records))
    labels = _text_labels(svg)
    assert "10 of 25 layers shown" in labels
    assert "block24" in labels and "block0" in labels  # the largest and the smallest stay visible


def _text_labels(svg: str) -> str:
    # glyphs are paths; matplotlib keeps each text as an XML comment, which is what a reader sees
    return " ".join(re.findall(r"<!-- (.*?) -->", svg))


def test_a_statistic_read_every_nth_step_is_drawn_as_a_line_not_dropped(runs):
    records = [runs.header(layers=[])]
    for i in range(40):
        stats = {"param_grad_norm": 1.0 + i} if i % 5 == 0 else {}
        records.append({"type": "step", "step": i, "loss": 1.0, "layers": {"fc": stats}})
    line = series.layer_lines(Report(records + [runs.end(40)]).steps, "param_grad_norm")["fc"]
    x, y = line.points(np.arange(40))
    assert list(x) == list(range(0, 40, 5)) and np.all(np.isfinite(y))
    svg = plots.grad_norm_plot(Report(records + [runs.end(40)]))
    assert svg is not None and "fc" in _text_labels(svg)
