"""Finding: validated fields, a strict-JSON round trip, severity order."""
import json
import math

import pytest

from nnstab.watch import KINDS, PHASES, SEVERITIES, Finding, severity_rank


def make(**kw):
    base = dict(kind="nonfinite", layer="fc1", step=3, phase="forward", severity="error", value=math.inf,
                threshold=3.4e38, message="fc1 overflowed")
    return Finding(**{**base, **kw})


def test_round_trip_through_strict_json():
    f = make(value=math.nan, details={"dtype": "float16", "ratios": {"0": math.inf}}, count=3, last_step=9)
    text = json.dumps(f.to_dict(), allow_nan=False)
    back = Finding.from_dict(json.loads(text))
    assert math.isnan(back.value) and back.details["ratios"]["0"] == math.inf
    assert (back.kind, back.layer, back.step, back.count, back.last_step) == ("nonfinite", "fc1", 3, 3, 9)


@pytest.mark.parametrize("field, value, names", [
    ("kind", "nan", KINDS), ("phase", "optimizer", PHASES), ("severity", "fatal", SEVERITIES)])
def test_unknown_names_are_refused_with_the_known_ones(field, value, names):
    with pytest.raises(ValueError, match=f"{field}.*{names[0]}"):
        make(**{field: value})


def test_severity_order():
    assert [severity_rank(s) for s in ("info", "warning", "error")] == [0, 1, 2]
    assert make(severity="warning").severity_rank < make().severity_rank


def test_folding_keeps_the_first_occurrence():
    f = make().folded(7).folded(8)
    assert (f.step, f.count, f.last_step) == (3, 3, 8)
