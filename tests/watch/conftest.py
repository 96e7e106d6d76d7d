"""Small models and a training loop for the nnstab.watch tests (torch and nnstab.nn)."""
import numpy as np
import pytest
import torch
from torch import nn

import nnstab.nn as nnn
from nnstab.watch import watch


def torch_train(model, steps=6, lr=0.05, x=None, y=None, before=None, loss_fn=None, opt=None, monitor=None, **options):
    """Train `model` on a fixed random batch for `steps` SGD steps under a monitor; returns the monitor (closed).

    before(step, model, opt) runs at the start of each step (to inject a fault); x/y may be callables
    of the step.
    """
    torch.manual_seed(0)
    x = torch.randn(32, 16) if x is None else x
    y = torch.randint(0, 4, (32,)) if y is None else y
    opt = opt or torch.optim.SGD(model.parameters(), lr=lr)
    mon = monitor or watch(model, **options)
    for s in range(steps):
        if before is not None:
            before(s, model, opt)
        xb = x(s) if callable(x) else x
        yb = y(s) if callable(y) else y
        opt.zero_grad()
        loss = (loss_fn or nn.functional.cross_entropy)(model(xb), yb)
        loss.backward()
        opt.step()
        mon.step(loss=loss)
    mon.close()
    return mon


def numpy_train(model, steps=6, lr=0.05, x=None, y=None, before=None, dtype=np.float32, loss_fn=None, **options):
    """The nnstab.nn version of torch_train (cross-entropy on 4 classes unless loss_fn is given)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((32, 16)).astype(dtype) if x is None else x
    y = rng.integers(0, 4, 32) if y is None else y
    loss_fn = loss_fn or nnn.CrossEntropyLoss()
    opt = nnn.optim.SGD(model.parameters(), lr=lr)
    mon = watch(model, **options)
    for s in range(steps):
        if before is not None:
            before(s, model, opt)
        xb = x(s) if callable(x) else x
        out = model(xb)
        loss = loss_fn(out, y(s) if callable(y) else y)
        model.zero_grad()
        model.backward(loss_fn.backward())
        opt.step()
        mon.step(loss=loss)
    mon.close()
    return mon


def torch_mlp(*middle, width=32):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, width), nn.ReLU(), *middle, nn.Linear(width, 4))


def numpy_mlp(*middle, width=32, dtype=np.float32):
    nnn.manual_seed(0)
    return nnn.Sequential(nnn.Dense(16, width), nnn.ReLU(), *middle, nnn.Dense(width, 4)).to(dtype)


def kinds(monitor, severity=None):
    """{(kind, layer, step, phase)} of the monitor's findings (at `severity` if given)."""
    return {(f.kind, f.layer, f.step, f.phase) for f in monitor.findings if severity in (None, f.severity)}


def first(monitor, kind):
    """The first finding of `kind`; fails the test with the findings listed when there is none."""
    found = [f for f in monitor.findings if f.kind == kind]
    assert found, f"no {kind} finding; findings: {[str(f) for f in monitor.findings]}"
    return found[0]


@pytest.fixture
def tools():
    class Tools:
        pass

    t = Tools()
    for f in (torch_train, numpy_train, torch_mlp, numpy_mlp, kinds, first):
        setattr(t, f.__name__, staticmethod(f))
    return t
