"""Run one training step of an unmodified torch script and report the unstable formulas it computes.

The script runs in this process as `python SCRIPT ARGS...` would, under nnstab.lint: every torch
operation is seen, and hand-written compositions that lose precision (log(softmax(x)), log(sigmoid(x)),
log(1 + exp(x)), exp(x) / exp(x).sum(), BCELoss on a sigmoid, log(p + eps), x / x.std()) are reported
with their module, source line, the share of their inputs in the range where they lose precision, and
the stable function to use instead. The script is stopped after its first optimizer step (or, without
torch.optim, its first backward).

examples:
  nnstab lint train.py                      # the script's own arguments follow its name
  nnstab lint --fail-on warning train.py --lr 0.1
  nnstab lint --steps 3 --json lint.json train.py

Exit status: 0 when nothing at or above --fail-on was found, 1 when something was (a formula is a
"warning" when its observed inputs reached its losing range, "info" otherwise), 2 usage errors; when
the script itself fails before its first step, its traceback is printed, the formulas seen so far
are reported and its exit status is passed on.
"""
from __future__ import annotations

import argparse
import os
import sys

from nnstab.commands.run import print_script_traceback
from nnstab.report._format import FAIL_LEVELS, at_or_above

EXIT_FINDINGS, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130
MARKS = {"warning": "!", "info": "i"}


def add_arguments(parser) -> None:
    parser.add_argument("--fail-on", choices=FAIL_LEVELS, default="error",
                        help="exit 1 when a finding of this severity or worse was found (default: error)")
    parser.add_argument("--steps", type=int, default=1, metavar="N",
                        help="training steps to run before stopping the script (default: 1)")
    parser.add_argument("--json", metavar="FILE", help="also write the findings to FILE as strict JSON")
    parser.add_argument("script", help="the training script, run unmodified")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="the script's own arguments")


def main(args) -> int:
    if not os.path.isfile(args.script):
        print(f"nnstab lint: no such script {args.script!r}; give the path of a Python training script",
              file=sys.stderr)
        return EXIT_USAGE
    if args.steps < 1:
        print(f"nnstab lint: --steps must be at least 1, got {args.steps}", file=sys.stderr)
        return EXIT_USAGE

    from nnstab.autowatch import run_path
    from nnstab.lint.script import ScriptLinter, StepsDone

    print(f"nnstab: linting {args.script} for {args.steps} step{'s' if args.steps != 1 else ''}",
          file=sys.stderr, flush=True)
    code, ended = 0, "ended"
    runner = ScriptLinter(steps=args.steps)
    with runner:
        try:
            run_path(args.script, args.args)
        except StepsDone:
            ended = "stopped"
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except KeyboardInterrupt:
            code, ended = EXIT_INTERRUPTED, "interrupted"
        except BaseException as exc:  # the script's own failure: show it, then report what was seen
            code, ended = 1, "raised"
            print_script_traceback(exc, args.script)
    findings = runner.linter.findings
    models = runner.linter.models
    sys.stdout.write(render(findings, args.script, runner.done, ended, runner.linter.errors, models))
    sys.stdout.flush()
    if args.json:
        _write_json(args.json, findings, args.script, runner.done, ended)
    if code:
        return code
    return EXIT_FINDINGS if any(at_or_above(f.severity, args.fail_on) for f in findings) else 0


def render(findings, script, steps, ended, errors=(), models=()) -> str:
    """The terminal summary: a headline, then each formula with its place, line, share and replacement."""
    warnings = sum(f.severity == "warning" for f in findings)
    notes = len(findings) - warnings
    how = {"stopped": f"{steps} step{'s' if steps != 1 else ''}",
           "ended": f"the script ended after {steps} step{'s' if steps != 1 else ''}",
           "raised": "the script raised", "interrupted": "interrupted"}[ended]
    model = ", ".join(models) if models else "no model called"
    lines = [f"nnstab lint | {script} | {model} | {how}"]
    if not findings:
        lines.append("+ no unstable formulas found")
    else:
        lines.append(f"{'!' if warnings else 'i'} {len(findings)} unstable formula{'s' if len(findings) != 1 else ''}: "
                     f"{warnings} warning{'s' if warnings != 1 else ''}, {notes} note{'s' if notes != 1 else ''}")
    for f in sorted(findings, key=lambda f: (f.severity != "warning", f.details["file"], f.details["line"])):
        d = f.details
        where = f"layer {f.layer!r} ({f.phase})" if f.layer else ("the loss" if f.phase == "loss" else
                                                                  "the model's forward")
        calls = f" (x{f.count})" if f.count > 1 else ""
        lines.append("")
        lines.append(f"{MARKS[f.severity]} {d['formula']} in {where} at {d['location']}{calls}")
        if d.get("code"):
            lines.append(f"    {d['code']}")
        share = f"{100 * f.value:.3g}%" if f.value == f.value else "n/a"
        lines.append(f"    {share} of {d['observed']:,} inputs in the losing range: {d['range']}")
        lines.append(f"    use {d['replacement']}")
    for where, error in errors:
        lines.append(f"(the lint could not follow one operation, {where}: {error})")
    return "\n".join(lines) + "\n"


def _write_json(path, findings, script, steps, ended):
    from nnstab.watch.log import to_json_line

    record = {"schema_version": 1, "script": script, "steps": steps, "ended": ended,
              "findings": [f.to_dict() for f in findings]}
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(to_json_line(record) + "\n")

