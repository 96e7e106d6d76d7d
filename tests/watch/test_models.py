"""Real models: nesting, several inputs and outputs, dicts, a module used twice, frozen parameters,
evaluation passes between steps; and close() leaves every hook dictionary as it was."""
import numpy as np
import pytest
import torch
from torch import nn

import nnstab.nn as nnn
from nnstab.watch import watch

HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
              "_forward_hooks_with_kwargs", "_forward_hooks_always_called", "_forward_pre_hooks_with_kwargs",
              "_state_dict_hooks", "_state_dict_pre_hooks", "_load_state_dict_pre_hooks",
              "_load_state_dict_post_hooks")


class TwoHeads(nn.Module):
    """Two inputs, a shared trunk used twice, a frozen embedding, and a dict of two outputs."""

    def __init__(self):
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(16, 32), nn.ReLU())
        self.frozen = nn.Linear(8, 16)
        self.frozen.requires_grad_(False)
        self.heads = nn.ModuleDict({"a": nn.Linear(32, 4), "b": nn.Linear(32, 1)})

    def forward(self, x, z):
        h = self.trunk(x) + self.trunk(self.frozen(z))       # the trunk runs twice per step
        return {"a": self.heads["a"](h), "b": (self.heads["b"](h), h.mean())}


def snapshot(model):
    state = {}
    for name, m in model.named_modules():
        for d in HOOK_DICTS:
            if hasattr(m, d):
                state[(name, d)] = dict(getattr(m, d))
    for name, p in model.named_parameters():
        state[(name, "tensor hooks")] = (p._backward_hooks, getattr(p, "_post_accumulate_grad_hooks", None))
    return state


def train_two_heads(model, steps, mon=None):
    torch.manual_seed(0)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05)
    x, z, y = torch.randn(8, 16), torch.randn(8, 8), torch.randint(0, 4, (8,))
    for s in range(steps):
        opt.zero_grad()
        out = model(x, z)
        loss = nn.functional.cross_entropy(out["a"], y) + out["b"][0].pow(2).mean()
        loss.backward()
        opt.step()
        if mon is not None:
            mon.step(loss=loss)
        model.eval()
        with torch.no_grad():          # evaluation between steps: not a training step
            model(x, z)
        model.train()
    return loss


def test_complex_model_is_watched_and_restored():
    model = TwoHeads()
    before = snapshot(model)
    mon = watch(model)
    assert snapshot(model) != before                # hooks are attached
    train_two_heads(model, steps=4, mon=mon)
    mon.close()
    assert snapshot(model) == before                # ... and all gone, nothing else touched
    steps = [r for r in mon.records if r["type"] == "step"]
    assert [r["step"] for r in steps] == [0, 1, 2, 3]     # evaluation passes are not steps
    layers = steps[0]["layers"]
    assert {"trunk.0", "heads.a", "heads.b", "frozen"} <= set(layers)
    assert "param_grad_norm" not in layers["frozen"]            # frozen: no gradient to judge
    assert layers["heads.b"]["grad_out_norm"] > 0
    assert [str(f) for f in mon.findings if f.severity != "info"] == []


def test_evaluation_passes_do_not_mix_into_training_statistics():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4))
    mon = watch(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    x, y = torch.randn(8, 16), torch.randint(0, 4, (8,))
    huge = torch.full((8, 16), 1e30)
    for _ in range(2):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        model(huge)                          # training mode, grad enabled, but no backward: an evaluation
        with torch.no_grad():
            model(torch.full((8, 16), float("nan")))
        mon.step(loss=loss)
    mon.close()
    first = [r for r in mon.records if r["type"] == "step"][0]["layers"]["0"]
    assert first["act_absmax"] < 100 and first["act_nonfinite"] == 0.0     # not 1e30, not NaN
    assert mon.findings == []


def test_watching_a_watched_model_is_an_error_until_closed():
    model = nn.Linear(3, 2)
    mon = watch(model)
    with pytest.raises(RuntimeError, match="already watched.*close"):
        watch(model)
    mon.close()
    watch(model).close()                      # fine once the first monitor is closed


def test_close_twice_and_step_after_close():
    mon = watch(nn.Linear(3, 2))
    mon.close()
    mon.close()
    with pytest.raises(RuntimeError, match="after monitor.close"):
        mon.step(loss=1.0)


def test_nnstab_nn_hooks_restored():
    nnn.manual_seed(0)
    model = nnn.Sequential(nnn.Dense(4, 8), nnn.ReLU(), nnn.Sequential(nnn.Dense(8, 8), nnn.Tanh()), nnn.Dense(8, 2))
    before = {(n, d): dict(getattr(m, d)) for n, m in model.named_modules()
              for d in ("_forward_hooks", "_backward_hooks", "_backward_pre_hooks")}
    mon = watch(model)
    loss_fn = nnn.MSELoss()
    x, y = np.ones((4, 4), np.float32), np.zeros((4, 2), np.float32)
    loss = loss_fn(model(x), y)
    model.backward(loss_fn.backward())
    mon.step(loss=loss)
    mon.close()
    after = {(n, d): dict(getattr(m, d)) for n, m in model.named_modules()
             for d in ("_forward_hooks", "_backward_hooks", "_backward_pre_hooks")}
    assert after == before
    assert set(mon.records[1]["layers"]) >= {"0", "2.0", "3"}


def test_unknown_models_are_refused_with_the_accepted_types():
    with pytest.raises(TypeError, match="torch.nn.Module or an nnstab.nn.Module"):
        watch(object())


def test_a_dropped_monitor_takes_its_hooks_away():
    import gc

    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
    watch(model)                       # never closed, never kept
    gc.collect()
    assert not any(m._forward_hooks for m in model.modules())
    watch(model).close()               # and the model can be watched again


def test_nnstab_watch_is_callable_however_it_was_imported():
    import nnstab
    import nnstab.watch.finding  # noqa: F401  (makes nnstab.watch the package, as any submodule import does)

    for _ in range(2):
        mon = nnstab.watch(nn.Linear(2, 2), every=1)
        assert type(mon).__name__ == "Monitor"
        mon.close()
    from nnstab import watch as w

    w(nn.Linear(2, 2)).close()


class _Output:
    """A model output the adapter cannot look into (not a tensor, tuple, dict or dataclass)."""

    def __init__(self, logits):
        self.logits = logits


class _Sqrt(nn.Module):
    shift = 0.0

    def forward(self, x):
        return torch.sqrt(x.abs() - self.shift)      # NaN once the shift passes |x|


@pytest.mark.parametrize("wrap", ["dataclass", "object"])
def test_a_nan_is_found_at_its_layer_whatever_the_model_returns(wrap):
    import dataclasses

    @dataclasses.dataclass
    class Output:
        logits: torch.Tensor
        extra: tuple = ()

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.sqrt, self.head = nn.Linear(8, 8), _Sqrt(), nn.Linear(8, 2)

        def forward(self, x):
            h = self.head(self.sqrt(self.fc(x)))
            return Output(h) if wrap == "dataclass" else _Output(h)

    torch.manual_seed(0)
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    mon = watch(model)
    for step in range(4):     # step 0 measures every layer; later steps rely on the model's outputs
        model.sqrt.shift = 1e9 if step == 2 else 0.0
        opt.zero_grad()
        model(torch.randn(4, 8)).logits.sum().backward()
        opt.step()
        mon.step()
    mon.close()
    f = [f for f in mon.findings if f.kind == "nonfinite"][0]
    assert (f.layer, f.step, f.phase) == ("sqrt", 2, "forward")
