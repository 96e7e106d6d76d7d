"""Reading a run log for a report: the watch's JSONL reader, plus notes on any line it had to skip.

A process killed mid-write leaves a cut last line; the reader skips it, and the report says so,
since a reader of the report should know the run did not end cleanly.
"""
from __future__ import annotations

import json
from pathlib import Path


def read_log(path) -> tuple[list[dict], list[str]]:
    """Records of the JSONL log at `path` (the file, or the folder holding log.jsonl), and notes on skipped lines."""
    from nnstab.watch.log import LOG_NAME
    from nnstab.watch.log import read_log as read_records

    path = Path(path)
    if path.is_dir():
        path = path / LOG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"log {str(path)!r} does not exist; pass the log.jsonl that `nnstab run` or "
                                f"nnstab.watch(model, log_dir=...) wrote")
    records = read_records(path)
    if not records:
        raise ValueError(f"log {str(path)!r} holds no records; was the run stopped before its first step?")
    untyped = next((r for r in records if not isinstance(r, dict) or "type" not in r), None)
    if untyped is not None:
        raise ValueError(f"{path}: every record must be a JSON object with a \"type\" field (header, step, "
                         f"finding, end), as nnstab.watch writes; got {str(untyped)[:60]!r}")
    return records, _skipped_lines(path)


def _skipped_lines(path: Path) -> list[str]:
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    numbered = [(i, line) for i, line in enumerate(lines, start=1) if line.strip()]
    bad = []
    for number, line in numbered:
        try:
            json.loads(line)
        except json.JSONDecodeError:
            bad.append(number)
    notes = []
    if bad and bad[-1] == numbered[-1][0]:
        notes.append(f"the last line of the log ({bad.pop()}) was cut short, as when the process is killed "
                     f"mid-write; the records before it are complete")
    if bad:
        shown = ", ".join(map(str, bad[:10])) + (" ..." if len(bad) > 10 else "")
        notes.append(f"{len(bad)} unreadable line(s) of the log were skipped (line {shown}); "
                     f"the report shows every other record")
    return notes
