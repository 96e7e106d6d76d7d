"""Report: what the records add up to (verdict, counts per kind, the first non-finite event, failure levels)."""
import math

import pytest

from nnstab.report import Report


def test_a_healthy_run_has_no_findings_and_a_healthy_verdict(healthy_records):
    report = Report(healthy_records)
    summary = report.summary()
    assert summary["verdict"] == "healthy" and summary["findings"] == 0
    assert summary["steps"] == 50 and summary["status"] == "ok"
    assert all(k["findings"] == 0 and k["severity"] is None for k in summary["by_kind"].values())
    assert not report.failed("info")


def test_counts_per_kind_fold_repeats_into_events(nonfinite_records):
    by_kind = Report(nonfinite_records).summary()["by_kind"]
    nonfinite = by_kind["nonfinite"]
    assert nonfinite["findings"] == 2 and nonfinite["events"] == 2 * 13  # 13 steps 37..49, two places
    assert nonfinite["severity"] == "error" and nonfinite["layers"] == ["", "fc2"]
    assert (nonfinite["first_step"], nonfinite["last_step"]) == (37, 49)
    assert by_kind["exploding_gradient"]["severity"] == "warning"
    assert by_kind["underflow"]["severity"] == "info"


def test_first_nonfinite_is_the_earliest_phase_of_the_earliest_step_not_the_first_record(nonfinite_records):
    # the loss finding was logged first, but the forward pass of fc2 broke before the loss was computed
    report = Report(nonfinite_records)
    first = report.first_nonfinite
    assert (first.layer, first.phase, first.step) == ("fc2", "forward", 37)
    ordered = report.ordered_findings()
    assert ordered[0] is first
    assert [f.severity for f in ordered[1:]] == sorted((f.severity for f in ordered[1:]),
                                                       key=["error", "warning", "info"].index)


@pytest.mark.parametrize("level, failed", [("error", True), ("warning", True), ("info", True), ("never", False)])
def test_fail_on_levels(nonfinite_records, level, failed):
    assert Report(nonfinite_records).failed(level) is failed


def test_fail_on_is_at_or_above(runs):
    only_warning = [runs.header(), runs.step(0),
                    runs.finding("dead_relu", "act", 0, "forward", "warning", 0.9, 0.5, "90% of act is dead; lower "
                                 "the learning rate or use LeakyReLU."), runs.end(1)]
    report = Report(only_warning)
    assert not report.failed("error") and report.failed("warning") and report.failed("info")
    with pytest.raises(ValueError, match="fail_on"):
        report.failed("fatal")


def test_values_written_as_strings_come_back_as_floats(nonfinite_records):
    report = Report(nonfinite_records)
    assert math.isinf(report.first_nonfinite.value)
    assert math.isnan(report.steps[-1]["loss"]) and math.isinf(report.steps[-1]["layers"]["fc2"]["act_absmax"])


def test_loss_summary_names_where_the_loss_broke(nonfinite_records):
    loss = Report(nonfinite_records).loss_summary()
    assert loss["first_nonfinite_step"] == 37 and loss["nonfinite_steps"] == 13
    assert loss["min_step"] == 36 and math.isfinite(loss["min"])


def test_layer_table_keeps_the_broken_maximum_and_a_finite_minimum(nonfinite_records):
    rows = {r["name"]: r for r in Report(nonfinite_records).layer_table()}
    assert list(rows) == ["fc1", "act", "fc2"]
    assert math.isinf(rows["fc2"]["act_absmax"]) and math.isinf(rows["fc2"]["grad_norm_max"])
    assert rows["fc2"]["grad_norm_min"] == pytest.approx(0.5)
    assert rows["act"]["dead_frac"] == pytest.approx(0.25 + 49 / 1000)
    assert rows["fc2"]["findings"] == 2
    assert rows["fc2"]["nonfinite_steps"] == 13 and rows["fc1"]["nonfinite_steps"] == 0


def test_a_log_without_end_is_incomplete(healthy_records):
    report = Report(healthy_records[:-1])
    assert report.status == "incomplete" and report.n_steps == 50


def test_records_are_copied_not_kept_by_reference(healthy_records):
    report = Report(healthy_records)
    healthy_records[1]["loss"] = float("nan")
    assert math.isfinite(report.steps[0]["loss"])


def test_internal_errors_of_the_monitor_are_neither_kinds_nor_the_first_nonfinite_event(runs):
    records = [runs.header(), runs.step(0),
               runs.finding("nonfinite", "", 0, "update", "info", "nan", "nan",
                            "internal error in nnstab.watch (forward hook of '0'): NotImplementedError; it is "
                            "switched off for the rest of the run, training is unaffected",
                            details={"internal_error": True}),
               runs.step(1), runs.end(2)]
    report = Report(records)
    assert report.first_nonfinite is None and len(report.internal_errors) == 1
    summary = report.summary()
    assert summary["by_kind"]["nonfinite"]["findings"] == 0 and summary["internal_errors"] == 1
    text = report.to_terminal(color=False)
    assert "first non-finite" not in text and "note: internal error in nnstab.watch" in text


def test_a_nonfinite_note_is_not_the_first_nonfinite_event(runs):
    records = [runs.header(), runs.step(0),
               runs.finding("nonfinite", "fc1", 0, "backward", "info", "inf", 0.0,
                            "GradScaler skipped step 0 (inf gradients at loss scale 65536); nothing to do unless "
                            "it keeps happening."), runs.end(1)]
    assert Report(records).first_nonfinite is None


def test_a_live_monitor_and_its_log_give_the_same_report(tmp_path):
    import torch

    from nnstab.watch import watch

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    monitor = watch(model, log_dir=tmp_path, every=2)
    for step in range(5):
        x = torch.randn(16, 3)
        if step == 3:
            x[0, 0] = float("inf")  # a broken sample
        loss = model(x).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        monitor.step(loss=loss)
    live = Report.from_monitor(monitor)  # step 4 is still pending (every=2): reading it is from_monitor's job
    assert len(live.steps) == 5 and live.first_nonfinite.step == 3
    monitor.close()
    assert Report.from_monitor(monitor).to_json() == Report.from_log(tmp_path / "log.jsonl").to_json()
