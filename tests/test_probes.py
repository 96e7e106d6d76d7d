"""The probe gallery: every scenario shows exactly its expected findings, and its --fixed run shows none.

Each scenario runs in quick mode in this process (importing torch once keeps the whole gallery within
its time budget); scenarios seed their own generators, and the one global they set (torch's thread
count) is restored after each. The `nnstab probes`
command is exercised end to end in a subprocess on one scenario, and on a copy whose expectation is
wrong, which it must report with exit status 1.
"""
from __future__ import annotations

import ast
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

import nnstab
from nnstab.commands.probes import GATING_SEVERITY, SEVERITY_RANK, discover

ROOT = Path(__file__).resolve().parents[1]
PROBES = ROOT / "probes"
SCENARIOS = discover(PROBES)
FINDING_KINDS = ("nonfinite", "overflow", "underflow", "vanishing_gradient", "exploding_gradient",
                 "saturation", "dead_relu", "loss_divergence", "unstable_formula")
FAST_SCENARIO = "healthy_cnn_numpy"       # no torch import: the quickest to start


@pytest.fixture
def scenario_env(monkeypatch):
    """What running a scenario needs, undone afterwards: probes/ importable (for _probekit), and BLAS and
    torch on one thread, as `nnstab probes` runs them: the models are tiny, several threads only contend
    on a busy machine, and one thread gives the same numbers on every machine."""
    import torch

    monkeypatch.syspath_prepend(str(PROBES))
    # `nnstab.watch` must name the function however often it is used; removing the attribute lets the
    # package's lazy lookup answer again. test_nnstab_watch_stays_callable_after_its_package_is_imported
    # shows the bug this sidesteps.
    monkeypatch.delattr(nnstab, "watch", raising=False)
    threads = torch.get_num_threads()
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:                          # numpy's BLAS keeps its threads: slower, same findings
        threadpool_limits = None
    limits = threadpool_limits(1) if threadpool_limits else None
    yield
    torch.set_num_threads(threads)
    if limits is not None:
        limits.restore_original_limits()


def run_in_process(scenario, *flags) -> dict:
    """Import the scenario as a fresh module and run its main() with --quick and `flags`."""
    spec = importlib.util.spec_from_file_location(f"_probe_{scenario.name}", scenario.path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main(["--quick", *flags])


def gating_kinds(summary: dict) -> set:
    return {f["kind"] for f in summary["findings"]
            if SEVERITY_RANK[f["severity"]] >= SEVERITY_RANK[GATING_SEVERITY]}


def describe(summary: dict) -> str:
    return "\n".join(f"  {f['severity']} {f['kind']} layer={f['layer']!r} step={f['step']} phase={f['phase']} "
                     f"value={f['value']} threshold={f['threshold']}" for f in summary["findings"]) or "  (none)"


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.name)
def test_scenario_as_is_shows_exactly_its_expected_kinds(scenario, scenario_env):
    summary = run_in_process(scenario)
    assert gating_kinds(summary) == set(scenario.expected), (
        f"{scenario.name}: expected {sorted(scenario.expected)} at warning or above, found:\n{describe(summary)}")


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.name)
def test_scenario_fixed_shows_nothing(scenario, scenario_env):
    summary = run_in_process(scenario, "--fixed")
    assert gating_kinds(summary) == set(scenario.fixed_expected), (
        f"{scenario.name} --fixed: expected no findings at warning or above, found:\n{describe(summary)}")


def test_nnstab_watch_stays_callable_after_its_package_is_imported():
    # Every scenario calls nnstab.watch(model); after `import nnstab.watch` (which any use of the monitor
    # or of nnstab.report does) the attribute must still be the function, not the subpackage.
    code = ("import nnstab, nnstab.watch.monitor; import torch; m = torch.nn.Linear(2, 2); "
            "nnstab.watch(m).close(); nnstab.watch(m).close()")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr.strip().splitlines()[-1]


def test_gallery_covers_every_kind_on_both_frameworks():
    shown = {k for s in SCENARIOS for k in s.expected}
    assert set(FINDING_KINDS) <= shown, f"no scenario shows {sorted(set(FINDING_KINDS) - shown)}"
    assert len(SCENARIOS) >= 14
    assert sum(1 for s in SCENARIOS if not s.expected) >= 3, "at least three healthy runs"
    frameworks = {s.framework for s in SCENARIOS if s.expected}
    assert frameworks == {"torch", "nnstab.nn"}
    for kind in ("nonfinite", "vanishing_gradient", "exploding_gradient"):
        assert {s.framework for s in SCENARIOS if kind in s.expected} == {"torch", "nnstab.nn"}, kind


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.name)
def test_scenario_docstring_names_setting_failure_and_fix(scenario):
    doc = ast.get_docstring(ast.parse(scenario.path.read_text(encoding="utf-8")))
    for section in ("Setting:", "What goes wrong:", "The fix (--fixed):"):
        assert section in doc, f"{scenario.name}: docstring lacks {section!r}"


def nnstab_cli(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "nnstab.cli", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=600)


def test_cli_runs_a_scenario_both_ways_and_writes_reports_and_index(tmp_path):
    proc = nnstab_cli("probes", "--only", FAST_SCENARIO, "--quick", "--keep-logs", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert f"{FAST_SCENARIO} fixed" in proc.stderr            # progress on stderr
    for mode in ("as-is", "fixed"):
        run = tmp_path / FAST_SCENARIO / mode
        for name in ("report.md", "report.html", "report.json", "log.jsonl", "summary.json", "output.txt"):
            assert (run / name).stat().st_size > 0, f"{mode}/{name} missing or empty"
        json.loads((run / "report.json").read_text())         # strict JSON
        first = json.loads((run / "log.jsonl").read_text().splitlines()[0])
        assert first["type"] == "header"
    index = (tmp_path / "index.md").read_text()
    assert f"[`{FAST_SCENARIO}`]" in index and "as expected" in index
    assert f"{FAST_SCENARIO}/fixed/report.html" in index


def test_cli_exits_1_when_a_scenario_disagrees_with_its_expectation(tmp_path):
    probes = tmp_path / "probes"
    probes.mkdir()
    (probes / "_probekit.py").write_text((PROBES / "_probekit.py").read_text())
    source = (PROBES / f"{FAST_SCENARIO}.py").read_text()
    wrong = source.replace('EXPECTED = {"kinds": []', 'EXPECTED = {"kinds": ["nonfinite"]', 1)
    assert wrong != source
    (probes / "wrongly_expects_nan.py").write_text(wrong)
    out = tmp_path / "out"
    (out / "renamed_scenario" / "as-is").mkdir(parents=True)           # a run of a scenario that is gone
    (out / "renamed_scenario" / "as-is" / "summary.json").write_text("{}")
    (out / "notes").mkdir()                                            # not a run: left alone
    proc = nnstab_cli("probes", "--dir", str(probes), "--quick", "--out", str(out))
    assert proc.returncode == 1, proc.stderr
    assert "DISAGREES wrongly_expects_nan as-is" in proc.stderr
    assert "**DISAGREES**" in (out / "index.md").read_text()
    assert not (out / "renamed_scenario").exists() and (out / "notes").is_dir()


def test_cli_rejects_an_unknown_scenario_name(tmp_path):
    proc = nnstab_cli("probes", "--only", "no_such_scenario", "--out", str(tmp_path))
    assert proc.returncode == 2
    assert "no scenario named no_such_scenario" in proc.stderr
