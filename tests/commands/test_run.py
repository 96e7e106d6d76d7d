"""`nnstab run SCRIPT`: unedited training scripts under watch, their reports and exit status."""
import json
import os
import subprocess
import sys

import pytest
import torch

from nnstab.report import Report

REPORTS = ("report.html", "report.md", "report.json", "log.jsonl")


def test_a_healthy_script_exits_0_with_a_clean_report(nnstab_cli, scripts, tmp_path):
    r = nnstab_cli("run", "--out", tmp_path, scripts / "healthy_train.py", "--steps", "30")
    assert r.status == 0, r.out + r.err
    assert "final loss" in r.out and "HEALTHY" in r.out
    assert all((tmp_path / name).is_file() for name in REPORTS)
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["summary"]["verdict"] in ("healthy", "info")  # notes (float16 risks) are not failures
    assert data["end"]["status"] == "ok" and data["end"]["steps"] == 30
    assert data["run"]["model"] == "Sequential"
    assert data["run"]["command"][-2:] == ["--steps", "30"]  # the script saw its own arguments
    losses = [s["loss"] for s in data["steps"]]
    assert len(losses) == 30 and all(isinstance(v, float) for v in losses) and losses[-1] < losses[0]


def test_a_script_that_turns_nan_exits_1_and_names_the_layer(nnstab_cli, scripts, tmp_path):
    r = nnstab_cli("run", "--out", tmp_path, scripts / "nan_train.py")
    assert r.status == 1, r.out + r.err
    report = Report.from_log(tmp_path / "log.jsonl")
    first = report.first_nonfinite
    assert first is not None and (first.layer, first.step, first.phase) == ("norm", 12, "forward")
    assert "first non-finite: step 12" in r.out and "norm" in r.out
    assert "nonfinite" in r.err  # progress on stderr says when it happened
    for name in ("report.md", "report.html"):
        text = (tmp_path / name).read_text()
        assert "nonfinite" in text and "norm" in text
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["first_nonfinite"]["layer"] == "norm" and data["summary"]["verdict"] == "error"


def test_a_crashing_script_still_gets_its_reports_and_passes_its_failure_on(nnstab_cli, scripts, tmp_path):
    r = nnstab_cli("run", "--out", tmp_path, scripts / "crash_train.py")
    assert r.status == 1
    assert "Traceback (most recent call last)" in r.err and "crash_train.py" in r.err
    assert "RuntimeError" in r.err and "nnstab/autowatch.py" not in r.err  # the script's traceback, not ours
    assert "SCRIPT RAISED" in r.out and "HEALTHY" not in r.out
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["end"]["status"] == "exception" and "RuntimeError" in data["end"]["error"]
    assert data["end"]["steps"] == 5  # the five good steps before the bad batch
    assert "RuntimeError" in (tmp_path / "report.md").read_text()
    assert Report.from_log(tmp_path / "log.jsonl").status == "exception"


def test_a_script_without_torch_optim_steps_at_each_new_forward(nnstab_cli, scripts, tmp_path):
    r = nnstab_cli("run", "--out", tmp_path, scripts / "manual_train.py")
    assert r.status == 0, r.out + r.err
    report = Report.from_log(tmp_path / "log.jsonl")
    assert len(report.steps) == 15
    assert report.steps[-1]["loss"] < report.steps[0]["loss"]


def test_hooks_and_patches_are_removed_after_the_run(nnstab_cli, scripts, tmp_path):
    from torch.nn.modules import module as nn_module

    backward, init = torch.Tensor.backward, torch.optim.Optimizer.__init__
    hooks = (len(nn_module._global_forward_pre_hooks), len(nn_module._global_forward_hooks))
    nnstab_cli("run", "--out", tmp_path, scripts / "crash_train.py")
    assert torch.Tensor.backward is backward and torch.optim.Optimizer.__init__ is init
    assert (len(nn_module._global_forward_pre_hooks), len(nn_module._global_forward_hooks)) == hooks


