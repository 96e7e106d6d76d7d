"""`nnstab run` replays the first non-finite step of an unedited script: the reports name the operation, module,
step and source line; --no-replay turns it off."""
import json
import textwrap

from nnstab.report import Report

LOG_SOFTMAX_SCRIPT = textwrap.dedent('''\
    """A classifier head that takes log(softmax(z)) by hand; at step 7 its logits are scaled up 10000-fold."""
    import torch
    from torch import nn


    class Head(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(8, 3)
            self.temperature = 1.0

        def forward(self, h):
            return torch.log(torch.softmax(self.fc(h) / self.temperature, dim=1))


    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), Head())
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for step in range(10):
        x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
        model[2].temperature = 1e-4 if step == 7 else 1.0
        loss = nn.functional.nll_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
''')


def line_in(path, text):
    for k, line in enumerate(path.read_text().splitlines(), start=1):
        if text in line:
            return k
    raise AssertionError(f"{text!r} not in {path}")


def test_the_report_names_the_operation_module_step_and_line(nnstab_cli, tmp_path):
    script = tmp_path / "train_head.py"
    script.write_text(LOG_SOFTMAX_SCRIPT)
    out = tmp_path / "out"
    r = nnstab_cli("run", "--out", out, script)
    assert r.status == 1, r.out + r.err
    line = line_in(script, "return torch.log(torch.softmax(")
    first = Report.from_log(out / "log.jsonl").first_nonfinite
    replay = first.details["replay"]
    assert (first.step, replay["op"], replay["module"], replay["phase"], replay["line"]) == \
        (7, "aten::log", "2", "forward", line)
    md = (out / "report.md").read_text()
    assert "Replayed to the operation" in md and "`aten::log` in `2` (forward)" in md
    assert f"train_head.py:{line}" in md and "step 7" in md
    assert "return torch.log(torch.softmax(self.fc(h) / self.temperature, dim=1))" in md
    assert "aten::log" in (out / "report.html").read_text()
    assert "replayed: aten::log" in r.out and f"train_head.py:{line}" in r.out
    # and the stable replacement, in every format
    assert "use `torch.log_softmax(x, dim)" in md and "torch.log_softmax(x, dim)" in (out / "report.html").read_text()
    assert "use torch.log_softmax(x, dim)" in r.out
    data = json.loads((out / "report.json").read_text())
    assert data["run"]["options"]["replay"] == "device"
    assert data["end"]["status"] == "ok" and "SCRIPT RAISED" not in r.out   # the script ran to its end


def test_the_standardisation_nan_is_replayed_to_the_division(nnstab_cli, scripts, tmp_path):
    r = nnstab_cli("run", "--out", tmp_path, scripts / "nan_train.py")
    assert r.status == 1, r.out + r.err
    first = Report.from_log(tmp_path / "log.jsonl").first_nonfinite
    replay = first.details["replay"]
    line = line_in(scripts / "nan_train.py", "return (x - x.mean(0)) / x.std(0)")
    assert (first.step, replay["op"], replay["module"], replay["phase"], replay["line"]) == \
        (12, "aten::div", "norm", "forward", line)
    assert replay["produced"] == "NaN"
    numerator, spread = replay["inputs"]                  # 0/0: the batch is one sample repeated, its spread 0
    assert spread["shape"] == [16] and spread["zeros"] == 16 and numerator["zeros"] > 0
    assert f"nan_train.py:{line}" in (tmp_path / "report.md").read_text()
    assert Report.from_log(tmp_path / "log.jsonl").status == "ok" and "step 20: loss nan" in r.out


def test_no_replay_turns_it_off(nnstab_cli, scripts, tmp_path):
    r = nnstab_cli("run", "--no-replay", "--out", tmp_path, scripts / "nan_train.py")
    assert r.status == 1, r.out + r.err
    report = Report.from_log(tmp_path / "log.jsonl")
    assert "replay" not in report.first_nonfinite.details and report.header["options"]["replay"] is False
    assert "Replayed" not in (tmp_path / "report.md").read_text() and "replayed:" not in r.out


def test_a_bad_replay_option_is_a_usage_error(nnstab_cli, scripts, tmp_path):
    r = nnstab_cli("run", "--option", "replay=gpu", "--out", tmp_path, scripts / "healthy_train.py", "--steps", "2")
    assert r.status != 0
    assert "'replay' must be False, True" in r.err + r.out
