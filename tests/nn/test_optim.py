"""Optimiser trajectories equal torch.optim's over 20 steps (float64, relative error <= 1e-10)."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nnstab import nn
from nnstab.nn import optim

STEPS = 20
TORCH_OPTIM = {optim.SGD: torch.optim.SGD, optim.AdaGrad: torch.optim.Adagrad,
               optim.RMSProp: torch.optim.RMSprop, optim.Adam: torch.optim.Adam}
SHAPES = [(3, 4), (4,), (2, 2, 3)]


def trajectories(ours_cls, hyper, steps=STEPS, seed=0):
    """Run both optimisers on f(p) = sum(c p^2 / 2 + sin(3 p)) from the same start; yield (ours, torch) each step.

    The curvature c differs per entry and sin adds non-convexity, so moments and accumulators differ
    across coordinates and the whole update rule is exercised.
    """
    rng = np.random.default_rng(seed)
    starts = [rng.standard_normal(s) for s in SHAPES]
    curv = [rng.uniform(0.1, 3.0, s) for s in SHAPES]
    ours = [nn.Parameter(s.copy()) for s in starts]
    theirs = [torch.tensor(s, requires_grad=True) for s in starts]
    opt, topt = ours_cls(ours, **hyper), TORCH_OPTIM[ours_cls](theirs, **hyper)
    for _ in range(steps):
        opt.zero_grad()
        for p, c in zip(ours, curv):
            p.accumulate_grad(c * p.data + 3 * np.cos(3 * p.data))
        opt.step()
        topt.zero_grad()
        sum((torch.from_numpy(c) * q * q / 2 + torch.sin(3 * q)).sum() for q, c in zip(theirs, curv)).backward()
        topt.step()
        yield ours, theirs


def max_rel_err(ours, theirs):
    return max(np.max(np.abs(p.data - q.detach().numpy())) / np.max(np.abs(q.detach().numpy()))
               for p, q in zip(ours, theirs))


CASES = [
    (optim.SGD, dict(lr=0.05)),
    (optim.SGD, dict(lr=0.05, momentum=0.9)),
    (optim.SGD, dict(lr=0.05, momentum=0.9, dampening=0.3, weight_decay=0.01)),
    (optim.SGD, dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.1)),
    (optim.AdaGrad, dict()),
    (optim.AdaGrad, dict(lr=0.1, lr_decay=0.01, weight_decay=0.05, initial_accumulator_value=0.2)),
    (optim.RMSProp, dict()),
    (optim.RMSProp, dict(lr=0.01, alpha=0.9, momentum=0.5, centered=True, weight_decay=0.01)),
    (optim.RMSProp, dict(lr=0.005, momentum=0.8)),
    (optim.Adam, dict()),
    (optim.Adam, dict(lr=0.05, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.02)),
    (optim.Adam, dict(lr=0.05, amsgrad=True)),
]


@pytest.mark.parametrize("cls,hyper", CASES, ids=[f"{c.__name__}-{h}" for c, h in CASES])
def test_trajectory_equals_torch_optim(cls, hyper):
    errs = [max_rel_err(o, t) for o, t in trajectories(cls, hyper)]
    assert max(errs) <= 1e-10, f"step {int(np.argmax(errs))}: relative error {max(errs):.3g}"


@settings(max_examples=20)
@given(cls=st.sampled_from(list(TORCH_OPTIM)), lr=st.sampled_from([1e-3, 0.01, 0.1]),
       weight_decay=st.sampled_from([0.0, 0.01]), momentum=st.sampled_from([0.0, 0.5, 0.9]),
       flag=st.booleans(), beta=st.sampled_from([0.5, 0.9]))
def test_trajectories_equal_torch_for_any_hyperparameters(cls, lr, weight_decay, momentum, flag, beta):
    hyper = dict(lr=lr, weight_decay=weight_decay)
    if cls is optim.SGD:
        hyper.update(momentum=momentum, nesterov=flag and momentum > 0)
    elif cls is optim.RMSProp:
        hyper.update(momentum=momentum, centered=flag, alpha=beta)
    elif cls is optim.Adam:
        hyper.update(amsgrad=flag, betas=(beta, 0.999))
    elif cls is optim.AdaGrad:
        hyper.update(lr_decay=0.01 if flag else 0.0)
    errs = [max_rel_err(o, t) for o, t in trajectories(cls, hyper, seed=int(lr * 1000))]
    assert max(errs) <= 1e-10


def test_defaults_are_torchs():
    p = [nn.Parameter(np.zeros(2))]
    t = [torch.zeros(2, requires_grad=True)]
    for ours_cls, torch_cls in TORCH_OPTIM.items():
        ours_defaults = ours_cls(p).param_groups[0]
        theirs = torch_cls(t).param_groups[0]
        for key, value in ours_defaults.items():
            if key != "params":
                assert theirs[key] == value, f"{ours_cls.__name__}.{key}: {value} vs torch {theirs[key]}"


def test_sgd_positional_order_is_the_apis():
    group = optim.SGD([nn.Parameter(np.zeros(1))], 0.1, 0.9, True, 0.01).param_groups[0]
    assert (group["lr"], group["momentum"], group["nesterov"], group["weight_decay"]) == (0.1, 0.9, True, 0.01)


def test_parameters_without_gradient_are_left_alone():
    a, b = nn.Parameter(np.ones(2)), nn.Parameter(np.ones(2))
    a.grad = np.ones(2)
    optim.Adam([a, b], lr=0.1).step()
    assert not np.array_equal(a.data, np.ones(2))
    np.testing.assert_array_equal(b.data, np.ones(2))


def test_param_groups_carry_their_own_learning_rate():
    a, b = nn.Parameter(np.ones(1)), nn.Parameter(np.ones(1))
    opt = optim.SGD([{"params": [a]}, {"params": [b], "lr": 0.5}], lr=0.1)
    a.grad, b.grad = np.ones(1), np.ones(1)
    opt.step()
    np.testing.assert_allclose([a.data[0], b.data[0]], [0.9, 0.5])


def test_float32_parameters_stay_float32():
    p = nn.Parameter(np.ones(3, dtype=np.float32))
    p.grad = np.full(3, 0.5, dtype=np.float32)
    for cls in TORCH_OPTIM:
        cls([p], lr=0.1).step()
    assert p.data.dtype == np.float32


def test_bad_hyperparameters_are_refused():
    p = [nn.Parameter(np.zeros(1))]
    with pytest.raises(ValueError, match="lr must be >= 0"):
        optim.SGD(p, lr=-1)
    with pytest.raises(ValueError, match="Nesterov"):
        optim.SGD(p, lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match="empty parameter list"):
        optim.Adam([])
    with pytest.raises(TypeError, match="model.parameters()"):
        optim.Adam([np.zeros(2)])
