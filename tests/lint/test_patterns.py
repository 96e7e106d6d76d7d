"""Every unstable formula is found where it runs: its module, its line in this file, the share of its inputs
in the losing range (checked against the same range computed in float64), and the stable replacement."""
import math
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from torch import nn

F32 = torch.finfo(torch.float32)


class Scale(nn.Module):
    """A trainable layer that passes its input through exactly (weight 1)."""

    def __init__(self, n):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n))

    def forward(self, x):
        return x * self.weight


def net(n, head):
    return nn.Sequential(OrderedDict(body=Scale(n), head=head))


class LogSoftmax(nn.Module):
    def forward(self, h):
        return torch.log(torch.softmax(h, dim=1))  # <log_softmax>


class LogSigmoid(nn.Module):
    def forward(self, h):
        return torch.sigmoid(h).log()  # <log_sigmoid>


class LogOneMinusSigmoid(nn.Module):
    def forward(self, h):
        return torch.log(1 - torch.sigmoid(h))  # <log_one_minus_sigmoid>


class LogOnePlusExp(nn.Module):
    def forward(self, h):
        return torch.log(1 + torch.exp(h))  # <log_one_plus_exp>


class Log1pExp(nn.Module):
    def forward(self, h):
        return torch.log1p(torch.exp(h))  # <log1p_exp>


class NaiveSoftmax(nn.Module):
    def forward(self, h):
        e = torch.exp(h)
        return e / e.sum(dim=1, keepdim=True)  # <naive_softmax>


class LogSumExp(nn.Module):
    def forward(self, h):
        return torch.log(torch.exp(h).sum(dim=1))  # <log_sum_exp>


class LogPlusEps(nn.Module):
    def forward(self, h):
        return torch.log(F.softmax(h, dim=1) + 1e-6)  # <log_p_eps>


class LogClamp(nn.Module):
    def forward(self, h):
        return torch.log(torch.sigmoid(h).clamp(min=1e-6))  # <log_clamp>


class Standardize(nn.Module):
    def forward(self, h):
        return (h - h.mean(dim=1, keepdim=True)) / h.std(dim=1, keepdim=True)  # <div_std>


class StandardizeSqrtVar(nn.Module):
    def forward(self, h):
        return (h - h.mean(dim=1, keepdim=True)) / torch.sqrt(h.var(dim=1, keepdim=True))  # <div_sqrt_var>


class StandardizeRsqrt(nn.Module):
    def forward(self, h):
        return (h - h.mean(dim=1, keepdim=True)) * torch.rsqrt(h.var(dim=1, keepdim=True))  # <rsqrt_var>


def softmax64(x):
    return torch.softmax(x.double(), dim=1)


def sigmoid64(x):
    return torch.sigmoid(x.double())


