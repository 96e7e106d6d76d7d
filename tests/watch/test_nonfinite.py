"""nonfinite: the first NaN/inf of a step is found with its layer, step and phase; later steps fold into it."""
import numpy as np
import pytest
import torch
from torch import nn

import nnstab.nn as nnn

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")   # NumPy's own overflow warnings are the point


class Log(nn.Module):
    """log(x): NaN for the negative outputs of the layer before it, from finite inputs."""

    def forward(self, x):
        return torch.log(x)


class SqrtOfPositive(nn.Module):
    """sqrt(x * (x > 0)): finite forward, but d/dx sqrt at 0 is inf, and inf * 0 = NaN in backward."""

    def forward(self, x):
        return torch.sqrt(x * (x > 0))


def test_forward_origin_is_the_layer_that_made_nan_from_finite_inputs(tools):
    model = nn.Sequential(nn.Linear(16, 32), Log(), nn.Linear(32, 4))
    mon = tools.torch_train(model, steps=4)
    f = tools.first(mon, "nonfinite")
    assert (f.layer, f.step, f.phase, f.severity) == ("1", 0, "forward", "error")
    assert f.count == 4 and f.last_step == 3            # every later step folded in, not flooded
    assert sum(g.kind == "nonfinite" for g in mon.findings) == 1


def test_backward_origin_is_the_module_whose_backward_broke_the_gradient(tools):
    model = nn.Sequential(nn.Linear(16, 32), SqrtOfPositive(), nn.Linear(32, 4))
    mon = tools.torch_train(model, steps=3)
    f = tools.first(mon, "nonfinite")
    assert (f.layer, f.step, f.phase) == ("1", 0, "backward")


def test_nan_in_the_input_batch_is_blamed_on_the_data(tools):
    x = torch.randn(32, 16)

    def batch(step):
        xb = x.clone()
        if step == 2:
            xb[3, 4] = float("nan")
        return xb

    mon = tools.torch_train(tools.torch_mlp(), steps=4, x=batch)
    f = tools.first(mon, "nonfinite")
    assert (f.layer, f.step, f.phase, f.details["source"]) == ("", 2, "forward", "input")
    # the NaN went on through backward into the parameters: step 3 is the same failure, folded in
    assert f.count == 2 and sum(g.kind == "nonfinite" for g in mon.findings) == 1


def test_non_finite_loss_from_finite_outputs(tools):
    def bad_loss(out, y):
        return -torch.log(torch.softmax(out, 1)[:, 0] * 0).mean()   # log(0) = -inf

    mon = tools.torch_train(tools.torch_mlp(), steps=2, loss_fn=bad_loss)
    f = tools.first(mon, "nonfinite")
    assert (f.layer, f.step, f.phase) == ("", 0, "loss")
    assert tools.first(mon, "loss_divergence").severity == "error"


def test_update_that_breaks_parameters_between_parameter_checks(tools):
    def inf_lr(step, model, opt):
        if step == 3:   # parameters are read at steps 0 and 5: step 3's update is caught in step 4's forward
            opt.param_groups[0]["lr"] = float("inf")

    mon = tools.torch_train(tools.torch_mlp(), steps=6, before=inf_lr)
    f = tools.first(mon, "nonfinite")
    assert (f.layer, f.step, f.phase) == ("0", 3, "update")


def test_an_update_seen_in_the_next_forward_is_told_by_the_parameters_values_not_the_outputs(tools):
    def poison(step, model, opt):
        if step == 3:   # as if step 2's update had left every weight of the first layer at +inf
            with torch.no_grad():
                model[0].weight.fill_(float("inf"))

    mon = tools.torch_train(tools.torch_mlp(), steps=5, before=poison)
    f = tools.first(mon, "nonfinite")
    assert (f.layer, f.step, f.phase) == ("0", 2, "update")
    assert f.value == float("inf") and "were inf when step 3 began" in f.message   # its outputs: NaN (inf - inf)


def test_update_seen_by_the_regular_parameter_check(tools):
    def inf_lr(step, model, opt):
        if step == 0:
            opt.param_groups[0]["lr"] = float("inf")

    mon = tools.torch_train(tools.torch_mlp(), steps=2, before=inf_lr)
    f = tools.first(mon, "nonfinite")
    assert (f.layer, f.step, f.phase) == ("0", 0, "update")


