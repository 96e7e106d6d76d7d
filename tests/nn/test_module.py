"""Module tree, names, modes, dtypes and hooks behave as torch.nn.Module's do for the same structure."""
from collections import OrderedDict

import numpy as np
import pytest
import torch

from nnstab import nn


def nested_pair():
    """The same nested structure in nnstab.nn and torch.nn (names from positions, dict keys and attributes)."""

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Dense(4, 4, dtype=np.float64, rng=0)
            self.act = nn.Tanh()

        def forward(self, x):
            return self.act(self.fc(x))

        def _backward(self, g):
            return self.fc.backward(self.act.backward(g))

    class TBlock(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(4, 4, dtype=torch.float64)
            self.act = torch.nn.Tanh()

        def forward(self, x):
            return self.act(self.fc(x))

    ours = nn.Sequential(OrderedDict([
        ("inp", nn.Dense(3, 4, dtype=np.float64, rng=1)),
        ("body", nn.Sequential(Block(), nn.ReLU(), Block())),
        ("head", nn.Dense(4, 2, dtype=np.float64, rng=2)),
    ]))
    theirs = torch.nn.Sequential(OrderedDict([
        ("inp", torch.nn.Linear(3, 4, dtype=torch.float64)),
        ("body", torch.nn.Sequential(TBlock(), torch.nn.ReLU(), TBlock())),
        ("head", torch.nn.Linear(4, 2, dtype=torch.float64)),
    ]))
    return ours, theirs


def test_named_modules_and_parameters_are_torchs():
    ours, theirs = nested_pair()
    assert [n for n, _ in ours.named_modules()] == [n for n, _ in theirs.named_modules()]
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in theirs.named_parameters()]
    assert [n for n, _ in ours.named_children()] == [n for n, _ in theirs.named_children()]
    assert [type(m).__name__ for m in ours.body.children()] == ["Block", "ReLU", "Block"]


def test_a_nested_model_matches_torch_end_to_end(torch_check):
    ours, theirs = nested_pair()
    torch_check(ours, theirs, np.random.default_rng(0).standard_normal((5, 3)), np.float64)


def test_shared_module_is_listed_once_as_in_torch():
    shared = nn.Dense(2, 2)
    model = nn.Sequential(shared, nn.ReLU(), shared)
    tshared = torch.nn.Linear(2, 2)
    tmodel = torch.nn.Sequential(tshared, torch.nn.ReLU(), tshared)
    assert [n for n, _ in model.named_modules()] == [n for n, _ in tmodel.named_modules()]
    assert [n for n, _ in model.named_parameters()] == [n for n, _ in tmodel.named_parameters()]


def test_parameters_know_their_names_and_reassignment_updates_the_registry():
    layer = nn.Dense(3, 2)
    assert [p.name for p in layer.parameters()] == ["weight", "bias"]
    layer.bias = None
    assert [n for n, _ in layer.named_parameters()] == ["weight"]


def test_train_and_eval_reach_every_module():
    model = nn.Sequential(nn.Dense(2, 2), nn.Sequential(nn.Dropout(0.5), nn.BatchNorm(2)))
    model.eval()
    assert not any(m.training for m in model.modules())
    model.train()
    assert all(m.training for m in model.modules())


@pytest.mark.parametrize("dtype", [np.float64, np.float16, np.float32])
def test_to_dtype_converts_parameters_and_buffers(dtype):
    model = nn.Sequential(nn.Dense(3, 4), nn.BatchNorm(4), nn.ReLU(), nn.Dense(4, 2))
    assert model.to(dtype) is model
    assert {p.dtype for p in model.parameters()} == {np.dtype(dtype)}
    assert model[1].running_var.dtype == dtype and model[1].num_batches_tracked.dtype == np.int64
    out = model(np.ones((5, 3), dtype=dtype))
    assert out.dtype == dtype
    model.backward(np.ones_like(out))
    assert {p.grad.dtype for p in model.parameters()} == {np.dtype(dtype)}


def test_float16_model_overflows_to_inf_without_crashing():
    layer = nn.Dense(4, 1, dtype=np.float16, rng=0)
    layer.weight.data[:] = 300.0
    with np.errstate(over="ignore"):   # NumPy would warn; the overflow itself is the point
        out = layer(np.full((1, 4), 100.0, dtype=np.float16))   # 4 * 30000 > float16 max 65504
    assert np.isinf(out).all()


