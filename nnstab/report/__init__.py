"""Reports of a watched run: terminal summary, Markdown, one self-contained HTML page, and JSON with a versioned schema.

    report = monitor.report()                      # or Report.from_log("nnstab-report/log.jsonl")
    print(report.to_terminal())
    report.save("report.html")                     # .md .html .json .txt, from the suffix
"""
from nnstab.report.model import Report
from nnstab.report.schema import REPORT_SCHEMA, SCHEMA_VERSION

__all__ = ["Report", "REPORT_SCHEMA", "SCHEMA_VERSION"]