def test_nested_module_with_a_functional_op_is_blamed_for_it(tools):
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(16, 32), nn.Linear(32, 32)

        def forward(self, x):
            return self.fc2(torch.log(self.fc1(x)))     # the log is the block's own op

    model = nn.Sequential(Block(), nn.ReLU(), nn.Linear(32, 4))
    mon = tools.torch_train(model, steps=2)
    f = tools.first(mon, "nonfinite")
    assert (f.layer, f.step, f.phase) == ("0", 0, "forward")


def test_numpy_forward_overflow_in_float16(tools):
    model = tools.numpy_mlp(nnn.Dense(32, 32), width=32, dtype=np.float16)
    model[2].weight.data[...] = 1e4        # 32 ReLU outputs of ~0.5 times 1e4 each: beyond float16's 65504
    mon = tools.numpy_train(model, steps=2, dtype=np.float16)
    f = tools.first(mon, "nonfinite")
    assert (f.layer, f.step, f.phase) == ("2", 0, "forward")
    o = tools.first(mon, "overflow")
    assert (o.layer, o.step, o.phase, o.severity) == ("2", 0, "forward", "error")


def test_numpy_update_and_backward(tools):
    def inf_lr(step, model, opt):
        if step == 2:
            for group in opt.param_groups:
                group["lr"] = float("inf")

    mon = tools.numpy_train(tools.numpy_mlp(), steps=4, before=inf_lr)
    f = tools.first(mon, "nonfinite")
    assert (f.layer, f.step, f.phase) == ("0", 2, "update")


def test_in_place_activation_after_the_origin(tools):
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(inplace=True), Log(), nn.Linear(32, 4))
    mon = tools.torch_train(model, steps=2)
    f = tools.first(mon, "nonfinite")
    assert (f.layer, f.step, f.phase) == ("2", 0, "forward")      # log(0) = -inf after the in-place ReLU
    assert f.value == float("-inf")
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(inplace=True), nn.Linear(32, 4))
    with torch.no_grad():
        model[0].weight.fill_(1e38)
        model[0].bias.fill_(1e38)
    mon = tools.torch_train(model, steps=1, lr=0.0)
    f = tools.first(mon, "nonfinite")
    assert (f.layer, f.phase) == ("0", "forward")


class NumpySqrt(nnn.Module):
    """sqrt(x * (x > 0)) for nnstab.nn: finite forward, NaN backward at the zeros (inf * 0)."""

    def forward(self, x):
        self._saved = (x, x > 0)
        return np.sqrt(x * (x > 0))

    def _backward(self, g):
        x, m = self._saved
        return g * m * 0.5 / np.sqrt(x * m)       # where x <= 0: 0 * (0.5 / 0) = 0 * inf = NaN


def test_numpy_backward_origin(tools):
    nnn.manual_seed(0)
    model = nnn.Sequential(nnn.Dense(16, 32), NumpySqrt(), nnn.Dense(32, 4))
    mon = tools.numpy_train(model, steps=2)
    f = tools.first(mon, "nonfinite")
    assert (f.layer, f.step, f.phase) == ("1", 0, "backward")


class Reciprocal(nn.Module):
    def forward(self, x):
        return 1.0 / x


@pytest.mark.parametrize("last", [nn.LogSoftmax(1), nn.ReLU()])
def test_a_model_ending_in_a_pass_through_module_still_has_its_outputs_looked_at(last):
    # the model's output is the pass-through module's; its finiteness is that of the layer before it
    from nnstab import watch

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), Reciprocal(), nn.Linear(4, 3), last)
    mon = watch(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in range(4):
        if step == 2:      # a zero first layer: 1 / 0 = inf in '1' on this step
            with torch.no_grad():
                model[0].weight.zero_()
                model[0].bias.zero_()
        loss = model(torch.randn(8, 4)).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        mon.step(loss=loss)
    mon.close()
    first = next(f for f in mon.findings if f.kind == "nonfinite")
    assert (first.layer, first.step, first.phase) == ("1", 2, "forward"), str(first)
