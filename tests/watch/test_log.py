"""The JSONL log: one strict-JSON record per line, flushed every step, complete up to a crash or a kill."""
import json
import math
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

from nnstab.watch import Finding, read_log, watch


def strict(line):
    """json.loads that refuses the non-standard NaN/Infinity/-Infinity tokens."""
    def refuse(token):
        raise ValueError(f"non-strict JSON token {token}")
    return json.loads(line, parse_constant=refuse)


def train(model, steps, mon, fail_at=None):
    torch.manual_seed(0)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    x, y = torch.randn(8, 4), torch.randint(0, 2, (8,))
    for s in range(steps):
        if s == fail_at:
            raise RuntimeError("data loader broke")
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        mon.step(loss=loss)


def test_every_step_is_on_disk_before_the_next_one(tmp_path):
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    mon = watch(model, log_dir=tmp_path)
    train(model, 3, mon)
    on_disk = read_log(tmp_path)                     # read while the monitor is still open
    assert [r["type"] for r in on_disk] == ["header", "step", "step", "step"]
    assert on_disk == mon.records
    mon.close()
    records = read_log(tmp_path / "log.jsonl")
    assert records[-1]["type"] == "end" and records[-1]["status"] == "ok" and records[-1]["steps"] == 3
    header = records[0]
    assert header["framework"] == "torch" and header["schema_version"] == 1
    assert [layer["name"] for layer in header["layers"]] == ["", "0", "1", "2"]
    assert header["layers"][1] == {"name": "0", "type": "Linear", "dtype": "float32", "params": 40}


def test_strict_json_with_nan_as_strings(tmp_path):
    model = nn.Sequential(nn.Linear(4, 2))
    mon = watch(model, log_dir=tmp_path)
    for _ in range(2):
        mon.step(loss=float("nan"))
    mon.close()
    raw = [strict(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert raw[1]["loss"] == "nan"
    assert math.isnan(read_log(tmp_path)[1]["loss"])
    finding = [r for r in raw if r["type"] == "finding"][0]
    assert finding["value"] == "nan" and finding["id"] == 0
    assert Finding.from_dict(read_log(tmp_path)[2]).kind == "nonfinite"
    updates = [r for r in raw if r["type"] == "finding_update"]
    assert updates and updates[-1]["count"] == 2        # the fold reached the log


def test_context_manager_records_the_exception_and_reraises(tmp_path):
    model = nn.Sequential(nn.Linear(4, 2))
    with pytest.raises(RuntimeError, match="data loader broke"):
        with watch(model, log_dir=tmp_path) as mon:
            train(model, 5, mon, fail_at=3)
    records = read_log(tmp_path)
    assert [r["step"] for r in records if r["type"] == "step"] == [0, 1, 2]
    end = records[-1]
    assert end["type"] == "end" and end["status"] == "exception" and "data loader broke" in end["error"]
    assert not model._forward_hooks                    # closed on the way out
    assert (tmp_path / "report.md").exists() and (tmp_path / "report.html").exists()


def test_a_killed_process_leaves_every_step_before_the_kill(tmp_path):
    script = textwrap.dedent(f"""
        import os, signal, torch
        from torch import nn
        from nnstab.watch import watch
        model = nn.Sequential(nn.Linear(4, 2))
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        mon = watch(model, log_dir={str(tmp_path)!r})
        x, y = torch.randn(8, 4), torch.randint(0, 2, (8,))
        for step in range(100):
            if step == 5:
                os.kill(os.getpid(), signal.SIGKILL)
            opt.zero_grad(); loss = nn.functional.cross_entropy(model(x), y); loss.backward(); opt.step()
            mon.step(loss=loss)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL
    records = read_log(tmp_path)
    assert [r["step"] for r in records if r["type"] == "step"] == [0, 1, 2, 3, 4]
    assert records[-1]["type"] == "step"             # no end record: the run was killed


def test_a_killed_process_leaves_every_repeat_of_a_finding_before_the_kill(tmp_path):
    # three repeats of one finding (a loss reported as NaN at steps 1, 2 and 3), then a kill: the count
    # on disk must be 3, not the last power of two the fold had reached
    script = textwrap.dedent(f"""
        import os, signal, torch
        from torch import nn
        from nnstab.watch import watch
        model = nn.Sequential(nn.Linear(4, 2))
        mon = watch(model, log_dir={str(tmp_path)!r})
        for step in range(100):
            if step == 5:
                os.kill(os.getpid(), signal.SIGKILL)
            model(torch.ones(8, 4)).sum().backward()
            mon.step(loss=float("nan") if step in (1, 2, 3) else 1.0)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL
    records = read_log(tmp_path)
    first = [r for r in records if r["type"] == "finding" and r["kind"] == "nonfinite"][0]
    updates = [r for r in records if r["type"] == "finding_update" and r["id"] == first["id"]]
    assert (first["step"], updates[-1]["count"], updates[-1]["last_step"]) == (1, 3, 3)


def test_a_truncated_last_line_is_skipped(tmp_path):
    model = nn.Sequential(nn.Linear(4, 2))
    mon = watch(model, log_dir=tmp_path)
    train(model, 2, mon)
    with open(tmp_path / "log.jsonl", "a") as f:
        f.write('{"type": "step", "st')
    assert [r["type"] for r in read_log(tmp_path)] == ["header", "step", "step"]
    mon.close()


def test_report_from_the_records(tmp_path):
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    with torch.no_grad():
        model[0].bias.fill_(-20.0)
    with watch(model, log_dir=tmp_path) as mon:
        train(model, 11, mon)
    report = mon.report()
    assert [f.kind for f in report.findings] == ["dead_relu"]
    assert "dead_relu" in report.to_markdown()
    assert json.loads(report.to_json())
    from nnstab.report import Report
    assert Report.from_log(tmp_path / "log.jsonl").to_json() == report.to_json()


def test_the_report_of_an_open_monitor_says_it_is_in_progress_not_cut_short():
    import jsonschema

    from nnstab.report import REPORT_SCHEMA

    model = nn.Sequential(nn.Linear(4, 2))
    mon = watch(model)
    train(model, 2, mon)
    live = mon.report()
    assert live.status == "running" and "IN PROGRESS" in live.to_markdown() and "ENDS EARLY" not in live.to_markdown()
    jsonschema.validate(json.loads(live.to_json()), REPORT_SCHEMA)
    mon.close()
    assert mon.report().status == "ok"
