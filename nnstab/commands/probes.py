"""`nnstab probes`: run the gallery of training failures (probes/*.py) as-is and fixed, and regenerate reports/.

Each scenario is a training script that declares what the monitor should find in it:

    EXPECTED = {"kinds": ["nonfinite"], "framework": "torch"}

Every scenario runs twice, in its own process: as-is (the findings at warning or above must be exactly
EXPECTED["kinds"]) and with --fixed (there must be none). Each run writes report.md, report.html,
report.json, summary.json (findings and metrics) and output.txt (what the script printed) into
OUT/<scenario>/<as-is|fixed>/ (log.jsonl too with --keep-logs), and OUT/index.md tabulates them.
The exit status is 1 when any scenario's findings disagree with its expectation.
"""
from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

EXIT_OK, EXIT_DISAGREE, EXIT_USAGE = 0, 1, 2
SEVERITY_RANK = {"info": 0, "warning": 1, "error": 2}
GATING_SEVERITY = "warning"    # what a scenario's expectation speaks about: info findings are notes, not failures
MODES = ("as-is", "fixed")
RUN_TIMEOUT_S = 600            # a scenario is meant to take seconds; ten minutes means it hung
INDEX_NAME = "index.md"
LOG_NAME = "log.jsonl"
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


@dataclass
class Scenario:
    name: str
    path: Path
    title: str
    expected: list
    framework: str
    fixed_expected: list = field(default_factory=list)


@dataclass
class Run:
    scenario: Scenario
    mode: str
    out: Path
    returncode: int = 0
    seconds: float = 0.0
    summary: dict | None = None
    error: str = ""

    @property
    def findings(self) -> list:
        return (self.summary or {}).get("findings", [])

    @property
    def kinds(self) -> list:
        """The distinct kinds found at warning or above, in first-seen order."""
        return _gating_kinds(self.findings)

    @property
    def expected(self) -> list:
        return self.scenario.fixed_expected if self.mode == "fixed" else self.scenario.expected

    @property
    def agrees(self) -> bool:
        return not self.error and sorted(self.kinds) == sorted(self.expected)


def add_arguments(parser) -> None:
    parser.add_argument("--quick", action="store_true", help="run each scenario with --quick (fewer steps)")
    parser.add_argument("--only", action="append", metavar="NAME", default=None,
                        help="run only this scenario (file name without .py; repeatable)")
    parser.add_argument("--out", type=Path, default=None, help="where to write the reports (default: reports/)")
    parser.add_argument("--dir", type=Path, default=None,
                        help="the scenario folder (default: ./probes, else the probes/ folder of this checkout)")
    parser.add_argument("--keep-logs", action="store_true",
                        help="keep each run's log.jsonl next to its reports (left out by default: the "
                             "reports carry what it holds)")
    parser.add_argument("-j", "--jobs", type=int, default=1, help="scenarios to run at the same time (default 1)")


def main(args) -> int:
    probe_dir = _probe_dir(args.dir)
    if probe_dir is None:
        print("nnstab probes: no probes/ folder here or in the nnstab checkout; pass --dir PATH", file=sys.stderr)
        return EXIT_USAGE
    try:
        scenarios = select(discover(probe_dir), args.only)
    except ValueError as exc:
        print(f"nnstab probes: {exc}", file=sys.stderr)
        return EXIT_USAGE
    out = args.out if args.out is not None else probe_dir.parent / "reports"
    if args.jobs < 1:
        print(f"nnstab probes: --jobs must be at least 1, got {args.jobs}", file=sys.stderr)
        return EXIT_USAGE
    runs = run_all(scenarios, out, quick=args.quick, jobs=args.jobs, keep_logs=args.keep_logs)
    every = discover(probe_dir)
    prune_stale(out, {s.name for s in every})
    write_index(index_runs(every, runs, out), out, quick=args.quick)
    failed = [r for r in runs if not r.agrees]
    total = sum(r.seconds for r in runs)
    print(f"{len(runs) - len(failed)}/{len(runs)} runs as expected in {total:.0f} s; reports in {out}",
          file=sys.stderr)
    for r in failed:
        print(f"  DISAGREES {r.scenario.name} {r.mode}: expected {r.expected or 'none'}, "
              f"found {r.kinds or 'none'}{'; ' + r.error if r.error else ''}", file=sys.stderr)
    return EXIT_DISAGREE if failed else EXIT_OK


# -- discovery -------------------------------------------------------------------------------------
def _probe_dir(explicit):
    checkout = Path(__file__).resolve().parents[2]
    candidates = [explicit] if explicit is not None else [Path.cwd() / "probes", checkout / "probes"]
    for c in candidates:
        if c.is_dir() and any(c.glob("*.py")):
            return c
    return None


def discover(probe_dir: Path) -> list:
    """Every probes/*.py that is not a helper (leading underscore), with its docstring title and EXPECTED."""
    scenarios = []
    for path in sorted(probe_dir.glob("*.py")):
        if path.name.startswith("_"):
            continue
        scenarios.append(read_scenario(path))
    return scenarios


