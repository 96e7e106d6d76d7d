"""Replay to the operation (torch): the first NaN/inf of a run is traced to its aten operation, module, phase and
source line, and the replay leaves the run exactly as it would have been without it."""
import inspect

import pytest
import torch
from torch import nn

from nnstab.watch import watch


def line_of(func, text):
    """(file, line number) of the first line of `func` containing `text`."""
    lines, start = inspect.getsourcelines(func)
    for k, line in enumerate(lines):
        if text in line:
            return inspect.getsourcefile(func), start + k
    raise AssertionError(f"{text!r} not in {func.__name__}")


class LogSoftmaxHead(nn.Module):
    """log(softmax(z)) written by hand: with a large scale the smaller probabilities underflow to 0, log gives -inf."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 4)
        self.scale = 1.0

    def forward(self, x):
        return torch.log(torch.softmax(self.fc(x) * self.scale, dim=1))


class Net(nn.Module):
    def __init__(self, head):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(16, 8), nn.Tanh())
        self.head = head

    def forward(self, x):
        return self.head(self.body(x))


class SqrtOfSquare(nn.Module):
    """|h| as sqrt(h*h): finite forward, but at h == 0 the backward of sqrt divides by 0 (inf), times 2h = 0: NaN."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(16, 8, bias=False)

    def forward(self, x):
        h = self.fc(x)
        return torch.sqrt(h * h)


def train(model, steps=6, bad_step=3, break_it=None, monitor=None, x=None, opt=None):
    """SGD on a fixed batch; `break_it(model, on)` switches the fault on for step bad_step. Returns the losses."""
    torch.manual_seed(0)
    x = torch.randn(32, 16) if x is None else x
    y = torch.randint(0, 4, (32,))
    opt = opt or torch.optim.SGD(model.parameters(), lr=0.05)
    losses = []
    for s in range(steps):
        if break_it is not None:
            break_it(model, s == bad_step)
        opt.zero_grad()
        out = model(x)
        loss = nn.functional.nll_loss(out, y) if out.shape[1] == 4 else out.sum()
        loss.backward()
        opt.step()
        losses.append(loss.detach().clone())
        if monitor is not None:
            monitor.step(loss=loss)
    return losses


def big_scale(model, on):
    model.head.scale = 1e4 if on else 1.0


def replayed(monitor):
    found = [f for f in monitor.findings if f.kind == "nonfinite" and f.severity == "error"]
    assert found, [str(f) for f in monitor.findings]
    assert "replay" in found[0].details, found[0].details
    return found[0], found[0].details["replay"]


def test_log_of_an_underflowed_softmax_is_replayed_to_aten_log_in_its_module_and_line():
    torch.manual_seed(0)
    model = Net(LogSoftmaxHead())
    mon = watch(model, replay=True)
    train(model, break_it=big_scale, monitor=mon)
    mon.close()
    f, r = replayed(mon)
    assert (f.step, r["status"], r["op"], r["module"], r["phase"]) == (3, "found", "aten::log", "head", "forward")
    file, line = line_of(LogSoftmaxHead.forward, "torch.log(torch.softmax")
    assert (r["file"], r["line"]) == (file, line)
    assert r["code"].startswith("return torch.log(torch.softmax(")
    assert r["produced"] == "infinity"
    # the replayed forward is linted too: the stable replacement is named, in the details and the message
    assert r["formula"] == "log(softmax(x))" and "log_softmax" in r["replacement"]
    assert f"use {r['replacement']} instead" in f.message
    [inp] = r["inputs"]                      # the softmax output: finite, with underflowed zeros
    assert inp["shape"] == [32, 4] and inp["nonfinite"] == 0 and inp["zeros"] > 0 and inp["min"] == 0.0
    assert "aten::log" in f.message and f"{line}" in f.message
    assert mon._replay.runs == 1


