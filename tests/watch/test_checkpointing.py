"""Activation checkpointing: each module call is recorded once, and findings are those of the same model without it."""
from collections import Counter

import pytest
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint, checkpoint_sequential

from nnstab.watch import watch

MODES = [None, False, True]          # no checkpoint, use_reentrant=False, use_reentrant=True
CHECKS = {"dead_relu": {"every": 1, "steps": 2, "share": 0.2}, "saturation": {"every": 1, "patience": 2}}


class BadGrad(torch.autograd.Function):
    """Identity in forward; NaN gradient in backward (a backward fault inside the segment)."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        return g * float("nan")


class Fault(nn.Module):
    """A Linear that can make a NaN in forward (log of a negative number) or in backward, on request."""

    def __init__(self, n):
        super().__init__()
        self.lin = nn.Linear(n, n)
        self.forward_nan = self.backward_nan = False

    def forward(self, x):
        y = self.lin(x)
        if self.forward_nan:
            y = torch.log(y - 1e6)
        return BadGrad.apply(y) if self.backward_nan else y


class Net(nn.Module):
    """stem -> [checkpointed: hidden, ReLU (some units dead), fault, Tanh (saturated)] -> head."""

    def __init__(self, mode=None, sequential=False):
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Linear(16, 32)
        self.body = nn.Sequential(nn.Linear(32, 32), nn.ReLU(), Fault(32), nn.Tanh())
        self.head = nn.Linear(32, 4)
        with torch.no_grad():
            self.body[0].bias[:8] = -100.0          # 8 units of the ReLU dead on every batch
            self.body[2].lin.weight.mul_(400.0)      # the Tanh saturated
        self.mode, self.sequential = mode, sequential

    def forward(self, x):
        h = self.stem(x)
        if self.mode is None:
            h = self.body(h)
        elif self.sequential:
            h = checkpoint_sequential(self.body, 2, h, use_reentrant=self.mode)
        else:
            h = checkpoint(self.body, h, use_reentrant=self.mode)
        return self.head(h)


def train(model, steps=5, fault=None, at=3):
    """Train under a monitor; returns (findings as (kind, layer, step, phase, severity), per-step call counts)."""
    torch.manual_seed(1)
    x, y = torch.randn(64, 16), torch.randint(0, 4, (64,))
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    mon = watch(model, every=1, checks=CHECKS)
    counts = []
    end = mon.adapter.end

    def spy(*args, **kwargs):       # what the hooks recorded per layer in each step
        tape = end(*args, **kwargs)
        counts.append(Counter(mon.adapter.names[c.layer] for c in tape.calls))
        return tape

    mon.adapter.end = spy
    for step in range(steps):
        if fault is not None:
            setattr(model.body[2], fault, step == at)
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        mon.step(loss=loss)
    mon.close()
    found = {(f.kind, f.layer, f.step, f.phase, f.severity) for f in mon.findings}
    return found, counts, mon


@pytest.mark.parametrize("sequential", [False, True])
def test_same_findings_and_calls_as_without_checkpointing(sequential):
    plain, plain_counts, _ = train(Net())
    assert {k for k, *_ in plain} >= {"dead_relu", "saturation"}, plain
    assert all(set(c.values()) == {1} for c in plain_counts)
    if sequential:     # checkpoint_sequential runs the container's children itself, never the container
        for c in plain_counts:
            del c["body"]
    for mode in (False, True):
        found, counts, _ = train(Net(mode, sequential))
        assert found == plain, (mode, found ^ plain)
        assert counts == plain_counts, (mode, counts, plain_counts)


def test_same_statistics_as_without_checkpointing():
    _, _, plain = train(Net(), steps=3)
    for mode in (False, True):
        _, _, mon = train(Net(mode), steps=3)
        for a, b in zip(plain.records, mon.records):
            if a["type"] == "step":
                assert a["layers"] == b["layers"], mode


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("fault", ["forward_nan", "backward_nan"])
def test_nan_inside_the_segment_is_found_where_it_was_made(mode, fault):
    found, _, _ = train(Net(mode), fault=fault)
    nonfinite = sorted((step, layer, phase) for kind, layer, step, phase, sev in found if kind == "nonfinite")
    phase = "forward" if fault == "forward_nan" else "backward"
    assert nonfinite and nonfinite[0] == (3, "body.2", phase), (mode, nonfinite)


def test_checkpointed_evaluation_under_no_grad_is_not_recorded():
    model = Net(True)
    torch.manual_seed(1)
    x = torch.randn(64, 16, requires_grad=True)
    mon = watch(model, every=1)
    with torch.no_grad():
        model(x)
    assert mon.adapter.tape.calls == []
    mon.close()
