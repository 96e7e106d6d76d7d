"""Report.from_log: reading a JSONL log back, including one whose writer was killed mid-line."""
import json

import pytest

from nnstab.report import Report


def write_log(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def test_from_log_gives_the_same_report_as_the_records(tmp_path, nonfinite_records):
    log = write_log(tmp_path / "log.jsonl", nonfinite_records)
    assert Report.from_log(log).to_json() == Report(nonfinite_records).to_json()


def test_a_last_line_cut_short_is_dropped_with_a_note(tmp_path, nonfinite_records):
    killed = nonfinite_records[:-1]  # no end record: the process died
    log = write_log(tmp_path / "log.jsonl", killed)
    text = log.read_text()
    log.write_text(text + json.dumps({"type": "step", "step": 50, "loss": 1.0, "layers": {}})[:23])
    report = Report.from_log(log)
    assert report.status == "incomplete" and len(report.steps) == 50
    assert report.first_nonfinite.layer == "fc2"  # everything flushed before the cut is there
    assert any("cut short" in note for note in report.notes)
    assert "cut short" in report.to_terminal(color=False) and "cut short" in report.to_html()


def test_a_broken_line_in_the_middle_is_skipped_and_named(tmp_path, healthy_records):
    log = write_log(tmp_path / "log.jsonl", healthy_records)
    lines = log.read_text().splitlines()
    lines[3] = lines[3][:10]
    log.write_text("\n".join(lines) + "\n")
    report = Report.from_log(log)
    assert len(report.steps) == 49 and report.status == "ok"
    assert report.notes == ["1 unreadable line(s) of the log were skipped (line 4); "
                            "the report shows every other record"]


def test_a_log_folder_is_read_like_its_log_file(tmp_path, healthy_records):
    write_log(tmp_path / "log.jsonl", healthy_records)
    assert Report.from_log(tmp_path).to_json() == Report(healthy_records).to_json()


def test_repeats_folded_after_the_finding_update_its_count(runs):
    records = [runs.header(), runs.step(0),
               dict(runs.finding("dead_relu", "act", 0, "forward", "warning", 0.9, 0.5, "act is dead; lower the "
                                 "learning rate."), id=0),
               runs.step(1), {"type": "finding_update", "id": 0, "count": 2, "last_step": 1},
               runs.step(2), {"type": "finding_update", "id": 0, "count": 3, "last_step": 2}, runs.end(3)]
    (finding,) = Report(records).findings
    assert (finding.count, finding.last_step) == (3, 2)
    assert Report(records).summary()["by_kind"]["dead_relu"]["events"] == 3


def test_a_record_without_type_is_rejected(tmp_path):
    log = tmp_path / "log.jsonl"
    log.write_text('{"step": 1}\n')
    with pytest.raises(ValueError, match='"type" field'):
        Report.from_log(log)


def test_missing_and_empty_logs_say_what_to_pass(tmp_path):
    with pytest.raises(FileNotFoundError, match="log.jsonl that `nnstab run`"):
        Report.from_log(tmp_path / "nope.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(ValueError, match="holds no records"):
        Report.from_log(tmp_path / "empty.jsonl")
