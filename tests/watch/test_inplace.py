"""In-place operations on module outputs: what torch's full backward hooks refuse, the monitor watches unchanged."""
import pytest
import torch
from torch import nn

from nnstab.watch import watch


class Block(nn.Module):
    """Linear, then in-place work on its output in this forward: `h += other(x)` and `h.mul_(0.5)`;
    `inplace=False` computes the same numbers out of place."""

    def __init__(self, n, inplace):
        super().__init__()
        self.lin, self.other = nn.Linear(n, n), nn.Linear(n, n)
        self.inplace = inplace
        self.nan = False

    def forward(self, x):
        h = self.lin(x)
        o = self.other(x)
        if self.nan:
            o = torch.log(o - 1e6)             # NaN made in `other`'s output... by a functional op here
        if self.inplace:
            h += o
            h.mul_(0.5)
        else:
            h = (h + o) * 0.5
        return h


class Other(nn.Module):
    """A Linear that makes a NaN in its own forward on request."""

    def __init__(self, n):
        super().__init__()
        self.lin = nn.Linear(n, n)
        self.nan = False

    def forward(self, x):
        y = self.lin(x)
        return torch.log(y - 1e6) if self.nan else y


def net(inplace, block=None):
    """Linear, ReLU, Block, ReLU, Linear; `inplace`: the ReLUs, `block` (default: the same): the Block's own ops."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(inplace=inplace), Block(32, inplace if block is None else block),
                          nn.ReLU(inplace=inplace), nn.Linear(32, 4))
    model[2].other = Other(32)
    return model


def steps(mon):
    return [{k: v for k, v in r.items() if k != "time"} for r in mon.records if r["type"] == "step"]


def train(model, steps=4, plant=None, at=2, lr=0.05):
    torch.manual_seed(1)
    x, y = torch.randn(64, 16), torch.randint(0, 4, (64,))
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    mon = watch(model, every=1)
    for step in range(steps):
        if plant is not None:
            plant(model, step == at)
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        mon.step(loss=loss)
    mon.close()
    return mon


def test_torch_full_backward_hooks_raise_on_this_model():
    model = net(inplace=True)
    model[0].register_full_backward_hook(lambda *args: None)
    with pytest.raises(RuntimeError, match="modified inplace"):
        model(torch.randn(8, 16)).sum().backward()


def test_inplace_relu_gives_the_statistics_and_findings_of_relu():
    ref, mon = train(net(False)), train(net(True, block=False))
    assert steps(ref)[0]["layers"]["0"]["act_min"] < 0      # the Linear's own output, before the ReLU
    assert steps(mon) == steps(ref)
    assert [f.to_dict() for f in mon.findings] == [f.to_dict() for f in ref.findings]


def test_outputs_changed_in_place_by_the_parent():
    ref, mon = train(net(False)), train(net(True))
    a, b = steps(ref), steps(mon)
    # step 0: the Linear's output was measured after `h += ...` changed it: no range is claimed for it;
    # from step 1 on, its outputs are measured when it returns them, as made
    assert "act_min" in a[0]["layers"]["2.lin"] and "act_min" not in b[0]["layers"]["2.lin"]
    for ra, rb in zip(a[1:], b[1:]):
        assert ra["layers"].get("2.lin") == rb["layers"].get("2.lin") and ra["loss"] == rb["loss"]
    assert [f.to_dict() for f in mon.findings] == [f.to_dict() for f in ref.findings]


def _other_nan(model, on):
    model[2].other.nan = on


@pytest.mark.parametrize("at", [0, 2])
def test_nan_from_a_layer_whose_output_is_added_in_place_is_blamed_on_that_layer(at):
    for inplace in (False, True):
        mon = train(net(inplace), plant=_other_nan, at=at)
        first = min((f for f in mon.findings if f.kind == "nonfinite"), key=lambda f: f.step)
        assert (first.layer, first.step, first.phase) == ("2.other", at, "forward"), (inplace, str(first))


def test_nan_made_in_place_by_the_parent_is_blamed_on_the_parent():
    def plant(model, on):
        model[2].nan = on

    for inplace in (False, True):
        mon = train(net(inplace), plant=plant, at=0)
        first = min((f for f in mon.findings if f.kind == "nonfinite"), key=lambda f: f.step)
        assert (first.layer, first.step, first.phase) == ("2", 0, "forward"), (inplace, str(first))


def test_backward_nan_through_in_place_ops_is_blamed_on_the_same_layer():
    def plant(model, on):
        with torch.no_grad():
            if on:
                model[4].weight[0, 0] = float("inf")

    found = {}
    for inplace in (False, True):
        mon = train(net(inplace), plant=plant, at=2, lr=0.0)
        found[inplace] = [(f.kind, f.layer, f.step, f.phase) for f in mon.findings if f.kind == "nonfinite"]
    assert found[True] == found[False] and found[True], found