def test_a_nan_first_made_in_backward_names_the_backward_op_and_the_forward_line():
    torch.manual_seed(0)
    model = nn.Sequential(SqrtOfSquare(), nn.Linear(8, 4), nn.LogSoftmax(dim=1))
    x = torch.randn(32, 16)

    def zero_batch(model, on):               # the batch is all zeros at step 2: h = fc(0) = 0 exactly
        x.copy_(torch.zeros_like(x) if on else base)
    base = x.clone()
    mon = watch(model, replay=True)
    train(model, bad_step=2, break_it=zero_batch, monitor=mon, x=x)
    mon.close()
    f, r = replayed(mon)
    assert f.step == 2 and f.phase == "backward"
    assert (r["phase"], r["module"], r["node"]) == ("backward", "0", "SqrtBackward0")
    assert r["op"] in ("aten::div", "aten::mul", "aten::reciprocal")
    assert (r["file"], r["line"]) == line_of(SqrtOfSquare.forward, "torch.sqrt(h * h)")


class Recip(nn.Module):
    """1 / (dropout(x) + shift): finite while shift is 1; at shift 0 every dropped element gives inf."""

    def __init__(self):
        super().__init__()
        self.drop = nn.Dropout(0.5)
        self.register_buffer("shift", torch.ones(()))

    def forward(self, x):
        return 1.0 / (self.drop(x) + self.shift)


def dropout_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 8), nn.BatchNorm1d(8), Recip(), nn.Linear(8, 4), nn.LogSoftmax(dim=1))


def shift_zero(model, on):
    model[2].shift.fill_(0.0 if on else 1.0)


def test_dropout_is_replayed_with_the_steps_own_mask():
    model = dropout_net()
    dropped = []                             # the real run's dropout outputs, seen by a user hook
    model[2].drop.register_forward_hook(lambda m, i, o: dropped.append(o.detach().clone()))
    mon = watch(model, replay=True)
    train(model, break_it=shift_zero, monitor=mon, opt=torch.optim.Adam(model.parameters(), lr=1e-2))
    mon.close()
    f, r = replayed(mon)
    assert f.step == 3 and (r["op"], r["module"], r["phase"]) in {("aten::reciprocal", "2", "forward"),
                                                                   ("aten::div", "2", "forward")}
    real = dropped[3]
    assert len(dropped) == 6                 # the user's hook did not run during the replay
    [inp] = [i for i in r["inputs"] if i["shape"] == [32, 8]]
    assert inp["zeros"] == int((real == 0).sum())   # the same dropout mask as the real step
    assert inp["max"] == float(real.max()) and inp["min"] == float(real.min())


def bits(t):
    """A tensor's values as comparable bits (NaN equal to NaN of the same payload)."""
    t = t.detach().contiguous()
    return t.view(torch.int32) if t.dtype == torch.float32 else t


def run_for_invariance(watched):
    model = dropout_net()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    calls = []
    model[0].register_forward_hook(lambda m, i, o: calls.append(1))
    mon = watch(model, replay=True) if watched else None
    losses = train(model, steps=7, break_it=shift_zero, monitor=mon, opt=opt)
    if mon is not None:
        mon.close()
        assert mon._replay.runs == 1
    state = [bits(v) for s in opt.state.values() for v in s.values() if isinstance(v, torch.Tensor)]
    return (losses, [bits(p) for p in model.parameters()], [bits(b) for b in model.buffers()], state,
            torch.rand(5), len(calls), [p.grad is None for p in model.parameters()])


def test_a_replayed_run_is_bit_for_bit_the_run_without_the_monitor():
    a, b = run_for_invariance(False), run_for_invariance(True)
    losses_a, losses_b = a[0], b[0]
    assert any(not torch.isfinite(v) for v in losses_a)          # the run did break
    assert all(torch.equal(bits(u), bits(v)) for u, v in zip(losses_a, losses_b))
    for part_a, part_b in zip(a[1:4], b[1:4]):                   # parameters, BatchNorm buffers, Adam state
        assert len(part_a) == len(part_b) and all(torch.equal(u, v) for u, v in zip(part_a, part_b))
    assert torch.equal(a[4], b[4])                               # the RNG continues the same
    assert a[5:] == b[5:]                                        # hooks ran as often; .grad as it was


