"""torch.compile'd models under watch: no crash, the user's layer names, a planted NaN found where it was made."""
import json

import pytest
import torch
from torch import nn

from nnstab.watch import watch

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


class Fault(nn.Module):
    """A Linear whose output turns NaN on request (a buffer, so that planting it recompiles nothing)."""

    def __init__(self, n):
        super().__init__()
        self.lin = nn.Linear(n, n)
        self.register_buffer("poison", torch.zeros(()))

    def forward(self, x):
        return self.lin(x) + self.poison


def net(small=False):
    torch.manual_seed(0)
    if small:
        return nn.Sequential(nn.Linear(16, 16), nn.ReLU(), Fault(16), nn.Linear(16, 4))
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), Fault(32), nn.Tanh(), nn.Linear(32, 4))


def train(order, backend=None, steps=4, nan_at=None, fullgraph=False, small=False):
    """order: "plain" (not compiled), "compiled" (watch(torch.compile(model))) or "watched"
    (torch.compile(model) after watch(model)). Returns the closed monitor and the model."""
    torch._dynamo.reset()
    model = net(small)
    if order == "compiled":
        run = torch.compile(model, backend=backend, fullgraph=fullgraph)
        mon = watch(run, every=1)
    else:
        mon = watch(model, every=1)
        run = model if order == "plain" else torch.compile(model, backend=backend, fullgraph=fullgraph)
    torch.manual_seed(1)
    x, y = torch.randn(32, 16), torch.randint(0, 4, (32,))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for step in range(steps):
        model[2].poison.fill_(float("nan") if step == nan_at else 0.0)
        opt.zero_grad()
        loss = nn.functional.cross_entropy(run(x), y)
        loss.backward()
        opt.step()
        mon.step(loss=loss)
    mon.close()
    return mon, model


def layer_stats(mon):
    return json.dumps([r["layers"] for r in mon.records if r["type"] == "step"], sort_keys=True)   # NaN == NaN


def findings(mon):
    return [(f.kind, f.layer, f.step, f.phase, f.severity) for f in mon.findings]


@pytest.mark.parametrize("order, backend", [("compiled", "eager"), ("watched", "eager"), ("compiled", "aot_eager")])
def test_compiled_model_is_watched_as_the_plain_one(order, backend):
    plain, _ = train("plain", nan_at=2)
    mon, model = train(order, backend, nan_at=2)
    assert mon.adapter.names == [name for name, _ in model.named_modules()]      # no "_orig_mod." in them
    first = mon.findings[0]
    assert (first.kind, first.layer, first.step, first.phase) == ("nonfinite", "2", 2, "forward"), str(first)
    assert findings(mon) == findings(plain)
    assert layer_stats(mon) == layer_stats(plain)
    assert not mon.adapter.notes and not [r for r in mon.records if r["type"] == "note"]


def test_healthy_compiled_run_gives_no_warning():
    mon, _ = train("compiled", "aot_eager", steps=6)
    assert not [f for f in mon.findings if f.severity != "info"], findings(mon)


def test_inductor():
    mon, model = train("compiled", "inductor", nan_at=1, steps=2, small=True)
    first = mon.findings[0]
    assert (first.kind, first.layer, first.step, first.phase) == ("nonfinite", "2", 1, "forward"), str(first)


def test_fullgraph_compile_runs_and_says_what_it_cannot_see():
    mon, model = train("watched", "eager", nan_at=2, fullgraph=True)
    assert any("fullgraph" in note for note in mon.adapter.notes)
    first = mon.findings[0]       # all that is outside the graph: the loss went NaN at that step
    assert (first.kind, first.step, first.phase) == ("nonfinite", 2, "loss"), str(first)
    assert "outputs were not seen" in first.message
    # compiled before watch(): the wrapper's hooks run outside the graph, the model's output is seen
    mon, model = train("compiled", "eager", nan_at=2, fullgraph=True)
    assert any("fullgraph" in note for note in mon.adapter.notes)
    first = mon.findings[0]
    assert (first.kind, first.layer, first.step, first.phase) == ("nonfinite", "", 2, "forward"), str(first)
    notes = [r for r in mon.records if r["type"] == "note"]    # the limitation reaches the log and the report
    assert len(notes) == 1 and "fullgraph" in notes[0]["message"]
    report = mon.report()
    assert "fullgraph" in report.to_markdown() and "fullgraph" in report.to_html()
    assert any("fullgraph" in n for n in json.loads(report.to_json())["notes"])


def test_close_leaves_the_compiled_model_as_it_was():
    torch._dynamo.reset()
    model = net()
    run = torch.compile(model, backend="eager")
    hooks = [(dict(m._forward_hooks), dict(m._forward_pre_hooks)) for m in run.modules()]
    mon = watch(run)
    run(torch.randn(4, 16)).sum().backward()
    mon.step()
    mon.close()
    assert [(dict(m._forward_hooks), dict(m._forward_pre_hooks)) for m in run.modules()] == hooks
    assert torch.isfinite(run(torch.randn(4, 16))).all()