def test_usage_errors_exit_2(nnstab_cli, scripts, tmp_path):
    r = nnstab_cli("run", tmp_path / "missing.py")
    assert r.status == 2 and "no such script" in r.err
    r = nnstab_cli("run", "--option", "not-a-pair", tmp_path / "missing.py")
    assert r.status == 2
    r = nnstab_cli("run", "--fail-on", "sometimes", "x.py")
    assert r.status == 2
    (tmp_path / "file").write_text("")
    r = nnstab_cli("run", "--out", tmp_path / "file", scripts / "healthy_train.py")
    assert r.status == 2 and "is a file" in r.err


def test_the_installed_command_runs_a_script(scripts, tmp_path):
    # the real entry point, in a fresh interpreter: exit status and streams as a shell sees them
    env = dict(os.environ, NO_COLOR="1")
    done = subprocess.run([sys.executable, "-m", "nnstab.cli", "run", "--fail-on", "never", "--out", str(tmp_path),
                           str(scripts / "nan_train.py")], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr  # findings, but --fail-on never
    assert "✗ FAILED" in done.stdout and "step 20: loss nan" in done.stdout  # the verdict and the script's output
    assert "nnstab: watching Sequential" in done.stderr and "nnstab: step 12: error nonfinite in norm" in done.stderr
    assert (tmp_path / "report.html").is_file()


def test_two_models_with_two_optimisers_each_get_their_own_steps_and_reports(nnstab_cli, scripts, tmp_path):
    r = nnstab_cli("run", "--out", tmp_path, scripts / "gan_train.py")
    assert r.status == 0, r.out + r.err
    assert r.out.count("── model") == 2 and "model-2" in r.out
    first, second = Report.from_log(tmp_path / "log.jsonl"), Report.from_log(tmp_path / "model-2" / "log.jsonl")
    assert len(first.steps) == len(second.steps) == 12
    types = [{layer["type"] for layer in r.header["layers"]} for r in (first, second)]
    assert "ReLU" in types[0] and "LeakyReLU" in types[1]  # the generator, then the discriminator
    # each optimiser steps only its own model, with the loss .backward() was called on just before
    assert first.steps[0]["loss"] != second.steps[0]["loss"]


def test_a_loss_scaled_by_gradscaler_is_recorded_unscaled(nnstab_cli, scripts, tmp_path):
    r = nnstab_cli("run", "--out", tmp_path, scripts / "amp_train.py")
    assert r.status == 0, r.out + r.err
    printed = [float(line.rsplit(" ", 1)[1]) for line in r.out.splitlines() if line.startswith("step ")]
    recorded = [s["loss"] for s in Report.from_log(tmp_path / "log.jsonl").steps]
    assert len(printed) == len(recorded) == 10
    assert recorded == pytest.approx(printed, abs=1e-4)  # what the script computed, not 1024 times it


def test_a_script_that_trains_no_model_is_a_usage_error_with_a_report_saying_so(nnstab_cli, scripts, tmp_path):
    r = nnstab_cli("run", "--out", tmp_path, scripts / "no_model.py", "a", "--b")
    assert r.status == 2
    assert "arguments: ['a', '--b']" in r.out and "NOTHING WATCHED" in r.out and "HEALTHY" not in r.out
    assert "NOTHING WATCHED" in (tmp_path / "report.md").read_text()


def test_a_script_terminated_from_outside_still_gets_its_reports(nnstab_cli, scripts, tmp_path):
    r = nnstab_cli("run", "--out", tmp_path, scripts / "killed_train.py")
    assert r.status == 143  # 128 + SIGTERM, as a shell reports a terminated process
    assert "KILLED" in r.out and "terminated; writing the reports" in r.err
    report = Report.from_log(tmp_path / "log.jsonl")
    assert report.status == "killed" and len([s for s in report.steps if not s.get("partial")]) == 3
    assert (tmp_path / "report.html").is_file()
