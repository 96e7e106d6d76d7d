"""The interleaved timer: pairing, alternation and the ratio statistics (no wall-clock assertions)."""
import pytest

from nnstab.bench.timing import Comparison, calibrate, compare, text_table


def test_comparison_statistics():
    c = Comparison(ours=[1.0, 2.0, 3.0, 4.0, 10.0], peer=[1.0, 1.0, 1.0, 2.0, 5.0])
    assert c.ratios == [1.0, 2.0, 3.0, 2.0, 2.0]
    assert (c.median, c.best, c.worst) == (2.0, 1.0, 3.0)
    assert c.iqr == (2.0, 2.0)
    d = c.to_dict()
    assert d["pairs"] == 5 and d["ratio_median"] == 2.0 and d["ours_s"] == 3.0 and d["peer_s"] == 1.0


def test_compare_interleaves_and_alternates_who_goes_first():
    calls = []
    c = compare(lambda: calls.append("o"), lambda: calls.append("p"), repeat=4, min_time=0.0)
    assert len(c.ours) == len(c.peer) == 4
    calibration = "oo" + "pp"  # a warm-up call and one sized run each
    assert "".join(calls) == calibration + "op" + "po" + "op" + "po"


def test_compare_runs_whole_cycles_per_sample():
    # work that repeats every 7 calls: each sample holds whole periods of it, on both sides
    calls = []
    compare(lambda: calls.append("o"), lambda: calls.append("p"), repeat=2, min_time=0.0, cycle=7)
    assert "".join(calls) == "oo" + "pp" + "o" * 7 + "p" * 7 + "p" * 7 + "o" * 7
    with pytest.raises(ValueError, match="cycle must be >= 1"):
        compare(lambda: None, lambda: None, cycle=0)


def test_calibrate_reaches_min_time_and_rejects_bad_repeat():
    assert calibrate(lambda: None, 0.0) == 1
    assert calibrate(lambda: sum(range(100)), 1e-3) >= 2
    with pytest.raises(ValueError, match="repeat must be >= 1"):
        compare(lambda: None, lambda: None, repeat=0)


def test_text_table_aligns_columns():
    out = text_table(["name", "ratio"], [["softmax", "0.91"], ["mse", "12.00"]], right_from=1)
    lines = out.splitlines()
    assert lines[0] == "| name    | ratio |" and lines[1] == "|---------|-------|"
    assert lines[2] == "| softmax |  0.91 |" and lines[3] == "| mse     | 12.00 |"