def read_scenario(path: Path) -> Scenario:
    """Read the docstring and EXPECTED of a scenario without running it."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    doc = ast.get_docstring(tree) or ""
    expected = None
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "EXPECTED" for t in node.targets):
            expected = ast.literal_eval(node.value)
    if not doc or expected is None:
        raise ValueError(f"{path} needs a module docstring and a module-level EXPECTED = {{'kinds': [...], "
                         f"'framework': ...}} literal")
    if not isinstance(expected.get("kinds"), list) or expected.get("framework") not in ("torch", "nnstab.nn"):
        raise ValueError(f"{path}: EXPECTED must have 'kinds' (a list) and 'framework' ('torch' or 'nnstab.nn'), "
                         f"got {expected!r}")
    return Scenario(name=path.stem, path=path, title=doc.splitlines()[0].strip(), expected=expected["kinds"],
                    framework=expected["framework"], fixed_expected=expected.get("fixed_kinds", []))


def select(scenarios: list, only) -> list:
    if not only:
        return scenarios
    by_name = {s.name: s for s in scenarios}
    unknown = [n for n in only if n.removesuffix(".py") not in by_name]
    if unknown:
        raise ValueError(f"no scenario named {', '.join(unknown)}; choose from {', '.join(by_name)}")
    return [by_name[n.removesuffix(".py")] for n in only]


# -- running ---------------------------------------------------------------------------------------
def run_all(scenarios: list, out: Path, *, quick: bool, jobs: int = 1, keep_logs: bool = False) -> list:
    todo = [Run(s, mode, out / s.name / mode) for s in scenarios for mode in MODES]
    done = 0

    def one(run):
        nonlocal done
        run_one(run, quick=quick, keep_log=keep_logs)
        done += 1
        verdict = "ok" if run.agrees else "DISAGREES"
        print(f"[{done}/{len(todo)}] {run.scenario.name} {run.mode}: found {', '.join(run.kinds) or 'none'} "
              f"(expected {', '.join(run.expected) or 'none'}) {run.seconds:.1f} s {verdict}", file=sys.stderr,
              flush=True)
        return run

    if jobs == 1:
        return [one(r) for r in todo]
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        return list(pool.map(one, todo))


def _relative(path: Path, root: Path) -> str:
    """`path` relative to `root` when it lies below it (portable paths in the reports), else absolute."""
    path = path.resolve()
    try:
        return str(path.relative_to(root.resolve()))
    except ValueError:
        return str(path)


def run_one(run: Run, *, quick: bool, keep_log: bool = False) -> Run:
    """Run one scenario in a fresh interpreter, writing into run.out; read back its summary.json."""
    run.out.mkdir(parents=True, exist_ok=True)
    for stale in run.out.iterdir():
        if stale.is_file():
            stale.unlink()
    root = run.scenario.path.parent.parent     # the checkout: reports name their paths relative to it
    cmd = [sys.executable, _relative(run.scenario.path, root), "--out", _relative(run.out, root)]
    cmd += ["--fixed"] if run.mode == "fixed" else []
    cmd += ["--quick"] if quick else []
    env = dict(os.environ, PYTHONHASHSEED="0", MPLBACKEND="Agg")
    for var in THREAD_VARS:       # tiny models: one thread is fastest and gives the same numbers everywhere
        env.setdefault(var, "1")
    started = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, env=env, cwd=root)
    except subprocess.TimeoutExpired:
        run.seconds, run.returncode, run.error = time.perf_counter() - started, -1, f"timed out after {RUN_TIMEOUT_S} s"
        return run
    run.seconds, run.returncode = time.perf_counter() - started, proc.returncode
    (run.out / "output.txt").write_text(proc.stdout + proc.stderr, encoding="utf-8")
    summary = run.out / "summary.json"
    if proc.returncode != 0 or not summary.exists():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        run.error = f"exit status {proc.returncode}: {tail[0]}"
        return run
    if not keep_log:
        (run.out / LOG_NAME).unlink(missing_ok=True)    # the reports carry what it holds; keep reports/ small
    run.summary = json.loads(summary.read_text(encoding="utf-8"))
    run.summary["wall_seconds"] = round(run.seconds, 2)   # interpreter start-up included, for the index
    summary.write_text(json.dumps(run.summary, indent=1) + "\n", encoding="utf-8")
    return run


def index_runs(scenarios: list, fresh: list, out: Path) -> list:
    """The runs of this invocation, plus, for scenarios not run now (--only), what an earlier run left in OUT."""
    by_key = {(r.scenario.name, r.mode): r for r in fresh}
    runs = []
    for s in scenarios:
        for mode in MODES:
            run = by_key.get((s.name, mode))
            if run is None:
                run = Run(s, mode, out / s.name / mode)
                summary = run.out / "summary.json"
                if not summary.exists():
                    continue
                run.summary = json.loads(summary.read_text(encoding="utf-8"))
                run.seconds = float(run.summary.get("wall_seconds", run.summary.get("seconds", 0.0)))
            runs.append(run)
    return runs


def prune_stale(out: Path, names: set) -> list:
    """Remove OUT/<name>/ folders of scenarios that no longer exist (renamed or deleted), and only those:
    a folder is ours when it holds a run's summary.json."""
    removed = []
    for d in sorted(out.iterdir()) if out.is_dir() else []:
        if d.is_dir() and d.name not in names and any((d / m / "summary.json").exists() for m in MODES):
            shutil.rmtree(d)
            removed.append(d.name)
    return removed


