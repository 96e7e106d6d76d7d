"""nnstab.watch under torch.distributed: per-rank logs, their merge, and a NaN on one rank of a DDP run."""
import json
import math
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from nnstab.report import Report
from nnstab.watch.distributed import log_name, merge_logs, rank_logs, report_stem
from nnstab.watch.log import read_log, to_json_line

WORKER = Path(__file__).with_name("_ddp_worker.py")
DDP_TIMEOUT_S = 120    # a hung rendezvous must fail the test, never hang the suite
NAN_RANK, NAN_STEP = 1, 3


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    """A 2-rank gloo DDP run (6 steps) with a NaN put into rank 1's input at step 3; returns its log_dir."""
    log_dir = tmp_path_factory.mktemp("ddp")
    cmd = [sys.executable, str(WORKER), str(log_dir), str(free_port()), str(NAN_RANK), str(NAN_STEP)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=DDP_TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"the 2-process DDP run did not finish in {DDP_TIMEOUT_S} s: {exc.stderr}")
    assert done.returncode == 0, done.stderr[-3000:]
    return log_dir


def test_each_rank_writes_its_own_log_and_reports(ddp_run):
    assert [p.name for p in rank_logs(ddp_run)] == ["log.rank0.jsonl", "log.rank1.jsonl"]
    for rank, path in enumerate(rank_logs(ddp_run)):
        records = read_log(path)
        header = records[0]
        assert header["type"] == "header" and header["rank"] == rank and header["world_size"] == 2
        steps = [r for r in records if r["type"] == "step"]
        assert [r["step"] for r in steps] == list(range(6)) and {r["rank"] for r in steps} == {rank}
        assert all(r["rank"] == rank for r in records if r["type"] == "finding")
        for fmt in ("md", "html", "json"):
            assert (ddp_run / f"report.rank{rank}.{fmt}").is_file()


def test_the_merged_report_localises_the_nan_to_rank_1_its_first_layer_and_step_3(ddp_run):
    report = Report.from_log(ddp_run)            # rank 0 merged the ranks' logs into log_dir/log.jsonl
    first_layer = next(info["name"] for info in report.header["layers"] if info["name"])   # "" is the model
    assert first_layer == "0"
    first = report.first_nonfinite
    assert (first.rank, first.step, first.phase) == (NAN_RANK, NAN_STEP, "forward")
    assert first.details["source"] == "input" and first.details["via"] == first_layer
    assert report.header["ranks"] == [0, 1] and report.header["rank"] is None
    assert (ddp_run / "report.md").is_file()


def test_rank_0_sees_the_nan_only_through_the_gradient_all_reduce(ddp_run):
    """Rank 0 never saw the NaN input: its forward pass, loss and output gradients stay finite through
    step 3. DDP averages parameter gradients across ranks in that backward, so rank 0's parameters
    turn NaN in the optimiser update of step 3, and from step 4 on everything on rank 0 is NaN."""
    records = read_log(ddp_run / log_name(0, 2))
    steps = {r["step"]: r for r in records if r["type"] == "step"}
    for s in range(NAN_STEP + 1):
        assert math.isfinite(steps[s]["loss"])
        assert not any(st.get("act_nonfinite") or st.get("grad_nonfinite") for st in steps[s]["layers"].values())
    assert math.isnan(steps[NAN_STEP + 1]["loss"])
    own = [f for f in Report(records).findings if f.kind == "nonfinite"]
    assert own and all(f.rank == 0 for f in own)
    assert min(f.step for f in own) == NAN_STEP
    assert all(f.phase == "update" for f in own if f.step == NAN_STEP)   # no forward/backward NaN of its own


def _log(path, rank, findings, updates=(), end="ok", notes=()):
    records = [{"type": "header", "schema_version": 1, "framework": "torch", "model": "M", "layers": [],
                "options": {}, "rank": rank, "world_size": 2}]
    records += [{"type": "note", "step": 0, "message": text} for text in notes]
    records += [{"type": "step", "step": s, "loss": 1.0, "time": 0.1 * s, "layers": {}, "rank": rank}
                for s in range(4)]
    for k, (step, layer) in enumerate(findings):
        records.append({"type": "finding", "id": k, "kind": "nonfinite", "layer": layer, "step": step,
                        "phase": "forward", "severity": "error", "value": "nan", "threshold": "inf",
                        "message": "m", "count": 1, "last_step": None, "rank": rank, "details": {}})
    records += [{"type": "finding_update", "id": k, "count": c, "last_step": 3} for k, c in updates]
    if end is not None:
        records.append({"type": "end", "status": end, "error": None, "steps": 4, "time": 0.4})
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_merge_renumbers_ids_keeps_ranks_and_takes_the_worst_end(tmp_path):
    _log(tmp_path / "log.rank1.jsonl", 1, [(1, "b"), (2, "c")], updates=[(0, 3)], end=None)
    _log(tmp_path / "log.rank0.jsonl", 0, [(2, "a")], updates=[(0, 2)])
    merged = merge_logs(tmp_path, out=tmp_path / "log.jsonl")
    assert [to_json_line(r) for r in merged] == [to_json_line(r) for r in read_log(tmp_path / "log.jsonl")]
    report = Report(merged)
    by_layer = {f.layer: f for f in report.findings}
    assert {k: (f.rank, f.count) for k, f in by_layer.items()} == {"a": (0, 2), "b": (1, 3), "c": (1, 1)}
    assert report.first_nonfinite.layer == "b"
    assert report.status == "killed"             # rank 1's log has no end record
    assert [(r["step"], r["rank"]) for r in merged if r["type"] == "step"][:3] == [(0, 0), (0, 1), (1, 0)]


def test_merge_says_each_note_once(tmp_path):
    _log(tmp_path / "log.rank0.jsonl", 0, [], notes=["not seen inside the graph"])
    _log(tmp_path / "log.rank1.jsonl", 1, [], notes=["not seen inside the graph", "only on rank 1"])
    report = Report(merge_logs(tmp_path))
    assert report.notes == ["not seen inside the graph", "only on rank 1"]


def test_names_of_files_and_a_merge_of_nothing(tmp_path):
    assert log_name(None, None) == log_name(0, 1) == "log.jsonl" and log_name(3, 4) == "log.rank3.jsonl"
    assert report_stem(0, 1) == "report" and report_stem(1, 2) == "report.rank1"
    with pytest.raises(ValueError, match="no logs to merge"):
        merge_logs(tmp_path)
