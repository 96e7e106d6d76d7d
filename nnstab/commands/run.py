"""Run an unmodified torch training script under nnstab.watch, print a summary and write its reports.

The script runs in this process as `python SCRIPT ARGS...` would; everything after SCRIPT is its own.
Its model is found when first called, its loss is the scalar .backward() is called on, and each
optimizer.step() is a step. Reports go to --out: report.html, report.md, report.json and log.jsonl
(those of an earlier run in the same folder are replaced; a second model gets --out/model-2/).

examples:
  nnstab run train.py                              # the script's own arguments follow its name
  nnstab run train.py --epochs 3 --lr 0.1
  nnstab run --out runs/fp16 --fail-on warning train.py --half
  nnstab run --option every=10 train.py            # keyword options of nnstab.watch (KEY=VALUE)
  nnstab run --no-replay train.py                  # do not replay the first NaN/inf to its operation

Exit status: 0 healthy, 1 when findings at or above --fail-on were found, 2 usage errors (also: the
script called no torch.nn.Module with trainable parameters); when the script itself fails, its
traceback is printed, the reports are still written, and its exit status (1 for an exception) is
passed on.
"""
from __future__ import annotations

import argparse
import ast
import contextlib
import os
import signal
import sys
import threading
import traceback

from nnstab.report._format import FAIL_LEVELS

EXIT_FINDINGS, EXIT_USAGE, EXIT_INTERRUPTED, EXIT_TERMINATED = 1, 2, 130, 143  # 128 + signal number
REPORT_FILES = ("report.html", "report.md", "report.json")


def add_arguments(parser) -> None:
    parser.add_argument("--out", default="nnstab-report", metavar="DIR",
                        help="folder for report.html, report.md, report.json and log.jsonl (default: ./nnstab-report)")
    parser.add_argument("--fail-on", choices=FAIL_LEVELS, default="error",
                        help="exit 1 when a finding of this severity or worse was found (default: error)")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                        help="a keyword option of nnstab.watch, e.g. every=10; repeat for several")
    parser.add_argument("--no-replay", dest="replay", action="store_false",
                        help="do not replay the first non-finite step to the operation that made its NaN/inf "
                             "(replay keeps a copy of the parameters each step; see nnstab.watch's replay option)")
    parser.add_argument("--color", choices=("auto", "always", "never"), default="auto",
                        help="colour in the terminal summary (default: auto, on a terminal)")
    parser.add_argument("script", help="the training script, run unmodified")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="the script's own arguments")


