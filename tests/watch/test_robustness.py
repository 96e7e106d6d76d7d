"""A broken check or hook is a finding, never an exception in training; options are validated by name."""
import pytest
import torch
from torch import nn

from nnstab.watch import CHECKS, watch
from nnstab.watch.checks.dead_relu import DeadReluCheck


def test_a_check_that_raises_becomes_an_info_finding_and_is_switched_off(tools, monkeypatch):
    calls = []

    def broken(self, view):
        calls.append(view.step)
        raise ZeroDivisionError("boom")

    monkeypatch.setattr(DeadReluCheck, "observe", broken)
    mon = tools.torch_train(tools.torch_mlp(), steps=4)
    f = tools.first(mon, "dead_relu")
    assert (f.severity, f.step, f.count) == ("info", 0, 1)
    assert "dead_relu" in f.message and "ZeroDivisionError: boom" in f.message
    assert calls == [0]                                   # disabled after the first failure
    assert len([r for r in mon.records if r["type"] == "step"]) == 4


@pytest.mark.parametrize("method", ["_units", "_grad", "_finite_value"])
def test_a_hook_that_raises_does_not_reach_training(tools, monkeypatch, method):
    from nnstab.watch.adapters import torch as torch_adapter

    def broken(self, *args):
        raise RuntimeError("unit statistic failed")

    monkeypatch.setattr(torch_adapter.TorchAdapter, method, broken)
    model = tools.torch_mlp()
    twin = tools.torch_mlp()
    mon = tools.torch_train(model, steps=3)
    tools.torch_train(twin, steps=3, checks=[])           # the same run, unwatched in effect
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), twin.parameters()))
    internal = [f for f in mon.findings if f.details.get("internal_error")]
    assert internal and "unit statistic failed" in internal[0].message and internal[0].severity == "info"


@pytest.mark.parametrize("options, message", [
    ({"every": 0}, "'every' must be a positive int"),
    ({"every": 1.5}, "'every' must be a positive int"),
    ({"log_dir": 3}, "'log_dir' must be a directory path"),
    ({"report": "yes"}, "'report' must be True or False"),
    ({"scaler": 1}, "'scaler' must be a torch.amp.GradScaler"),
    ({"command": "python train.py"}, "'command' must be a list of strings"),
    ({"checks": "nonfinite"}, "checks must be None, a list of kinds or a dict"),
    ({"checks": ["nan"]}, "unknown check 'nan'"),
    ({"checks": {"dead_relu": {"share": "half"}}}, "dead_relu check option 'share' must be a positive number"),
    ({"checks": {"dead_relu": {"sahre": 0.5}}}, r"unknown option\(s\) \['sahre'\]; it accepts: every, share, steps"),
    ({"checks": {"saturation": {"every": 0}}}, "saturation check option 'every' must be a positive int"),
])
def test_options_are_validated_by_name(options, message):
    with pytest.raises((TypeError, ValueError), match=message):
        watch(nn.Linear(2, 2), **options)


def test_watch_failing_on_options_leaves_the_model_unwatched():
    model = nn.Linear(2, 2)
    with pytest.raises(ValueError, match="'every' must be a positive int"):
        watch(model, every=0)
    watch(model).close()                                   # not marked as watched


def test_checks_subset_and_options_reach_the_checks():
    mon = watch(nn.Linear(2, 2), checks={"dead_relu": {"share": 0.5}, "underflow": False})
    opts = mon.options()["checks"]
    assert opts["dead_relu"]["share"] == 0.5 and "underflow" not in opts and set(opts) == set(CHECKS) - {"underflow"}
    mon.close()
    assert set(watch(nn.Linear(2, 2), checks=["nonfinite"]).options()["checks"]) == {"nonfinite"}


def test_loss_must_be_a_scalar(tools):
    mon = watch(nn.Linear(2, 2))
    with pytest.raises(TypeError, match="loss must be a scalar"):
        mon.step(loss=torch.ones(3))
    mon.close()


def test_a_refused_loss_leaves_the_monitor_working(tools):
    model = tools.torch_mlp()
    mon = watch(model)
    with pytest.raises(TypeError):
        mon.step(loss="low")
    tools.torch_train(model, steps=2, monitor=mon)
    assert [r["step"] for r in mon.records if r["type"] == "step"] == [0, 1]
    assert mon.records[1]["layers"]["0"]["act_nonfinite"] == 0.0
