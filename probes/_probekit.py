"""Plumbing shared by the probe scenarios: their flags, seeded synthetic data, and saving what the monitor saw.

A scenario script stays a plain training loop; everything here is what every scenario would otherwise repeat:

    args = parse_args(__doc__, argv)         # --fixed, --quick, --out DIR, --steps N
    with nnstab.watch(model, **watch_options(args)) as monitor:
        ...the training loop, monitor.step(loss=loss) after each optimiser step...
    ...evaluate (after the block: the monitor is detached and sees no evaluation passes)...
    return finish(monitor, args, **metrics)  # saves report.{md,html,json} + log.jsonl, prints the findings
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np

REPORT_FORMATS = (".md", ".html", ".json")  # what `--out DIR` receives, besides log.jsonl and summary.json
LOG_NAME = "log.jsonl"
SUMMARY_NAME = "summary.json"


def parse_args(doc: str, argv=None, default_steps: int = 200, quick_steps: int = 60) -> argparse.Namespace:
    """The flags every scenario takes; `args.steps` is resolved from --steps / --quick."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fixed", action="store_true", help="apply the fix described above")
    parser.add_argument("--quick", action="store_true", help=f"{quick_steps} steps instead of {default_steps} (tests)")
    parser.add_argument("--steps", type=int, default=None, help="number of optimiser steps (overrides --quick)")
    parser.add_argument("--out", type=Path, default=None,
                        help="write report.md, report.html, report.json, log.jsonl and summary.json here")
    args = parser.parse_args(argv)
    if args.steps is None:
        args.steps = quick_steps if args.quick else default_steps
    if args.steps < 1:
        parser.error(f"--steps must be a positive integer, got {args.steps}")
    args.started = time.perf_counter()
    return args


def watch_options(args, **options) -> dict:
    """Keyword options for nnstab.watch: stream the JSONL log into --out when one is given."""
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        options.setdefault("log_dir", str(args.out))
    return options


def torch_setup(seed: int = 0) -> None:
    """Seed torch and run it on one thread: these models are tiny, so one thread is the fastest (several
    threads only contend, badly so on a busy machine), and results are then the same on any machine."""
    import torch

    torch.manual_seed(seed)
    torch.set_num_threads(1)


def blobs(n: int, dim: int, classes: int, spread: float = 1.0, seed: int = 0):
    """Gaussian clusters, one per class, with unit-variance noise: (x float64 [n, dim], y int64 [n])."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0.0, spread, size=(classes, dim))
    y = rng.integers(0, classes, size=n)
    x = centres[y] + rng.normal(size=(n, dim))
    return x, y


def minibatches(n: int, batch: int, steps: int, seed: int = 0):
    """`steps` index arrays of size `batch` drawn from range(n), reproducibly."""
    rng = np.random.default_rng(seed + 1)
    for _ in range(steps):
        yield rng.integers(0, n, size=batch)


def to_float(value) -> float:
    """A Python float from a float, a NumPy scalar or a 0-d tensor."""
    if hasattr(value, "detach"):
        value = value.detach().float().item()
    return float(value)


def finish(monitor, args, **metrics) -> dict:
    """Save a (closed) monitor's reports into --out and print its findings; returns the run's summary."""
    report = monitor.report()
    findings = list(monitor.findings)
    summary = {
        "fixed": bool(args.fixed),
        "steps": int(args.steps),
        "seconds": round(time.perf_counter() - args.started, 3),
        "metrics": {k: _jsonable(v) for k, v in metrics.items()},
        "findings": [_jsonable(f.to_dict()) for f in findings],
    }
    if args.out is not None:
        _save(report, monitor, args.out, summary)
    _print(summary, findings)
    return summary


def _save(report, monitor, out: Path, summary: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for suffix in REPORT_FORMATS:
        if not (out / f"report{suffix}").exists():   # a context-managed monitor with log_dir wrote them already
            report.save(str(out / f"report{suffix}"))
    log = out / LOG_NAME
    if not log.exists():  # the monitor streams it when it supports log_dir; otherwise write its records here
        with open(log, "w", encoding="utf-8") as fh:
            for record in getattr(monitor, "records", []):
                fh.write(json.dumps(_jsonable(record), allow_nan=False) + "\n")
    (out / SUMMARY_NAME).write_text(json.dumps(summary, indent=1, allow_nan=False) + "\n", encoding="utf-8")


def _print(summary: dict, findings) -> None:
    label = "fixed" if summary["fixed"] else "as-is"
    metrics = ", ".join(f"{k}={_fmt(v)}" for k, v in summary["metrics"].items())
    print(f"[{label}] {summary['steps']} steps in {summary['seconds']:.1f} s; {metrics}")
    if not findings:
        print("  no findings")
    for f in findings:
        layer = f.layer or "(model)"
        print(f"  {f.severity:7s} {f.kind:18s} {layer:12s} step {f.step:4d} {f.phase:8s} {f.message}")


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _jsonable(obj):
    """Strict-JSON form: NaN and infinities become the strings "nan", "inf", "-inf" (as in the nnstab log)."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.generic,)):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return "nan" if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
    return obj