def test_a_healthy_run_never_replays():
    torch.manual_seed(0)
    model = Net(LogSoftmaxHead())
    mon = watch(model, replay=True)
    train(model, steps=5, monitor=mon)
    mon.close()
    assert not [f for f in mon.findings if f.kind == "nonfinite"]
    assert mon._replay.runs == 0 and mon._replay.replayer.snapshot.taken == 5
    # the parameters were copied for step 0 only: from then on torch.optim's pre-step hook copies them, and
    # only when the step so far holds a NaN/inf
    assert mon._replay.replayer.snapshot.copies == 1
    assert mon.records[0]["options"]["replay"] == "device"


def test_the_parameters_are_copied_on_the_broken_step_only():
    torch.manual_seed(0)
    model = Net(LogSoftmaxHead())
    mon = watch(model, replay=True)
    train(model, break_it=big_scale, monitor=mon)
    mon.close()
    f, r = replayed(mon)
    assert (f.step, r["op"]) == (3, "aten::log")
    assert mon._replay.replayer.snapshot.copies == 2             # step 0, and step 3 before its update


def sgd_by_hand(model, lr=0.05):
    with torch.no_grad():
        for p in model.parameters():
            if p.grad is not None:
                p -= lr * p.grad


class HandOptimiser:
    """Updates written by hand, not through torch.optim: no step hook sees them."""

    def __init__(self, model):
        self.model = model

    def zero_grad(self):
        self.model.zero_grad()

    def step(self):
        sgd_by_hand(self.model)


def test_updates_by_hand_keep_the_copy_before_every_step_and_still_replay():
    torch.manual_seed(0)
    model = Net(LogSoftmaxHead())
    mon = watch(model, replay=True)
    train(model, break_it=big_scale, monitor=mon, opt=HandOptimiser(model))
    mon.close()
    f, r = replayed(mon)
    assert (f.step, r["status"], r["op"], r["module"]) == (3, "found", "aten::log", "head")
    assert mon._replay.replayer.snapshot.copies == 4             # steps 0-3, each before its update


def test_a_nan_made_in_the_loss_is_said_to_come_from_outside_the_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 8), nn.Tanh(), nn.Linear(8, 4))
    x, y = torch.randn(32, 16), torch.randint(0, 4, (32,))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    mon = watch(model, replay="host")
    for s in range(4):
        opt.zero_grad()
        logits = model(x) * (1e4 if s == 2 else 1.0)
        loss = -torch.log(torch.softmax(logits, dim=1)).gather(1, y[:, None]).mean()
        loss.backward()
        opt.step()
        mon.step(loss=loss)
    mon.close()
    f, r = replayed(mon)
    assert f.step == 2 and r["status"] == "found" and r["phase"] == "loss" and r["op"] is None
    assert "LogBackward0" in r["loss_ops"] and "SoftmaxBackward0" in r["loss_ops"]
    assert "loss code" in f.message


@pytest.mark.parametrize("bad, error", [("gpu", ValueError), ("yes", ValueError), (1, TypeError), (0.5, TypeError)])
def test_bad_replay_values_are_refused_with_the_choices(bad, error):
    model = nn.Linear(2, 2)
    with pytest.raises(error, match=r"'replay' must be False, True, \"device\" or \"host\""):
        watch(model, replay=bad)
    watch(model, replay=False).close()   # the refused monitors left nothing attached


def test_a_compiled_model_is_replayed_through_its_eager_original():
    torch.manual_seed(0)
    model = Net(LogSoftmaxHead())
    compiled = torch.compile(model, backend="eager")    # the eager backend: no compiler toolchain needed
    mon = watch(compiled, replay=True)
    train(compiled, break_it=lambda _, on: big_scale(model, on), monitor=mon)
    mon.close()
    f, r = replayed(mon)
    assert (f.step, r["op"], r["module"], r["phase"]) == (3, "aten::log", "head", "forward")
    assert (r["file"], r["line"]) == line_of(LogSoftmaxHead.forward, "torch.log(torch.softmax")


class Overshoot(torch.optim.SGD):
    """SGD whose step, when `overshoot` is set, scales the parameters past float32's range (as a far too large
    learning rate would)."""

    overshoot = False

    @torch.no_grad()
    def step(self, closure=None):
        super().step(closure)
        if self.overshoot:
            for group in self.param_groups:
                for p in group["params"]:
                    p.mul_(1e30).mul_(1e30)