# name, head, input (float32), expected number of consumed values in the losing range (from float64),
# formula, a word of the replacement
CASES = [
    ("log_softmax", LogSoftmax, [[0, -200, -50], [0, 1, 2], [0, -120, 3], [5, 5, 5]],
     lambda x: (softmax64(x) < F32.tiny).sum(), "log(softmax(x))", "log_softmax"),
    ("log_sigmoid", LogSigmoid, [[-100, -90, -10], [0, 10, 50]],
     lambda x: (sigmoid64(x) < F32.tiny).sum(), "log(sigmoid(x))", "logsigmoid(x)"),
    ("log_one_minus_sigmoid", LogOneMinusSigmoid, [[20, 17, 10], [0, -5, 3]],
     lambda x: (1 - sigmoid64(x) <= F32.eps).sum(), "log(1 - sigmoid(x))", "logsigmoid(-x)"),
    ("log_one_plus_exp", LogOnePlusExp, [[-30, -20, -5], [0, 50, 100]],
     lambda x: ((x.double() < math.log(F32.eps / 2)) | (x.double() > math.log(F32.max))).sum(),
     "log(1 + exp(x))", "softplus"),
    ("log1p_exp", Log1pExp, [[-30, -20, -5], [0, 50, 100]],
     lambda x: (x.double() > math.log(F32.max)).sum(), "log1p(exp(x))", "softplus"),
    ("naive_softmax", NaiveSoftmax, [[0, 1, 2], [100, 0, 1], [-100, -101, -99]],
     lambda x: ((x.double() > math.log(F32.max)) | (x.double() < math.log(F32.tiny))).sum(),
     "exp(x) / exp(x).sum(dim)", "torch.softmax"),
    ("log_sum_exp", LogSumExp, [[0, 1, 2], [100, 0, 0], [-100, -100, -100]],
     lambda x: (lambda s: (s > F32.max) | (s < F32.tiny))(x.double().exp().sum(1)).sum(),
     "log(exp(x).sum(dim))", "logsumexp"),
    ("log_p_eps", LogPlusEps, [[0, -20, -30], [0, 0, 0]],
     lambda x: (softmax64(x) < 1e-6).sum(), "log(p + eps)", "log_softmax"),
    ("log_clamp", LogClamp, [[-20, -14, -13], [0, 5, -1]],
     lambda x: (sigmoid64(x) <= 1e-6).sum(), "log(clamp(p, min=eps))", "logsigmoid(x)"),
    ("div_std", Standardize, [[1, 2, 3], [5, 5, 5], [1, 1, 1.001]],
     lambda x: (x.double().std(1) < math.sqrt(1e-5)).sum(), "x / x.std(dim)", "layer_norm"),
    ("div_sqrt_var", StandardizeSqrtVar, [[1, 2, 3], [5, 5, 5], [1, 1, 1.001]],
     lambda x: (x.double().std(1) < math.sqrt(1e-5)).sum(), "x / sqrt(var)", "std + eps"),
    ("rsqrt_var", StandardizeRsqrt, [[1, 2, 3], [5, 5, 5], [1, 1, 1.001]],
     lambda x: (x.double().var(1) < 1e-5).sum(), "rsqrt(var)", "std + eps"),
]
PATTERN_OF = {"log_clamp": "log_p_eps", "div_sqrt_var": "div_std", "rsqrt_var": "div_std"}


@pytest.mark.parametrize("name, head, values, expected, formula, replacement", CASES, ids=[c[0] for c in CASES])
def test_each_pattern_is_found_with_its_module_line_share_and_replacement(
        kit, name, head, values, expected, formula, replacement):
    x = torch.tensor(values, dtype=torch.float32)
    model = net(x.shape[1], head())
    linter = kit.lint(lambda: model(x).sum(), model)
    f = kit.only(linter.findings)
    n_bad = int(expected(x))
    consumed = x.shape[0] if name in ("log_sum_exp", "div_std", "div_sqrt_var", "rsqrt_var") else x.numel()
    assert n_bad > 0  # the input reaches the losing range
    assert f.kind == "unstable_formula" and f.details["pattern"] == PATTERN_OF.get(name, name)
    assert (f.layer, f.phase, f.step, f.count) == ("head", "forward", 0, 1)
    assert f.severity == "warning"
    assert f.details["observed"] == consumed and f.details["in_range"] == n_bad
    assert f.value == pytest.approx(n_bad / consumed)
    assert f.details["file"] == __file__ and f.details["line"] == kit.marker_line(__file__, name)
    assert f.details["formula"] == formula and formula in f.message
    assert replacement in f.details["replacement"] and replacement in f.message
    assert f.details["code"] in open(__file__).read().splitlines()[f.details["line"] - 1]


@pytest.mark.parametrize("name, head, values, expected, formula, replacement", CASES, ids=[c[0] for c in CASES])
def test_a_pattern_on_harmless_inputs_is_info_with_a_zero_share(
        kit, name, head, values, expected, formula, replacement):
    x = torch.tensor([[0.5, -0.25, 1.5], [1.0, 2.0, -1.0]])
    assert int(expected(x)) == 0
    model = net(3, head())
    f = kit.only(kit.lint(lambda: model(x).sum(), model).findings)
    assert f.severity == "info" and f.value == 0.0 and f.details["in_range"] == 0
    assert f.details["line"] == kit.marker_line(__file__, name)


class Classifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = Scale(4)
        self.out = nn.Sigmoid()

    def forward(self, x):
        return self.out(self.body(x))


def test_sigmoid_then_bce_loss_is_found_in_the_loss(kit):
    model = Classifier()
    x = torch.tensor([[-100.0, -3.0, 0.0, 20.0]])
    y = torch.tensor([[0.0, 1.0, 1.0, 0.0]])
    loss_fn = nn.BCELoss()
    f = kit.only(kit.lint(lambda: loss_fn(model(x), y), model).findings)  # <sigmoid_bce>
    bad = ((sigmoid64(x) < F32.tiny) | (sigmoid64(x) > 1 - F32.eps)).sum()
    assert int(bad) == 2
    assert f.details["pattern"] == "sigmoid_bce" and (f.layer, f.phase, f.severity) == ("", "loss", "warning")
    assert f.value == pytest.approx(2 / 4)
    assert f.details["line"] == kit.marker_line(__file__, "sigmoid_bce")
    assert "BCEWithLogitsLoss" in f.details["replacement"]
    assert f.details["op"] == "torch.nn.functional.binary_cross_entropy"
    assert f.details["input_layer"] == "out" and "its input from layer 'out'" in f.message


def test_hand_written_bce_reports_both_logs_on_its_line(kit):
    x = torch.tensor([-30.0, -2.0, 2.0, 30.0], requires_grad=True)
    y = torch.tensor([1.0, 0.0, 1.0, 0.0])

    def loss():
        p = torch.sigmoid(x)
        return -(y * torch.log(p + 1e-7) + (1 - y) * torch.log(1 - p + 1e-7)).mean()  # <hand_bce>

    f = kit.only(kit.lint(loss).findings)
    assert f.details["pattern"] == "log_p_eps" and f.count == 2   # two logs on one line: one finding, counted
    p = sigmoid64(x.detach())
    assert f.details["in_range"] == int((p < 1e-7).sum() + (1 - p < 1e-7).sum()) == 2
    assert f.details["line"] == kit.marker_line(__file__, "hand_bce")
    assert "logsigmoid" in f.details["replacement"]


def test_the_range_follows_the_dtype(kit):
    x = torch.tensor([-20.0, -5.0, 0.0])
    fs = {}
    for dtype in (torch.float32, torch.float16):
        h = x.to(dtype)
        fs[dtype] = kit.only(kit.lint(lambda: torch.log(torch.sigmoid(h))).findings)
    assert fs[torch.float32].severity == "info"
    # sigmoid(-20) = 2e-9 is normal in float32, below float16's smallest normal 6.1e-5 (it is 0 there)
    assert fs[torch.float16].severity == "warning" and fs[torch.float16].value == pytest.approx(1 / 3)
    assert fs[torch.float16].details["dtype"] == "float16"


def test_selections_and_views_of_a_softmax_keep_their_origin(kit):
    x = torch.tensor([[0.0, -150.0, 1.0], [2.0, 0.0, -200.0]])
    y = torch.tensor([1, 2])

    def nll():
        p = torch.softmax(x, dim=1)
        a = -torch.log(p.gather(1, y[:, None])).mean()  # <gather>
        b = -p[torch.arange(2), y].log().mean()  # <index>
        return a + b

    found = kit.lint(nll).findings
    assert sorted(f.details["line"] for f in found) == [kit.marker_line(__file__, "gather"),
                                                       kit.marker_line(__file__, "index")]
    assert all(f.details["pattern"] == "log_softmax" and f.value == 1.0 and f.severity == "warning"
               for f in found)


def test_nested_modules_are_named_by_their_qualified_name(kit):
    model = nn.Sequential(OrderedDict(encoder=nn.Sequential(Scale(3), nn.Sequential(LogSoftmax()))))
    f = kit.only(kit.lint(lambda: model(torch.zeros(2, 3)), model).findings)
    assert f.layer == "encoder.1.0" and f.details["op"] == "torch.log"