def parse_options(pairs) -> dict:
    """KEY=VALUE strings to keyword options; VALUE is a Python literal (10, 1e-6, True, 'x') or plain text."""
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.isidentifier():
            raise ValueError(f"--option expects KEY=VALUE with KEY a keyword of nnstab.watch, got {pair!r}")
        try:
            options[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            options[key] = value
    return options


def main(args) -> int:
    def say(line):
        print(f"nnstab: {line}", file=sys.stderr, flush=True)

    if not os.path.isfile(args.script):
        print(f"nnstab run: no such script {args.script!r}; give the path of a Python training script", file=sys.stderr)
        return EXIT_USAGE
    try:
        options = parse_options(args.option)
    except ValueError as exc:
        print(f"nnstab run: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if not getattr(args, "replay", True):
        options["replay"] = False
    options.setdefault("replay", True)  # name the operation of the first NaN/inf (--option replay=host: host copy)
    out = os.path.abspath(args.out)
    if os.path.exists(out) and not os.path.isdir(out):
        print(f"nnstab run: --out {args.out!r} is a file; give a folder for the reports", file=sys.stderr)
        return EXIT_USAGE
    os.makedirs(out, exist_ok=True)
    _clear_previous(out)
    say(f"running {args.script} under watch; reports go to {out}")

    from nnstab.autowatch import ScriptWatcher, run_path

    command = ["nnstab", "run", args.script, *args.args]
    status, error, code = "ok", None, 0
    watcher = ScriptWatcher(log_dir=out, command=command, options=options, progress=say)
    with watcher, _terminated_on_sigterm():
        try:
            run_path(args.script, args.args)
        except Terminated:
            status, error, code = "killed", "SIGTERM", EXIT_TERMINATED
            say("terminated; writing the reports of the steps so far")
        except SystemExit as exc:
            code = _exit_code(exc)
            if code:
                status, error = "exception", f"SystemExit: {exc.code}"
        except KeyboardInterrupt:
            status, error, code = "interrupted", "KeyboardInterrupt", EXIT_INTERRUPTED
            say("interrupted; writing the reports of the steps so far")
        except BaseException as exc:  # the script's own failure: report it, then pass it on
            status, error, code = "exception", f"{type(exc).__name__}: {exc}", 1
            print_script_traceback(exc, args.script)
        try:
            watcher.finish(status, error)
        except Exception as exc:  # the reports of what was recorded must still be written
            say(f"could not close the monitor cleanly: {type(exc).__name__}: {exc}")
    reports = _write_reports(watcher, out, status, error, say)
    color = {"auto": None, "always": True, "never": False}[args.color]
    for index, (report, folder) in enumerate(reports, start=1):
        if len(reports) > 1:
            sys.stdout.write(f"── model {index} of {len(reports)}, reports in {folder}\n")
        sys.stdout.write(report.to_terminal(color=color))
    sys.stdout.flush()
    if code:
        return code
    if not watcher.monitors:
        return EXIT_USAGE  # nnstab run was given a script that trains no torch model
    return EXIT_FINDINGS if any(r.failed(args.fail_on) for r, _ in reports) else 0


class Terminated(BaseException):
    """SIGTERM arrived (a scheduler's time limit, `kill`): stop the script, but still write the reports."""


@contextlib.contextmanager
def _terminated_on_sigterm():
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return

    def handler(signum, frame):
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _clear_previous(out):
    """Remove the log and reports of an earlier run in the same folder: the log is appended to, and two runs
    in one log would read as one."""
    folders = [out] + [os.path.join(out, d) for d in os.listdir(out)
                       if d.startswith("model-") and os.path.isdir(os.path.join(out, d))]
    for folder in folders:
        for name in ("log.jsonl", *REPORT_FILES):
            path = os.path.join(folder, name)
            if os.path.isfile(path):
                os.remove(path)


def _exit_code(exc: SystemExit) -> int:
    if exc.code is None:
        return 0
    if isinstance(exc.code, int):
        return exc.code
    print(exc.code, file=sys.stderr)  # sys.exit("message") prints it and exits 1, as Python does
    return 1


def print_script_traceback(exc, script):
    """The script's traceback as Python would print it, without the frames of nnstab and runpy above it."""
    target = os.path.abspath(script)
    tb = exc.__traceback__
    while tb is not None and os.path.abspath(tb.tb_frame.f_code.co_filename) != target:
        tb = tb.tb_next
    traceback.print_exception(type(exc), exc, tb if tb is not None else exc.__traceback__, file=sys.stderr)
    sys.stderr.flush()


def _write_reports(watcher, out, status, error, say):
    """[(report, folder)] of each watched model (the first in --out, others in --out/model-N); a run that
    watched nothing still gets a report saying so."""
    from nnstab.report import Report

    if not watcher.monitors:
        say("no module with trainable parameters was called, so nothing was watched")
        report = Report([{"type": "end", "status": status, "error": error, "steps": 0, "time": None}],
                        notes=["No model was watched: the script called no torch.nn.Module with trainable "
                               "parameters (or watched it itself with nnstab.watch)."])
        _save_all(report, out, say)
        return [(report, out)]
    reports = []
    for model, monitor, log_dir in watcher.monitors:
        report = Report.from_monitor(monitor)
        _save_all(report, log_dir, say)
        reports.append((report, log_dir))
    return reports


def _save_all(report, folder, say):
    written = []
    for name in REPORT_FILES:
        try:
            report.save(os.path.join(folder, name))
            written.append(name)
        except Exception as exc:  # one renderer failing must not cost the others
            say(f"could not write {name}: {type(exc).__name__}: {exc}")
    say(f"wrote {', '.join(written)} in {folder}")
