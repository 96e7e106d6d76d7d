"""Two monitors on two models in one process keep to their own model."""
import math

import pytest
import torch
from torch import nn

from nnstab.watch import watch


def net():
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))


def hooked(model) -> bool:
    return any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks
               for m in model.modules())


def train_step(model, opt, monitor, x, y):
    opt.zero_grad()
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    monitor.step(loss=loss)
    return loss


def test_a_nan_in_model_b_is_found_by_b_alone_and_each_close_restores_only_its_model():
    torch.manual_seed(0)
    a, b = net(), net()
    opt_a, opt_b = torch.optim.SGD(a.parameters(), lr=0.05), torch.optim.SGD(b.parameters(), lr=0.05)
    mon_a, mon_b = watch(a), watch(b)
    x, y = torch.randn(32, 16), torch.randint(0, 4, (32,))
    bad = x.clone()
    bad[0, 0] = math.nan
    for step in range(6):                        # alternate: a step of A, then a step of B
        train_step(a, opt_a, mon_a, x, y)
        train_step(b, opt_b, mon_b, bad if step == 3 else x, y)
    assert mon_a.findings == []
    found = [f for f in mon_b.findings if f.kind == "nonfinite"]
    assert found and min(f.step for f in found) == 3
    losses_a = [r["loss"] for r in mon_a.records if r["type"] == "step"]
    assert len(losses_a) == 6 and all(math.isfinite(v) for v in losses_a)

    mon_a.close()
    assert not hooked(a) and hooked(b)           # closing A leaves B watched
    train_step(b, opt_b, mon_b, x, y)            # B's monitor goes on
    assert mon_b.steps == 7
    mon_b.close()
    assert not hooked(b)


def test_watching_a_watched_model_again_is_a_clear_error_and_leaves_the_first_monitor_working():
    model = net()
    first = watch(model)
    with pytest.raises(RuntimeError, match="already watched by another monitor.*close"):
        watch(model)
    train_step(model, torch.optim.SGD(model.parameters(), lr=0.05), first, torch.randn(8, 16),
               torch.randint(0, 4, (8,)))
    assert first.steps == 1 and len([r for r in first.records if r["type"] == "step"]) == 1
    first.close()
    assert not hooked(model)
    watch(model).close()                         # free again once closed
