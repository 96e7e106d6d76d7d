"""The Linter as a tool: it changes nothing the model computes, holds no tensor past its step, folds
repeats into one counted finding, reports per step, and leaves torch as it found it."""
import gc
import weakref
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules import module as nn_module

import nnstab
from nnstab.lint import PATTERNS, Linter


class Unstable(nn.Module):
    """Several patterns at once, between trainable layers."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 6)
        self.norm_scale = nn.Parameter(torch.ones(6))
        self.softmax = nn.Softmax(dim=1)

    def forward(self, x):
        h = self.fc(x)
        h = (h - h.mean(1, keepdim=True)) / h.std(1, keepdim=True) * self.norm_scale
        e = torch.exp(h)
        p = e / e.sum(1, keepdim=True)
        q = torch.log(self.softmax(h * 40) + 1e-9) + torch.log(1 + torch.exp(h * 30))
        return torch.log(p) + q + F.logsigmoid(h) + torch.log(torch.sigmoid(h))  # <many>


def model_and_data(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(OrderedDict(block=Unstable(), out=nn.Linear(6, 2)))
    x = torch.randn(16, 6) * 3
    return model, x


def train_step(model, x):
    out = model(x)
    loss = out.square().mean()
    model.zero_grad()
    loss.backward()
    return out.detach().clone(), [p.grad.clone() for p in model.parameters()]


def test_linting_never_changes_outputs_or_gradients_bit_for_bit():
    model, x = model_and_data()
    plain_out, plain_grads = train_step(model, x)
    with Linter(model) as linter:
        linted_out, linted_grads = train_step(model, x)
        linter.step()
    assert len(linter.findings) >= 5   # the patterns were seen, so the lint did its work on this step
    assert torch.equal(plain_out, linted_out)
    assert all(torch.equal(a, b) for a, b in zip(plain_grads, linted_grads))


def test_no_tensor_is_retained_after_the_step():
    model, x = model_and_data()
    refs = []
    hook = model.block.softmax.register_forward_hook(lambda m, i, o: refs.append(weakref.ref(o)))
    with Linter(model) as linter:
        out = model(x)
        assert len(linter.tags) > 0            # softmax, exp, std... outputs were tagged in the forward
        loss = out.sum()
        loss.backward()
        inputs = weakref.ref(x)
        del out, loss, x
        gc.collect()
        assert refs and refs[0]() is None      # the tag map held the softmax output weakly
        linter.step()
        assert len(linter.tags) == 0
    hook.remove()
    gc.collect()
    assert inputs() is None
    assert linter.findings                      # the findings survive, the tensors do not


def test_repeats_fold_into_one_counted_finding_and_each_step_reports_its_own():
    head = nn.Sequential(OrderedDict(fc=nn.Linear(3, 3)))
    calls = []

    def step(scale):
        for _ in range(2):
            torch.log(torch.softmax(head(torch.ones(2, 3)) * scale, dim=1))  # <repeat>
        calls.append(scale)

    with Linter(head) as linter:
        step(0.0)
        first = linter.step()
        with torch.no_grad():
            head.fc.weight.copy_(torch.tensor([[300.0, 0, 0], [0, 0, 0], [0, 0, 0]]))
        step(1.0)
        second = linter.step()
        step(0.0)
        third = linter.step()
    (a,), (b,), (c,) = first, second, third
    assert (a.step, a.count, a.severity, a.value) == (0, 2, "info", 0.0)
    assert (b.step, b.count, b.severity) == (1, 2, "warning") and b.value == pytest.approx(2 / 3)
    assert (c.step, c.severity) == (2, "info")
    (total,) = linter.findings
    assert total.count == 6 and total.severity == "warning"
    assert total.step == 1 and total.last_step == 2            # first step in range, last step seen
    assert total.value == pytest.approx(4 / 18)
    assert total.layer == ""                                    # the formula ran outside the model's forward
    assert total.phase == "loss"


def test_deferred_reading_gives_each_step_its_own_findings():
    with Linter() as linter:
        for scale in (0.0, 1000.0, 0.0):
            torch.log(torch.softmax(torch.tensor([[0.0, -1.0]]) * scale, 1))
            assert linter.step(read=False) == []     # counts stay on the device
        found = linter.read()
    assert [(f.step, f.severity, f.value) for f in found] == [(0, "info", 0.0), (1, "warning", 0.5),
                                                             (2, "info", 0.0)]
    assert linter.read() == [] and linter.steps == 3


def test_a_step_left_open_is_returned_by_close():
    linter = Linter().start()
    torch.log(torch.sigmoid(torch.zeros(3)))
    (left,) = linter.close()
    assert left.details["pattern"] == "log_sigmoid" and left.step == 0
    assert len(linter.findings) == 1


def test_close_restores_torch():
    before = (torch._C._len_torch_function_stack(), len(nn_module._global_forward_pre_hooks),
              len(nn_module._global_forward_hooks))
    with Linter() as linter:
        assert torch._C._len_torch_function_stack() == before[0] + 1
    assert (torch._C._len_torch_function_stack(), len(nn_module._global_forward_pre_hooks),
            len(nn_module._global_forward_hooks)) == before
    torch.log(torch.softmax(torch.zeros(2, 2), 1))
    assert linter.findings == []                # nothing seen once closed


def test_close_keeps_a_mode_pushed_after_the_linter():
    from torch.overrides import TorchFunctionMode

    class Counting(TorchFunctionMode):
        calls = 0

        def __torch_function__(self, func, types, args=(), kwargs=None):
            Counting.calls += 1
            return func(*args, **(kwargs or {}))

    depth = torch._C._len_torch_function_stack()
    linter = Linter().start()
    other = Counting()
    other.__enter__()
    try:
        linter.close()
        torch.zeros(1) + 1
        assert Counting.calls >= 1              # the later mode is still active
    finally:
        other.__exit__(None, None, None)
    assert torch._C._len_torch_function_stack() == depth


def test_patterns_option_and_argument_errors():
    with Linter(patterns=["log_sigmoid"]) as linter:
        torch.log(torch.softmax(torch.zeros(2, 2), 1))
        torch.log(torch.sigmoid(torch.zeros(2)))
    assert [f.details["pattern"] for f in linter.findings] == ["log_sigmoid"]
    with pytest.raises(ValueError, match="unknown lint pattern.*log_softmax"):
        Linter(patterns=["log_softmaxx"])
    with pytest.raises(TypeError, match="torch.nn.Module"):
        Linter(nnstab.nn.Dense(2, 2))
    assert "div_std" in PATTERNS and all(p.replacement for p in PATTERNS.values())


def test_findings_are_valid_records_for_the_log():
    from nnstab.watch.finding import Finding
    from nnstab.watch.log import to_json_line

    with Linter() as linter:
        torch.log(torch.softmax(torch.tensor([[0.0, -200.0]]), 1))
    (f,) = linter.findings
    assert Finding.from_dict(f.to_dict()) == f
    assert '"kind":"unstable_formula"' in to_json_line({"type": "finding", **f.to_dict()})


def test_alongside_a_monitor_only_the_users_formulas_are_reported():
    from nnstab.watch import watch

    def run(with_monitor):
        model, x = model_and_data()
        monitor = watch(model) if with_monitor else None
        with Linter(model) as linter:
            for _ in range(2):
                train_step(model, x)
                if monitor is not None:
                    monitor.step()
                linter.step()
        if monitor is not None:
            monitor.close()
        assert linter.errors == []
        return sorted((f.details["pattern"], f.details["line"], f.count) for f in linter.findings)

    alone, watched = run(False), run(True)
    assert watched == alone                     # the monitor's own statistics are not the user's formulas
    assert ("log_softmax", _line("many"), 2) in watched


def _line(name):
    lines = open(__file__).read().splitlines()
    (n,) = [i for i, line in enumerate(lines, start=1) if line.rstrip().endswith(f"# <{name}>")]
    return n


@pytest.mark.filterwarnings("ignore:Using `torch.compile\\(module\\)` when there are global hooks")
def test_a_compiled_model_runs_under_the_lint_unchanged():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.Tanh())
    compiled = torch.compile(model, backend="eager")
    x = torch.randn(3, 4) * 50
    expected = torch.log(torch.softmax(model(x), 1))
    with Linter(model) as linter:
        out = torch.log(torch.softmax(compiled(x), 1))  # <compiled>
        linter.step()
    assert torch.equal(out, expected) and linter.errors == []
    (f,) = linter.findings                      # the formula outside the compiled region is still seen
    assert f.details["pattern"] == "log_softmax" and f.details["line"] == _line("compiled")
