"""`nnstab lint SCRIPT`: one step of an unedited script, its planted formula found, exit status per --fail-on."""
import json


def test_a_planted_formula_is_found_and_fails_on_warning(nnstab_cli, scripts, kit):
    r = nnstab_cli("lint", "--fail-on", "warning", scripts / "planted.py", "--steps", "500")
    assert r.status == 1, r.out + r.err
    assert r.out.count("forward ") == 1           # the script was stopped after its first optimizer step
    line = kit.marker_line(scripts / "planted.py", "planted")
    assert "log(softmax(x)) in layer '2' (forward)" in r.out and f"planted.py:{line}" in r.out
    assert "torch.log_softmax" in r.out and "1 step" in r.out
    assert "torch.log(torch.softmax(self.fc(h) * 200.0, dim=1))" in r.out


def test_default_fail_on_error_lets_warnings_pass(nnstab_cli, scripts):
    r = nnstab_cli("lint", scripts / "planted.py")
    assert r.status == 0 and "1 warning" in r.out


def test_a_clean_script_exits_0_even_on_info(nnstab_cli, scripts):
    r = nnstab_cli("lint", "--fail-on", "info", scripts / "clean.py")
    assert r.status == 0, r.out + r.err
    assert "no unstable formulas found" in r.out and "final loss" not in r.out


def test_without_an_optimizer_the_step_ends_at_the_first_backward(nnstab_cli, scripts, kit, tmp_path):
    out = tmp_path / "lint.json"
    r = nnstab_cli("lint", "--fail-on", "warning", "--json", out, scripts / "no_optimizer.py")
    assert r.status == 1, r.out + r.err
    assert r.out.count("forward ") == 1
    data = json.loads(out.read_text())
    (f,) = data["findings"]
    assert f["kind"] == "unstable_formula" and f["details"]["pattern"] == "log_one_plus_exp"
    assert (f["layer"], f["phase"], f["severity"], f["step"]) == ("", "loss", "warning", 0)
    assert f["details"]["line"] == kit.marker_line(scripts / "no_optimizer.py", "planted")
    assert 0 < f["value"] <= 1 and data["steps"] == 1


def test_more_steps_on_request(nnstab_cli, scripts):
    r = nnstab_cli("lint", "--steps", "3", scripts / "planted.py")
    assert r.status == 0 and r.out.count("forward ") == 3 and "(x3)" in r.out


def test_a_crashing_script_passes_its_failure_on_after_reporting(nnstab_cli, scripts):
    r = nnstab_cli("lint", scripts / "crashes.py")
    assert r.status == 1
    assert "RuntimeError: the data loader broke" in r.err and "crashes.py" in r.err
    assert "log(sigmoid(x)) in the loss" in r.out and "the script raised" in r.out


def test_usage_errors_exit_2(nnstab_cli, tmp_path):
    assert nnstab_cli("lint", tmp_path / "missing.py").status == 2
    script = tmp_path / "s.py"
    script.write_text("pass\n")
    assert nnstab_cli("lint", "--steps", "0", script).status == 2


def test_a_step_without_an_optimizer_step_ends_at_the_models_next_forward(nnstab_cli, scripts, kit):
    r = nnstab_cli("lint", scripts / "accumulate.py")
    assert r.status == 0, r.out + r.err
    assert r.out.count("forward ") == 1 and "| Sequential | 1 step" in r.out
    line = kit.marker_line(scripts / "accumulate.py", "planted")
    assert "log(sigmoid(x)) in the loss at" in r.out and f"accumulate.py:{line} (x2)" in r.out
    assert "F.logsigmoid(x)" in r.out
