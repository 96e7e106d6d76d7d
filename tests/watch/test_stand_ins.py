"""Large gradients are not held until the step's end: their layers' parameter gradients stand in for them,
read when backward ends; the findings are those of holding every gradient."""
import pytest
import torch
from torch import nn

from nnstab.watch import watch
from nnstab.watch.adapters import torch_grads

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


class L2Rows(nn.Module):
    """Rows over their norm: finite forward for a zero row, but d/dx sqrt(0) = inf and inf * 0 = NaN in backward."""

    def forward(self, h):
        return h / (torch.sqrt((h * h).sum(-1, keepdim=True)) + 1e-6)


def model():
    """Every Linear has fewer parameter values than its output on a batch of 64 (the stand-ins are smaller)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32, bias=False), L2Rows(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4))


def batch(step, bad_from=3):
    """A fixed batch; from step `bad_from` on, one row of zeros (L2Rows' backward makes NaN from it)."""
    x = torch.randn(64, 16, generator=torch.Generator().manual_seed(1))
    if step >= bad_from:
        x[5] = 0
    return x


def train(monkeypatch, hold_max, steps=5, zero_grad_late=False, by_autograd_grad=False, inspect=None,
          bad_from=3):
    monkeypatch.setattr(torch_grads, "HOLD_MAX", hold_max)
    net = model()
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    y = torch.randint(0, 4, (64,), generator=torch.Generator().manual_seed(2))
    mon = watch(net)
    for s in range(steps):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(net(batch(s, bad_from)), y)
        if by_autograd_grad:
            params = list(net.parameters())
            for p, g in zip(params, torch.autograd.grad(loss, params)):
                p.grad = g
        else:
            loss.backward()
        if inspect is not None:
            inspect(s, mon.adapter)
        opt.step()
        if zero_grad_late:
            opt.zero_grad()           # gradients gone before monitor.step(): the stand-ins were read already
        mon.step(loss=loss)
    mon.close()
    return mon


def held_on_a_quiet_step(monkeypatch, hold_max, **options):
    """(layer -> type of what the hooks kept for its output's gradient after step 1's backward, the monitor)."""
    held = {}

    def inspect(step, adapter):
        if step == 1:             # a quiet step: sentinels only
            held.update({adapter.names[layer]: type(g).__name__ for layer, _, _, _, g, _ in adapter.held})

    return held, train(monkeypatch, hold_max, inspect=inspect, **options)


def origin(mon):
    f = next(f for f in mon.findings if f.kind == "nonfinite")
    return f.layer, f.step, f.phase


def test_large_gradients_are_not_held_where_parameter_gradients_stand_in(monkeypatch):
    held, _ = held_on_a_quiet_step(monkeypatch, hold_max=0)
    # every gradient a Linear's parameters can stand in for is not kept; L2Rows has no parameters
    assert held == {"0": "_StandIn", "1": "Tensor", "2": "_StandIn", "4": "_StandIn"}


def test_small_gradients_are_held_as_before(monkeypatch):
    held, _ = held_on_a_quiet_step(monkeypatch, hold_max=1 << 30)
    assert held == {"0": "Tensor", "1": "Tensor", "2": "Tensor", "4": "Tensor"}


def test_a_nan_made_in_backward_is_found_where_it_was_made_with_stand_ins(monkeypatch):
    held = origin(train(monkeypatch, hold_max=1 << 30))
    assert held == ("1", 3, "backward")
    assert origin(train(monkeypatch, hold_max=0)) == held


def test_stand_ins_are_read_when_backward_ends_not_at_monitor_step(monkeypatch):
    """zero_grad() between the optimiser step and monitor.step(): the stand-ins were read already."""
    assert origin(train(monkeypatch, hold_max=0, zero_grad_late=True)) == ("1", 3, "backward")


def test_autograd_grad_fills_no_stand_ins_so_gradients_are_held(monkeypatch):
    held, mon = held_on_a_quiet_step(monkeypatch, hold_max=0, by_autograd_grad=True)
    assert held == {"0": "Tensor", "1": "Tensor", "2": "Tensor", "4": "Tensor"}
    assert origin(mon) == ("1", 3, "backward")


def test_a_healthy_run_with_stand_ins_gives_the_records_of_holding(monkeypatch):
    def records(hold_max):
        mon = train(monkeypatch, hold_max=hold_max, steps=25, bad_from=10 ** 9)
        assert not mon.findings or all(f.severity == "info" for f in mon.findings)
        return [{k: v for k, v in r.items() if k != "time"} for r in mon.records if r["type"] == "step"]

    assert records(0) == records(1 << 30)