def test_parameters_broken_by_the_update_name_the_optimiser_and_the_parameters():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 8), nn.Tanh(), nn.Linear(8, 4))
    opt = Overshoot(model.parameters(), lr=0.05)

    def overshoot(model, on):
        opt.overshoot = on
    mon = watch(model, replay=True)
    train(model, bad_step=3, break_it=overshoot, monitor=mon, opt=opt)
    mon.close()
    f, r = replayed(mon)
    assert (f.step, f.phase) == (3, "update")
    assert (r["phase"], r["optimizer"], r["lr"]) == ("update", "Overshoot", 0.05)
    assert r["parameters"] == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert "Overshoot (lr=0.05) wrote NaN/inf into 0.weight, 0.bias" in f.message


@pytest.mark.parametrize("replay", [False, True])
def test_a_watched_step_leaves_no_reference_cycles_behind(replay):
    """Garbage only the cycle collector frees accumulates while it is paused (benchmarks pause it) and
    makes every collection slower: a healthy watched step must create none."""
    import gc

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(32, 8), torch.randint(0, 4, (32,))
    mon = watch(model, replay=replay)

    def step():
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        mon.step(loss=loss)

    step()
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        for _ in range(5):
            step()
        gc.collect()
        cycles = list(gc.garbage)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
    mon.close()
    assert cycles == []


def test_a_replay_that_breaks_again_without_an_origin_op_says_why_not_that_it_stayed_finite():
    # parameters already NaN when the step began (a bad checkpoint row): no operation made the NaN
    emb = nn.Embedding(10, 3)
    with torch.no_grad():
        emb.weight[2] = float("nan")
    mon = watch(emb, replay=True)
    emb(torch.tensor([1, 2])).sum().backward()
    mon.step()
    r = mon.findings[0].details["replay"]
    assert r["status"] == "unattributed" and r["parameters"] == ["weight"]
    assert "already NaN/inf when it began" in mon.findings[0].message
    mon.close()

    # a row masked to -inf everywhere before a softmax: the NaN comes from infinities given on purpose
    class MaskedSoftmax(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x, pad):
            return torch.softmax(self.fc(x).masked_fill(pad, float("-inf")), -1)

    model = MaskedSoftmax()
    pad = torch.zeros(2, 4, dtype=torch.bool)
    pad[1] = True
    mon = watch(model, replay=True)
    model(torch.randn(2, 4), pad).sum().backward()
    mon.step()
    r = mon.findings[0].details["replay"]
    assert r["status"] == "unattributed" and r["parameters"] == [] and "-inf mask" in r["reason"]
    mon.close()


def test_a_loss_that_alone_overflowed_is_not_blamed_on_an_update_outside_the_optimiser():
    # outputs ~1e20 are finite, their squares are not: nothing looked broken before the optimiser's update,
    # so no copy of the parameters was kept, and the replay says exactly that
    torch.manual_seed(0)
    model = nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=1e-45)
    mon = watch(model, replay=True)
    for step in range(3):
        loss = nn.functional.mse_loss(model(torch.randn(4, 2) * (1e20 if step == 2 else 1.0)), torch.zeros(4, 1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        mon.step(loss=loss)
    mon.close()
    r = [f for f in mon.findings if f.kind == "nonfinite"][0].details["replay"]
    assert r["status"] == "failed" and "looked finite" in r["reason"] and "outside torch.optim" not in r["reason"]


def test_a_loss_that_overflowed_first_is_not_explained_by_the_backward_that_followed_it():
    # outputs ~1e20 are finite, the squared error overflows: backward then starts from an infinite loss and
    # makes inf/NaN in the model's matmuls; those are consequences, the loss is where it began
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 8), nn.Linear(8, 1))
    mon = watch(model, replay=True)
    for step in range(3):
        loss = nn.functional.mse_loss(model(torch.randn(4, 2) * (1e20 if step == 2 else 1.0)), torch.zeros(4, 1))
        loss.backward()
        mon.step(loss=loss)
    mon.close()
    f = [f for f in mon.findings if f.kind == "nonfinite"][0]
    r = f.details["replay"]
    assert (f.step, f.phase) == (2, "loss") and r["status"] == "found" and r["phase"] == "loss" and r["op"] is None
