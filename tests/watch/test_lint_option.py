"""watch(model, lint=True): the numerics lint's unstable formulas become the monitor's findings."""
import copy
import json

import pytest
import torch
from torch import nn

import nnstab.nn as nnn
from nnstab.watch import watch

TEMPERATURE = 0.01   # cosine-style logits up to 100 / 0.01: softmax probabilities far below float32's tiny


class LogSoftmaxHead(nn.Module):
    """A classifier whose head returns log(softmax(z)) written by hand: the planted formula."""

    def __init__(self, scale=1.0):
        super().__init__()
        self.body = nn.Linear(16, 4)
        self.scale = scale

    def forward(self, x):
        z = self.body(x) * self.scale
        return torch.log(torch.softmax(z, dim=1))


class Net(nn.Module):
    def __init__(self, scale=1.0):
        super().__init__()
        self.head = LogSoftmaxHead(scale)

    def forward(self, x):
        return self.head(x)


def train(model, steps=4, monitor=None, loss_fn=None, lr=1e-3, before=None):
    torch.manual_seed(0)
    x, y = torch.randn(32, 16), torch.randint(0, 4, (32,))
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    losses = []
    for s in range(steps):
        if before is not None:
            before(s)
        opt.zero_grad()
        out = model(x)
        loss = loss_fn(out, y) if loss_fn else nn.functional.nll_loss(out.clamp_min(-1e4), y)
        loss.backward()
        opt.step()
        losses.append(loss.detach().clone())
        if monitor is not None:
            monitor.step(loss=loss)
    if monitor is not None:
        monitor.close()
    return losses


def lint_findings(monitor):
    return [f for f in monitor.findings if f.kind == "unstable_formula"]


def sharpen_at(model, step):
    """From `step` on, the head's logits are 1/TEMPERATURE times larger: gaps of hundreds, softmax underflows."""
    def before(s):
        if s == step:
            model.head.scale = 1.0 / TEMPERATURE
    return before


def test_lint_finds_a_planted_log_softmax_with_its_layer_and_step():
    model = Net(scale=1.0)
    mon = watch(model, lint=True, every=2)
    train(model, steps=3, monitor=mon, before=sharpen_at(model, 2))
    found = lint_findings(mon)
    assert [(f.severity, f.step) for f in found] == [("info", 0), ("warning", 2)], [f.message for f in found]
    info, f = found
    assert info.count == 2 and info.last_step == 1    # one count per step, folded
    assert f.layer == info.layer == "head" and f.phase == "forward"
    assert 0 < f.value <= 1 and f.details["in_range"] > 0
    assert f.details["pattern"] == "log_softmax"
    assert f.details["location"].endswith(f"test_lint_option.py:{f.details['line']}")
    assert "torch.log_softmax" in f.message
    assert any(r["type"] == "finding" and r["kind"] == "unstable_formula" for r in mon.records)
    assert mon.options()["lint"] is True


def test_harmless_inputs_give_an_info_finding_only():
    model = Net(scale=1.0)                          # ordinary logits: the formula is present, not yet losing
    mon = watch(model, lint=True)
    train(model, steps=3, monitor=mon)
    found = lint_findings(mon)
    assert [f.severity for f in found] == ["info"]
    assert found[0].layer == "head" and found[0].step == 0 and found[0].count == 3


def test_two_formulas_in_one_layer_stay_two_findings():
    class TwoFormulas(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Linear(16, 4)

        def forward(self, x):
            z = self.body(x)
            a = torch.log(torch.softmax(z, dim=1))
            b = torch.log(torch.sigmoid(z))
            return a + b

    model = nn.Sequential(TwoFormulas())
    mon = watch(model, lint=True)
    train(model, steps=2, monitor=mon, loss_fn=lambda out, y: -out.mean())
    patterns = sorted(f.details["pattern"] for f in lint_findings(mon))
    assert patterns == ["log_sigmoid", "log_softmax"]
    assert {f.layer for f in lint_findings(mon)} == {"0"}


def test_a_step_left_open_is_read_at_close():
    model = Net(scale=1.0 / TEMPERATURE)
    mon = watch(model, lint=True)
    model(torch.randn(8, 16))                       # a forward pass with no step() after it
    mon.close()
    found = lint_findings(mon)
    assert len(found) == 1 and found[0].step == 0 and found[0].severity == "warning"


def test_lint_false_adds_no_mode_and_no_findings():
    depth = torch._C._len_torch_function_stack()
    model = Net(scale=1.0 / TEMPERATURE)
    mon = watch(model)
    assert torch._C._len_torch_function_stack() == depth
    train(model, steps=2, monitor=mon)
    assert lint_findings(mon) == []
    assert mon.options()["lint"] is False


def test_close_restores_the_function_mode_stack():
    depth = torch._C._len_torch_function_stack()
    model = Net()
    mon = watch(model, lint=True)
    assert torch._C._len_torch_function_stack() == depth + 1
    train(model, steps=2, monitor=mon)
    assert torch._C._len_torch_function_stack() == depth
    mon.close()                                     # twice is safe
    assert torch._C._len_torch_function_stack() == depth


def test_close_keeps_a_mode_pushed_after_the_monitor():
    from torch.overrides import TorchFunctionMode

    depth = torch._C._len_torch_function_stack()
    model = Net()
    mon = watch(model, lint=True)
    other = TorchFunctionMode()
    other.__enter__()
    try:
        mon.close()
        assert torch._C._len_torch_function_stack() == depth + 1
    finally:
        other.__exit__(None, None, None)
    assert torch._C._len_torch_function_stack() == depth


def test_losses_and_parameters_are_bit_for_bit_the_same_with_lint():
    base = Net(scale=1.0)
    plain, linted = copy.deepcopy(base), copy.deepcopy(base)
    expected = train(plain, steps=5, before=sharpen_at(plain, 3))
    got = train(linted, steps=5, monitor=watch(linted, lint=True, every=2), before=sharpen_at(linted, 3))
    for a, b in zip(expected, got):                  # the same bits, NaN payloads included
        assert torch.equal(a.view(torch.int32), b.view(torch.int32))
    for p, q in zip(plain.parameters(), linted.parameters()):
        assert torch.equal(p.detach().view(torch.int32), q.detach().view(torch.int32))


def test_lint_on_an_nnstab_nn_model_is_a_clear_error():
    model = nnn.Sequential(nnn.Dense(4, 2))
    with pytest.raises(TypeError, match="lint.*torch.nn.Module"):
        watch(model, lint=True)
    watch(model).close()                            # nothing was attached by the failed call


@pytest.mark.parametrize("value", [1, "yes", None])
def test_lint_must_be_a_bool(value):
    with pytest.raises(TypeError, match="'lint' must be True or False"):
        watch(nn.Linear(2, 2), lint=value)


def test_the_header_records_the_option(tmp_path):
    model = Net()
    with watch(model, lint=True, log_dir=tmp_path, report=False) as mon:
        train(model, steps=1)
        mon.step()
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert records[0]["type"] == "header" and records[0]["options"]["lint"] is True
    assert [r["details"]["pattern"] for r in records if r.get("kind") == "unstable_formula"] == ["log_softmax"]
