"""vanishing_gradient and exploding_gradient: found at the layer, with the step the condition began."""
import torch
from torch import nn

import nnstab.nn as nnn


def deep_torch(act, depth, gain=1.0, width=32):
    torch.manual_seed(0)
    layers = [nn.Linear(16, width), act()]
    for _ in range(depth - 2):
        layers += [nn.Linear(width, width), act()]
    model = nn.Sequential(*layers, nn.Linear(width, 4))
    with torch.no_grad():
        for m in model:
            if isinstance(m, nn.Linear):
                m.weight.mul_(gain)
    return model


def test_deep_sigmoid_network_vanishes_toward_the_input(tools):
    mon = tools.torch_train(deep_torch(nn.Sigmoid, 12), steps=6)
    f = tools.first(mon, "vanishing_gradient")
    assert (f.layer, f.step, f.phase, f.severity) == ("0", 0, "backward", "warning")
    assert f.value < 1e-3 and "0" in f.details["ratios"]


def test_deep_large_init_relu_network_explodes_toward_the_input(tools):
    mon = tools.torch_train(deep_torch(nn.ReLU, 8, gain=10.0), steps=3, lr=1e-12)
    f = [f for f in mon.findings if f.kind == "exploding_gradient" and f.details["test"] == "depth"][0]
    assert (f.layer, f.step, f.phase, f.severity) == ("0", 0, "backward", "warning")
    assert f.value > 100


def test_gradients_growing_over_steps(tools):
    # a learning rate past the stability limit of a quadratic: the gradient doubles every step
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 1, bias=False))
    x, y = torch.eye(4), torch.zeros(4, 1)
    mon = tools.torch_train(model, steps=14, lr=6.0, x=x, y=y, loss_fn=nn.functional.mse_loss)
    f = [f for f in mon.findings if f.kind == "exploding_gradient" and f.details["test"] == "growth"][0]
    assert f.layer == "0" and f.value >= 1000 and 9 <= f.step <= 11


def test_numpy_deep_sigmoid_network_vanishes(tools):
    # sigmoid' <= 1/4: every layer shrinks the gradient it passes back, while its input stays ~1/2
    nnn.manual_seed(0)
    layers = [nnn.Dense(16, 32, init="xavier"), nnn.Sigmoid()]
    for _ in range(10):
        layers += [nnn.Dense(32, 32, init="xavier"), nnn.Sigmoid()]
    model = nnn.Sequential(*layers, nnn.Dense(32, 4, init="xavier"))
    mon = tools.numpy_train(model, steps=6)
    f = tools.first(mon, "vanishing_gradient")
    assert (f.layer, f.step, f.phase) == ("0", 0, "backward")


def test_healthy_relu_network_has_no_gradient_findings(tools):
    mon = tools.torch_train(deep_torch(nn.ReLU, 8), steps=11)
    assert not [f for f in mon.findings if f.kind.endswith("_gradient")], [str(f) for f in mon.findings]


def _param_stats(mon):
    """{step: (steps whose records hold param_norm, ... param_grad_norm)} for the first layer."""
    rows = {r["step"]: r["layers"].get("0", {}) for r in mon.records if r["type"] == "step"}
    return ({s for s, st in rows.items() if "param_norm" in st}, {s for s, st in rows.items() if "param_grad_norm" in st})


def test_parameter_gradients_are_read_twice_as_often_as_the_parameters(tools):
    # vanishing_gradient needs the gradients' norms alone (every 10 steps): half the memory traffic of
    # reading the parameters too (every 20 steps, for exploding_gradient's relative test and the update check)
    for mon in (tools.torch_train(deep_torch(nn.ReLU, 4), steps=41),
                tools.numpy_train(nnn.Sequential(nnn.Dense(16, 32), nnn.ReLU(), nnn.Dense(32, 4)), steps=41)):
        with_params, with_grads = _param_stats(mon)
        assert with_params == {0, 20, 40} and with_grads == {0, 10, 20, 30, 40}


def test_a_vanishing_gradient_is_found_on_a_step_that_reads_only_parameter_gradients(tools):
    # the network only starts to vanish at step 10, where parameters themselves are not read
    def squash(step, model, opt):
        if step == 10:
            with torch.no_grad():
                for m in model:
                    if isinstance(m, nn.Linear) and m is not model[-1]:
                        m.weight.mul_(1e-3)
    mon = tools.torch_train(deep_torch(nn.ReLU, 4), steps=15, lr=1e-9, before=squash)
    f = tools.first(mon, "vanishing_gradient")
    assert (f.step, f.phase) == (10, "backward") and f.value < 1e-3
    assert _param_stats(mon)[0] == {0}


def test_gradients_that_swing_from_batch_to_batch_are_not_an_explosion(tools):
    # a converged classifier fine-tuned with small batches: most batches are easy (gradients ~1e-3 of a
    # hard one), now and then one is very easy (1e-8) and a run of hard ones follows; nothing grows
    import numpy as np

    rng = np.random.default_rng(0)
    scale = 10.0 ** rng.normal(-3, 0.7, 300)
    scale[rng.random(300) < 0.03] = 1e-8
    for start in (40, 120, 200):
        scale[start:start + 4] = 10.0 ** rng.uniform(-1.5, -0.5, 4)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 1))   # its first gradient: read every step
    scales = iter(scale)

    def scaled_mse(out, target):    # the batch's difficulty, as the size of its loss
        return float(next(scales)) * nn.functional.mse_loss(out, target)

    mon = tools.torch_train(model, steps=300, lr=1e-9, x=torch.randn(8, 16), y=torch.randn(8, 1), loss_fn=scaled_mse)
    assert not [f for f in mon.findings if f.kind == "exploding_gradient"], [str(f) for f in mon.findings]
