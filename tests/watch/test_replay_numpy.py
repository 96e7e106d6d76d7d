"""Replay to the operation (nnstab.nn): the failing layer is re-run from the step's inputs and starting parameters
under np.errstate(..., "raise"), naming the NumPy operation and its line; the real run is untouched."""
import inspect

import numpy as np

import nnstab.nn as nnn
from nnstab.watch import watch


def line_of(func, text):
    lines, start = inspect.getsourcelines(func)
    for k, line in enumerate(lines):
        if text in line:
            return inspect.getsourcefile(func), start + k
    raise AssertionError(f"{text!r} not in {func.__name__}")


class ScaledExp(nnn.Module):
    """exp(scale * x), written by hand: float32 overflows past x * scale = 88.7."""

    def __init__(self):
        super().__init__()
        self.scale = 1.0

    def forward(self, x):
        y = np.exp(x * self.scale)
        self._saved = y
        return y

    def _backward(self, g):
        return g * self._saved * self.scale


class Magnitude(nnn.Module):
    """|x| as sqrt(x*x): finite forward; its backward x / |x| is 0/0 where x == 0."""

    def forward(self, x):
        y = np.sqrt(x * x)
        self._saved = (x, y)
        return y

    def _backward(self, g):
        x, y = self._saved
        return g * x / y


def train(model, steps=6, bad_step=3, fault=None, monitor=None, x=None):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((32, 16)).astype(np.float32) if x is None else x
    y = rng.integers(0, 4, 32)
    loss_fn = nnn.CrossEntropyLoss()
    opt = nnn.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for s in range(steps):
        xb = fault(model, x, s == bad_step) if fault else x
        with np.errstate(all="ignore"):      # the run itself lets NaN/inf through, as training would
            out = model(xb)
            loss = loss_fn(out, y)
            model.zero_grad()
            model.backward(loss_fn.backward())
            opt.step()
        losses.append(loss)
        if monitor is not None:
            monitor.step(loss=loss)
    return np.array(losses)


def exp_net():
    nnn.manual_seed(0)
    return nnn.Sequential(nnn.Dense(16, 8), ScaledExp(), nnn.Dense(8, 4))


def big_scale(model, x, on):
    model[1].scale = 1e3 if on else 1.0
    return x


def replayed(monitor):
    found = [f for f in monitor.findings if f.kind == "nonfinite" and f.severity == "error"]
    assert found, [str(f) for f in monitor.findings]
    return found[0], found[0].details["replay"]


def test_an_overflowing_exp_in_a_layer_is_replayed_to_np_exp_and_its_line():
    model = exp_net()
    mon = watch(model, replay=True)
    train(model, fault=big_scale, monitor=mon)
    mon.close()
    f, r = replayed(mon)
    assert (f.step, f.layer, f.phase) == (3, "1", "forward")
    assert (r["status"], r["op"], r["module"], r["phase"]) == ("found", "np.exp", "1", "forward")
    assert r["produced"] == "infinity"
    assert (r["file"], r["line"]) == line_of(ScaledExp.forward, "np.exp(")
    assert r["error"] == "overflow encountered in exp"
    assert r["inputs"][0]["shape"] == [32, 8] and r["inputs"][0]["nonfinite"] == 0
    assert "np.exp" in f.message and mon._replay.runs == 1


def test_a_nan_made_in_a_layers_backward_names_the_division_and_its_line():
    nnn.manual_seed(0)
    model = nnn.Sequential(nnn.Dense(16, 8, bias=False), Magnitude(), nnn.Dense(8, 4))
    mon = watch(model, replay=True)
    train(model, bad_step=2, fault=lambda m, x, on: np.zeros_like(x) if on else x, monitor=mon)
    mon.close()
    f, r = replayed(mon)
    assert (f.step, f.phase) == (2, "backward")
    assert (r["op"], r["module"], r["phase"], r["produced"]) == ("np.divide", "1", "backward", "NaN")
    assert (r["file"], r["line"]) == line_of(Magnitude._backward, "g * x / y")


def test_the_replay_leaves_the_run_as_it_was():
    a, b = exp_net(), exp_net()
    losses_a = train(a, steps=7, fault=big_scale)
    mon = watch(b, replay=True)
    losses_b = train(b, steps=7, fault=big_scale, monitor=mon)
    mon.close()
    assert mon._replay.runs == 1 and not np.isfinite(losses_a).all()
    assert np.array_equal(losses_a, losses_b, equal_nan=True)
    for p, q in zip(a.parameters(), b.parameters()):
        assert np.array_equal(p.data, q.data, equal_nan=True)
        assert (p.grad is None) == (q.grad is None) and np.array_equal(p.grad, q.grad, equal_nan=True)
    assert all(not m._forward_hooks and not m._backward_pre_hooks and not m._backward_hooks for m in b.modules())


def test_a_healthy_nnstab_nn_run_never_replays():
    model = exp_net()
    mon = watch(model, replay="host")
    train(model, steps=4, monitor=mon)
    mon.close()
    assert not [f for f in mon.findings if f.kind == "nonfinite"] and mon._replay.runs == 0
