"""`nnstab report LOG -o FILE`, and every command's --help."""
import json

import pytest


def _log(tmp_path, records):
    path = tmp_path / "log.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture
def broken_log(tmp_path):
    header = {"type": "header", "schema_version": 1, "framework": "torch", "model": "Net",
              "layers": [{"name": "fc", "type": "Linear", "dtype": "torch.float32", "params": 10}], "options": {}}
    steps = [{"type": "step", "step": i, "loss": 1.0 / (i + 1) if i < 3 else "nan",
              "layers": {"fc": {"act_absmax": 2.0 if i < 3 else "inf", "param_grad_norm": 0.3}}} for i in range(5)]
    finding = {"type": "finding", "id": 0, "kind": "nonfinite", "layer": "fc", "step": 3, "phase": "forward",
               "severity": "error", "value": "inf", "threshold": 0.0, "count": 2, "last_step": 4,
               "message": "fc produced inf; lower the learning rate or clip gradients."}
    return _log(tmp_path, [header, *steps[:4], finding, steps[4], {"type": "end", "status": "ok", "steps": 5}])


@pytest.mark.parametrize("suffix, marker", [(".html", "<svg"), (".md", "| nonfinite |"),
                                            (".json", '"verdict": "error"'), (".txt", "first non-finite: step 3")])
def test_report_renders_the_format_of_the_suffix(nnstab_cli, broken_log, tmp_path, suffix, marker):
    out = tmp_path / f"out{suffix}"
    r = nnstab_cli("report", broken_log, "-o", out)
    assert r.status == 1  # the log holds an error, and --fail-on defaults to error
    assert marker in out.read_text() and f"wrote {out}" in r.err
    assert "first non-finite: step 3" in r.out


def test_report_fail_on_never_and_terminal_only(nnstab_cli, broken_log):
    r = nnstab_cli("report", broken_log, "--fail-on", "never")
    assert r.status == 0 and "FAILED" in r.out


def test_report_usage_errors_exit_2(nnstab_cli, broken_log, tmp_path):
    assert nnstab_cli("report", tmp_path / "none.jsonl").status == 2
    r = nnstab_cli("report", broken_log, "-o", tmp_path / "report.pdf")
    assert r.status == 2 and ".html" in r.err


@pytest.mark.parametrize("command", ["run", "report"])
def test_every_command_has_help_with_an_example(nnstab_cli, command):
    r = nnstab_cli(command, "--help")
    assert r.status == 0
    assert f"nnstab {command} " in r.out.split("example", 1)[1]  # an example line after "example(s):"