def test_zero_grad_sets_none_or_zeros():
    layer = nn.Dense(2, 2)
    layer(np.ones((1, 2), np.float32))
    layer.backward(np.ones((1, 2), np.float32))
    layer.zero_grad(set_to_none=False)
    np.testing.assert_array_equal(layer.weight.grad, 0)
    layer.zero_grad()
    assert layer.weight.grad is None


# -- hooks: the same events and replacement rules as torch -------------------------------------------------
def record_hooks(model, log, replace_output=None, replace_grad_input=None):
    handles = []
    for name, m in model.named_modules():
        def fwd(mod, inputs, output, name=name):
            assert isinstance(inputs, tuple)
            log.append(("forward", name))
            return replace_output(name, output) if replace_output else None

        def bwd(mod, grad_input, grad_output, name=name):
            assert isinstance(grad_input, tuple) and isinstance(grad_output, tuple)
            log.append(("backward", name))
            return replace_grad_input(name, grad_input) if replace_grad_input else None

        handles += [m.register_forward_hook(fwd), m.register_full_backward_hook(bwd)]
    return handles


def small_pair():
    ours = nn.Sequential(nn.Dense(3, 4, dtype=np.float64, rng=0), nn.Tanh(), nn.Dense(4, 2, dtype=np.float64, rng=1))
    theirs = torch.nn.Sequential(torch.nn.Linear(3, 4, dtype=torch.float64), torch.nn.Tanh(),
                                 torch.nn.Linear(4, 2, dtype=torch.float64))
    with torch.no_grad():
        for (_, p), (_, q) in zip(ours.named_parameters(), theirs.named_parameters()):
            q.copy_(torch.from_numpy(p.data))
    return ours, theirs


def run_both(ours, theirs, x):
    out = ours(x)
    ours.backward(np.ones_like(out))
    xt = torch.from_numpy(x).requires_grad_(True)   # requires grad: torch then fires every backward hook
    out_t = theirs(xt)
    out_t.backward(torch.ones_like(out_t))
    return out, out_t


def test_hooks_fire_in_torchs_order():
    ours, theirs = small_pair()
    log_ours, log_theirs = [], []
    record_hooks(ours, log_ours)
    record_hooks(theirs, log_theirs)
    run_both(ours, theirs, np.ones((2, 3)))
    assert log_ours == log_theirs


def test_hook_return_values_replace_output_and_grad_input_as_in_torch(agrees):
    ours, theirs = small_pair()
    # a replaced output counts as the module's own: torch's equivalent passes gradients straight through it
    double_output = lambda name, out: out * 2 if name == "1" else None                  # noqa: E731
    double_output_t = lambda name, out: out + out.detach() if name == "1" else None     # noqa: E731
    halve_grad = lambda name, gi: tuple(g * 0.5 for g in gi) if name == "2" else None   # noqa: E731
    record_hooks(ours, [], double_output, halve_grad)
    record_hooks(theirs, [], double_output_t, halve_grad)
    out, out_t = run_both(ours, theirs, np.random.default_rng(0).standard_normal((2, 3)))
    agrees(out, out_t, np.float64, "output")
    for (_, p), (_, q) in zip(ours.named_parameters(), theirs.named_parameters()):
        agrees(p.grad, q.grad, np.float64, "parameter gradient")


def test_removing_handles_restores_the_hook_dictionaries():
    ours, _ = small_pair()
    before = {name: (dict(m._forward_hooks), dict(m._backward_hooks)) for name, m in ours.named_modules()}
    log = []
    handles = record_hooks(ours, log)
    assert all(m._forward_hooks for m in ours.modules())
    for h in handles:
        h.remove()
        h.remove()   # a second remove is harmless, as in torch
    after = {name: (dict(m._forward_hooks), dict(m._backward_hooks)) for name, m in ours.named_modules()}
    assert after == before
    run_both(ours, small_pair()[1], np.ones((1, 3)))
    assert log == []


def test_backward_pre_hook_can_replace_grad_output():
    layer = nn.Dense(2, 2, dtype=np.float64, rng=0)
    layer.register_full_backward_pre_hook(lambda m, go: (go[0] * 0,))
    layer(np.ones((1, 2)))
    np.testing.assert_array_equal(layer.backward(np.ones((1, 2))), 0)
    np.testing.assert_array_equal(layer.weight.grad, 0)