def _gating_kinds(findings: list) -> list:
    kinds = []
    for f in findings:
        if SEVERITY_RANK.get(f.get("severity"), 0) >= SEVERITY_RANK[GATING_SEVERITY] and f["kind"] not in kinds:
            kinds.append(f["kind"])
    return kinds


# -- the index -------------------------------------------------------------------------------------
def write_index(runs: list, out: Path, *, quick: bool) -> Path:
    """OUT/index.md: one row per scenario, as-is and fixed side by side, with links to every report."""
    by_name = {}
    for r in runs:
        by_name.setdefault(r.scenario.name, {})[r.mode] = r
    lines = [
        "# nnstab probes: a gallery of training failures and their fixes",
        "",
        "Generated by `nnstab probes" + (" --quick" if quick else "") + "`. Each scenario in `probes/` is a real "
        "training run that goes wrong numerically; run as-is, the monitor (`nnstab.watch`) must find exactly "
        "the expected kinds at warning or above, and run with `--fixed` it must find none. Findings of "
        "severity info are notes (e.g. what would overflow in float16) and do not count.",
        "",
        "| Scenario | Framework | Expected | Found as-is | Fixed run | Result | Time (s) | Reports |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, modes in by_name.items():
        if len(modes) < len(MODES):
            continue
        broken, fixed = modes["as-is"], modes["fixed"]
        s = broken.scenario
        ok = broken.agrees and fixed.agrees
        lines.append(" | ".join([
            f"| [`{name}`]({_relpath(s.path, out)}) {s.title}",
            s.framework,
            _kinds_cell(broken.expected),
            _found_cell(broken),
            _found_cell(fixed),
            ("as expected" if ok else "**DISAGREES**") + _metrics_cell(broken, fixed),
            f"{broken.seconds:.1f} / {fixed.seconds:.1f}",
            _links(name, "as-is") + "<br>" + _links(name, "fixed") + " |",
        ]))
    complete = [m for m in by_name.values() if len(m) == len(MODES)]
    agree = sum(1 for m in complete if all(r.agrees for r in m.values()))
    lines += ["", f"{agree} of {len(complete)} scenarios as expected. Time: wall-clock seconds as-is / fixed, "
              "interpreter start-up included.", ""]
    out.mkdir(parents=True, exist_ok=True)
    path = out / INDEX_NAME
    path.write_text("\n".join(lines), encoding="utf-8")
    (out / "index.json").write_text(json.dumps([_index_row(r) for r in runs], indent=1) + "\n", encoding="utf-8")
    return path


def _relpath(path: Path, start: Path) -> str:
    return Path(os.path.relpath(path.resolve(), start.resolve())).as_posix()


def _kinds_cell(kinds) -> str:
    return ", ".join(kinds) if kinds else "none (healthy)"


def _found_cell(run: Run) -> str:
    if run.error:
        return f"run failed: {run.error}"
    gating = [f for f in run.findings if SEVERITY_RANK.get(f.get("severity"), 0) >= SEVERITY_RANK[GATING_SEVERITY]]
    if not gating:
        notes = len(run.findings)
        return "none" + (f" ({notes} info)" if notes else "")
    parts = []
    for kind in run.kinds:
        first = next(f for f in gating if f["kind"] == kind)
        where = f"`{first['layer']}`" if first.get("layer") else "model"
        parts.append(f"{kind} ({first['severity']}, {where}, step {first['step']})")
    return "; ".join(parts)


def _metrics_cell(broken: Run, fixed: Run) -> str:
    a = (broken.summary or {}).get("metrics", {})
    b = (fixed.summary or {}).get("metrics", {})
    shown = [f"{k} {_num(a[k])} → {_num(b[k])}" for k in a if k in b]
    return ("<br>" + "<br>".join(shown)) if shown else ""


def _num(v) -> str:
    return f"{v:.3g}" if isinstance(v, (int, float)) else str(v)


def _links(name: str, mode: str) -> str:
    base = f"{name}/{mode}/report"
    return f"{mode}: [md]({base}.md) [html]({base}.html) [json]({base}.json)"


def _index_row(run: Run) -> dict:
    return {"scenario": run.scenario.name, "mode": run.mode, "framework": run.scenario.framework,
            "expected": run.expected, "found": run.kinds, "agrees": run.agrees, "seconds": round(run.seconds, 2),
            "error": run.error or None, "metrics": (run.summary or {}).get("metrics", {})}
