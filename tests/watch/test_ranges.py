"""overflow and underflow: values at the top and bottom of their format, in their own dtype and as float16/bfloat16 risks."""
import numpy as np
import pytest
import torch
from torch import nn

import nnstab.nn as nnn

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


def test_float32_activations_beyond_float16_range_are_an_amp_risk(tools):
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4))
    with torch.no_grad():
        model[2].weight.mul_(1e5)
    mon = tools.torch_train(model, steps=3, lr=1e-9)
    f = [f for f in mon.findings if f.kind == "overflow" and f.phase == "forward"][0]
    assert (f.layer, f.step, f.severity, f.threshold) == ("2", 0, "info", 65504.0)
    assert f.value > 65504 and f.details["format"] == "float16"
    assert not [f for f in mon.findings if f.kind in ("overflow", "nonfinite") and f.severity == "error"]


def test_float32_overflow_to_inf_is_an_error_at_the_layer(tools):
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4))
    with torch.no_grad():
        model[2].weight.fill_(1e38)      # 32 positive inputs times 1e38: beyond 3.4e38
    mon = tools.torch_train(model, steps=2)
    f = tools.first(mon, "overflow")
    assert (f.layer, f.step, f.phase, f.severity) == ("2", 0, "forward", "error")
    assert f.value == float("inf")


def test_huge_but_finite_sums_are_not_mistaken_for_overflow(tools):
    # every output of layer 2 is about 4e36: finite, though their sum is beyond float32's range
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32))
    with torch.no_grad():
        model[0].weight.abs_()
        model[0].bias.fill_(1.0)
        model[2].weight.fill_(1e35)
        model[2].bias.zero_()
    mon = tools.torch_train(model, steps=1, lr=0.0, loss_fn=lambda out, y: out[0, 0] * 0)
    assert not [f for f in mon.findings if f.kind in ("nonfinite", "overflow") and f.severity == "error"]


def test_float16_near_its_largest_value_is_a_warning(tools):
    model = tools.numpy_mlp(nnn.Dense(32, 32), dtype=np.float16)
    model[2].weight.data[...] = 700      # 32 ReLU outputs of ~0.5 times 700: ~1e4, within 8x of 65504
    mon = tools.numpy_train(model, steps=1, lr=0.0, dtype=np.float16)
    f = [f for f in mon.findings if f.kind == "overflow" and f.layer == "2"][0]
    assert (f.step, f.phase, f.severity) == (0, "forward", "warning")
    assert f.threshold == pytest.approx(65504 / 8)


def test_subnormal_float32_activations_are_an_underflow_warning(tools):
    model = tools.torch_mlp()
    with torch.no_grad():
        model[0].weight.mul_(1e-39)
        model[0].bias.zero_()
    mon = tools.torch_train(model, steps=2)
    f = [f for f in mon.findings if f.kind == "underflow" and f.severity == "warning"][0]
    assert (f.layer, f.step, f.phase) == ("0", 0, "forward")
    assert f.value == 1.0


def test_gradients_that_float16_would_flush_are_an_info_for_amp(tools):
    # a loss scaled down by 1e-12 makes every gradient ~1e-14: below float16's 2^-25
    mon = tools.torch_train(tools.torch_mlp(), steps=2,
                            loss_fn=lambda out, y: nn.functional.cross_entropy(out, y) * 1e-12)
    f = [f for f in mon.findings if f.kind == "underflow" and f.phase == "backward"]
    assert f and all(g.severity == "info" and g.step == 0 for g in f)
    assert {g.layer for g in f} == {"0", "2"}
    assert f[0].details["format"] == "float16"


def test_numpy_float16_gradients_underflowing_in_their_own_dtype(tools):
    loss = nnn.MSELoss()
    model = tools.numpy_mlp(dtype=np.float16)
    y = np.zeros((32, 4), dtype=np.float16)
    x = (np.random.default_rng(0).standard_normal((32, 16)) * 1e-3).astype(np.float16)
    mon = tools.numpy_train(model, steps=1, lr=0.0, x=x, y=y, loss_fn=loss, dtype=np.float16)
    f = [f for f in mon.findings if f.kind == "underflow" and f.severity == "warning"]
    assert f, [str(g) for g in mon.findings]
    assert f[0].step == 0 and f[0].details["dtype"] == "float16"
