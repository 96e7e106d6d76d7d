"""Training with the monitor is bit-for-bit training without it: same losses, same parameters."""
import copy

import numpy as np
import torch
from torch import nn

import nnstab.nn as nnn
from nnstab.watch import watch


def run_torch(model, watched, steps=12):
    torch.manual_seed(123)                    # dropout draws the same masks in both runs
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(7)
    x, y = torch.randn(steps, 16, 3, 8, 8, generator=g), torch.randint(0, 4, (steps, 16), generator=g)
    mon = watch(model, checks={"underflow": {"every": 1}, "overflow": {"range_every": 1},
                               "nonfinite": {"params_every": 1}}) if watched else None
    losses = []
    for s in range(steps):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x[s]), y[s])
        loss.backward()
        opt.step()
        losses.append(loss.detach().clone())
        if mon is not None:
            mon.step(loss=loss)
        if s % 4 == 3:                        # an evaluation pass between steps
            model.eval()
            with torch.no_grad():
                model(x[0])
            model.train()
    if mon is not None:
        mon.close()
    return torch.stack(losses), [p.detach().clone() for p in model.parameters()]


def test_torch_cnn_with_dropout_and_batchnorm():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Flatten(), nn.Dropout(0.3), nn.Linear(8 * 4 * 4, 32), nn.Tanh(), nn.Linear(32, 4))
    twin = copy.deepcopy(model)
    loss_a, params_a = run_torch(model, watched=False)
    loss_b, params_b = run_torch(twin, watched=True)
    assert torch.equal(loss_a, loss_b)
    assert all(torch.equal(a, b) for a, b in zip(params_a, params_b))
    bn_a, bn_b = model[1], twin[1]
    assert torch.equal(bn_a.running_mean, bn_b.running_mean) and torch.equal(bn_a.running_var, bn_b.running_var)


def run_numpy(model, watched, steps=12):
    rng = np.random.default_rng(5)
    x, y = rng.standard_normal((steps, 32, 16)).astype(np.float32), rng.integers(0, 4, (steps, 32))
    loss_fn = nnn.CrossEntropyLoss()
    opt = nnn.optim.Adam(model.parameters(), lr=1e-2)
    mon = watch(model, checks={"underflow": {"every": 1}, "overflow": {"range_every": 1},
                               "nonfinite": {"params_every": 1}}) if watched else None
    losses = []
    for s in range(steps):
        out = model(x[s])
        loss = loss_fn(out, y[s])
        opt.zero_grad()
        model.backward(loss_fn.backward())
        opt.step()
        losses.append(loss)
        if mon is not None:
            mon.step(loss=loss)
    if mon is not None:
        mon.close()
    return np.array(losses), [p.data.copy() for p in model.parameters()]


def test_nnstab_nn_mlp():
    nnn.manual_seed(0)
    model = nnn.Sequential(nnn.Dense(16, 32), nnn.BatchNorm(32), nnn.ReLU(), nnn.Dropout(0.2, rng=3),
                           nnn.Dense(32, 32), nnn.Sigmoid(), nnn.Dense(32, 4))
    twin = copy.deepcopy(model)
    loss_a, params_a = run_numpy(model, watched=False)
    loss_b, params_b = run_numpy(twin, watched=True)
    assert np.array_equal(loss_a, loss_b)
    assert all(np.array_equal(a, b) for a, b in zip(params_a, params_b))
