"""Distributed runs: one log per rank in a shared log_dir, and the merge of those logs into one run.

Under torch.distributed every rank watches its own replica of the model (one monitor per process).
With world_size > 1 a monitor writes log_dir/log.rank<r>.jsonl (and report.rank<r>.md/.html/.json),
so ranks sharing a log_dir never write into the same file. Once every rank has closed its monitor,
one process merges the logs:

    monitor.close(); torch.distributed.barrier()
    if torch.distributed.get_rank() == 0:
        records = merge_logs(log_dir, out=log_dir / "log.jsonl")   # then: nnstab report <log_dir> -o r.html
        Report(records).save(log_dir / "report.html")

Every finding keeps the rank it was seen on, so the merged report's first non-finite event names the
rank, layer and step where the numbers first broke.
"""
from __future__ import annotations

import re
from pathlib import Path

from nnstab.watch.log import LOG_NAME, JsonlLog, read_log

_RANK_FILE = re.compile(r"^log\.rank(\d+)\.jsonl$")
_END_ORDER = {"ok": 0, "interrupted": 1, "exception": 2, "killed": 3}   # the merged run ends as its worst rank


def log_name(rank, world_size) -> str:
    """The log file's name inside log_dir: log.jsonl for one process, log.rank<r>.jsonl for each of several."""
    if rank is None or world_size is None or world_size <= 1:
        return LOG_NAME
    return f"log.rank{rank}.jsonl"


def report_stem(rank, world_size) -> str:
    """The reports' name inside log_dir, without the suffix: "report", or "report.rank<r>" for each of several."""
    if rank is None or world_size is None or world_size <= 1:
        return "report"
    return f"report.rank{rank}"


def rank_logs(log_dir) -> list[Path]:
    """The per-rank logs in `log_dir`, in rank order (empty when the run had one process)."""
    found = [(int(m.group(1)), p) for p in Path(log_dir).iterdir() if (m := _RANK_FILE.match(p.name))]
    return [p for _, p in sorted(found)]


def merge_logs(paths, *, out=None) -> list[dict]:
    """The records of several ranks' logs as one run; written as JSONL to `out` when given.

    `paths`: a log_dir holding log.rank<r>.jsonl files, or a list of log files. The merged run has one
    header (the lowest rank's, with "rank": None and "ranks": every rank merged), every rank's step
    records (each keeps its "rank") ordered by step then rank, every finding with its rank (ids
    renumbered so that they stay unique), and one end record: the worst status of any rank, the most
    steps and the longest time. A missing end record (a rank killed) makes the merged run end "killed".
    """
    if isinstance(paths, (str, Path)):
        paths = rank_logs(paths) if Path(paths).is_dir() else [Path(paths)]
    paths = [Path(p) for p in paths]
    if not paths:
        raise ValueError("merge_logs(paths): no logs to merge; pass the log_dir the ranks wrote "
                         "log.rank<r>.jsonl into, or a list of their log files")
    runs = []
    for k, path in enumerate(paths):
        records = read_log(path)
        header = next((r for r in records if r.get("type") == "header"), None)
        if header is None:
            raise ValueError(f"merge_logs: {str(path)!r} has no header record; pass logs written by nnstab.watch")
        rank = header.get("rank")
        runs.append((k if rank is None else rank, records))
    runs.sort(key=lambda run: run[0])
    header = dict(next(r for r in runs[0][1] if r.get("type") == "header"))
    header["rank"] = None
    header["ranks"] = [rank for rank, _ in runs]
    header["world_size"] = max(header.get("world_size") or 0, len(runs))
    steps, findings, ends, notes = [], [], [], []
    offset = 0
    for rank, records in runs:
        ids = [r["id"] for r in records if r.get("type") == "finding" and isinstance(r.get("id"), int)]
        for r in records:
            kind = r.get("type")
            if kind == "step":
                steps.append({**r, "rank": rank})
            elif kind == "note" and all(n.get("message") != r.get("message") for n in notes):
                notes.append(dict(r))   # the same limitation on every rank is said once
            elif kind in ("finding", "finding_update"):
                moved = {**r, "id": r["id"] + offset} if isinstance(r.get("id"), int) else dict(r)
                if kind == "finding" and moved.get("rank") is None:
                    moved["rank"] = rank
                findings.append(moved)
        end = next((r for r in reversed(records) if r.get("type") == "end"), None)
        ends.append(end or {"type": "end", "status": "killed", "error": f"rank {rank}: the log has no end record",
                            "steps": sum(1 for r in records if r.get("type") == "step"), "time": None})
        offset += max(ids) + 1 if ids else 0
    steps.sort(key=lambda r: (r.get("step", 0), r["rank"]))
    # a finding_update must follow its finding; ordering findings by first step keeps the merged log readable
    first = {r["id"]: (r.get("step", 0), r.get("rank") or 0) for r in findings if r.get("type") == "finding"}
    findings.sort(key=lambda r: (first.get(r.get("id"), (0, 0)), r.get("type") == "finding_update"))
    merged = [header, *notes, *steps, *findings, _merged_end(ends, [rank for rank, _ in runs])]
    if out is not None:
        Path(out).unlink(missing_ok=True)   # the logs were read above: a rerun replaces the merged log
        log = JsonlLog(out)
        try:
            for r in merged:
                log.write(r)
        finally:
            log.close()
    return merged


def _merged_end(ends, ranks) -> dict:
    status = max((e.get("status", "ok") for e in ends), key=lambda s: _END_ORDER.get(s, 3))
    errors = [f"rank {rank}: {e['error']}" for rank, e in zip(ranks, ends) if e.get("error")]
    times = [e["time"] for e in ends if isinstance(e.get("time"), (int, float))]
    return {"type": "end", "status": status, "error": "; ".join(errors) or None,
            "steps": max((e.get("steps") or 0 for e in ends), default=0), "time": max(times, default=None)}
