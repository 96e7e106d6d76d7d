"""Render a saved run log (JSONL) as a report; the format comes from the suffix of -o.

examples:
  nnstab report nnstab-report/log.jsonl -o report.html     # one self-contained page with plots
  nnstab report nnstab-report/log.jsonl -o report.md       # also .json (versioned schema) and .txt
  nnstab report nnstab-report/log.jsonl                    # terminal summary only

Exit status: 0 healthy, 1 when findings at or above --fail-on were found, 2 usage errors.
"""
from __future__ import annotations

import sys

from nnstab.report._format import FAIL_LEVELS

EXIT_FINDINGS, EXIT_USAGE = 1, 2


def add_arguments(parser) -> None:
    parser.add_argument("log", help="the log.jsonl written by `nnstab run` or nnstab.watch(model, log_dir=...), "
                                    "or the folder holding it")
    parser.add_argument("-o", "--output", action="append", default=[], metavar="FILE",
                        help="write the report here (.md, .html, .json or .txt); repeat for several formats")
    parser.add_argument("--fail-on", choices=FAIL_LEVELS, default="error",
                        help="exit 1 when a finding of this severity or worse is in the log (default: error)")
    parser.add_argument("--color", choices=("auto", "always", "never"), default="auto",
                        help="colour in the terminal summary (default: auto, on a terminal)")


def main(args) -> int:
    from nnstab.report import Report

    try:
        report = Report.from_log(args.log)
    except (FileNotFoundError, ValueError, IsADirectoryError) as exc:
        print(f"nnstab report: {exc}", file=sys.stderr)
        return EXIT_USAGE
    for path in args.output:
        print(f"nnstab: rendering {path}", file=sys.stderr, flush=True)
        try:
            written = report.save(path)
        except ValueError as exc:
            print(f"nnstab report: {exc}", file=sys.stderr)
            return EXIT_USAGE
        print(f"nnstab: wrote {written}", file=sys.stderr)
    color = {"auto": None, "always": True, "never": False}[args.color]
    sys.stdout.write(report.to_terminal(color=color))
    return EXIT_FINDINGS if report.failed(args.fail_on) else 0
