"""dead_relu and saturation: units stuck at zero or in a flat region, per dense feature or conv channel."""
import numpy as np
import torch
from torch import nn

import nnstab.nn as nnn


def test_relu_units_killed_by_a_negative_bias(tools):
    model = tools.torch_mlp()
    with torch.no_grad():
        model[0].bias.fill_(-10.0)
    mon = tools.torch_train(model, steps=11)       # looks at steps 0, 5 and 10
    f = tools.first(mon, "dead_relu")
    assert (f.layer, f.step, f.phase, f.severity, f.value) == ("1", 0, "forward", "warning", 1.0)
    assert f.details == {"units": 32, "dead": 32}


def test_relu_units_dying_mid_run_are_dated_to_when_they_died(tools):
    def kill(step, model, opt):
        if step == 4:
            with torch.no_grad():
                model[0].bias[:16].fill_(-100.0)     # half the units of layer 1 die at step 4

    mon = tools.torch_train(tools.torch_mlp(), steps=16, lr=0.0, before=kill)
    f = tools.first(mon, "dead_relu")
    assert (f.layer, f.step) == ("1", 5)             # the first look after they died
    assert f.value == 0.5


def test_conv_channels_are_the_units(tools):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 4))
    with torch.no_grad():
        model[0].bias[:4].fill_(-50.0)
    mon = tools.torch_train(model, steps=11, x=torch.randn(16, 3, 6, 6), y=torch.randint(0, 4, (16,)))
    f = tools.first(mon, "dead_relu")
    assert (f.layer, f.step, f.value) == ("1", 0, 0.5)
    assert f.details["units"] == 8


def test_numpy_dead_relu(tools):
    model = tools.numpy_mlp()
    model[0].bias.data[...] = -10
    mon = tools.numpy_train(model, steps=11)
    f = tools.first(mon, "dead_relu")
    assert (f.layer, f.step) == ("1", 0) and f.value > 0.9


def test_tanh_units_saturated_by_large_weights(tools):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 4), nn.Sigmoid())
    with torch.no_grad():
        model[0].weight.mul_(30)
    mon = tools.torch_train(model, steps=6, lr=1e-4, y=torch.rand(32, 4), loss_fn=nn.functional.mse_loss)
    f = tools.first(mon, "saturation")
    assert (f.layer, f.step, f.phase, f.severity) == ("1", 0, "forward", "warning")
    assert f.value >= 0.5
    assert "5" not in {g.layer for g in mon.findings if g.kind == "saturation"}   # the output's sigmoid is left alone


def test_softmax_rows_near_one_hot(tools):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 8), nn.Softmax(dim=1), nn.Linear(8, 4))
    with torch.no_grad():
        model[0].weight.mul_(100)
    mon = tools.torch_train(model, steps=6, lr=1e-4)
    f = tools.first(mon, "saturation")
    assert (f.layer, f.step) == ("1", 0)


def test_numpy_sigmoid_saturation(tools):
    nnn.manual_seed(0)
    model = nnn.Sequential(nnn.Dense(16, 32, init="normal"), nnn.Sigmoid(), nnn.Dense(32, 4))
    model[0].weight.data *= np.float32(20)
    mon = tools.numpy_train(model, steps=6, lr=1e-4)
    f = tools.first(mon, "saturation")
    assert (f.layer, f.step) == ("1", 0)


def test_a_healthy_tanh_network_is_not_saturated(tools):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 4))
    mon = tools.torch_train(model, steps=8)
    assert not [f for f in mon.findings if f.kind == "saturation"]
