"""The stable forms of every pattern, on the very inputs that put the unstable ones in their losing range,
produce no finding at all (nor do formulas that only look alike)."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import nnstab

X = torch.tensor([[0.0, -200.0, -50.0], [100.0, 0.0, 1.0], [-100.0, -101.0, -99.0], [5.0, 5.0, 5.0]],
                 requires_grad=True)
Y = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
LABELS = torch.tensor([1, 0, 2, 1])


def shifted_softmax(x):
    m = x.max(dim=1, keepdim=True).values
    e = torch.exp(x - m)
    return e / e.sum(dim=1, keepdim=True)


def shifted_logsumexp(x):
    m = x.amax(dim=1, keepdim=True)
    return (m + torch.log(torch.exp(x - m).sum(dim=1, keepdim=True))).squeeze(1)


STABLE = {
    "torch.log_softmax": lambda x: torch.log_softmax(x, dim=1),
    "F.log_softmax": lambda x: F.log_softmax(x, dim=1),
    "nn.LogSoftmax": lambda x: nn.LogSoftmax(dim=1)(x),
    "F.logsigmoid": lambda x: F.logsigmoid(x),
    "F.logsigmoid(-x)": lambda x: F.logsigmoid(-x),
    "F.softplus": lambda x: F.softplus(x),
    "nn.Softplus": lambda x: nn.Softplus()(x),
    "torch.softmax": lambda x: torch.softmax(x, dim=1),
    "nn.Softmax": lambda x: nn.Softmax(dim=1)(x),
    "shifted manual softmax": shifted_softmax,
    "shifted manual logsumexp": shifted_logsumexp,
    "torch.logsumexp": lambda x: torch.logsumexp(x, dim=1),
    "BCEWithLogitsLoss": lambda x: nn.BCEWithLogitsLoss()(x, Y),
    "F.binary_cross_entropy_with_logits": lambda x: F.binary_cross_entropy_with_logits(x, Y),
    "F.cross_entropy": lambda x: F.cross_entropy(x, LABELS),
    "nll_loss(log_softmax)": lambda x: F.nll_loss(F.log_softmax(x, dim=1), LABELS),
    "std + eps": lambda x: (x - x.mean(1, keepdim=True)) / (x.std(1, keepdim=True) + 1e-5),
    "rsqrt(var + eps)": lambda x: (x - x.mean(1, keepdim=True)) * torch.rsqrt(x.var(1, keepdim=True) + 1e-5),
    "sqrt(var + eps)": lambda x: (x - x.mean(1, keepdim=True)) / torch.sqrt(x.var(1, keepdim=True) + 1e-5),
    "F.layer_norm": lambda x: F.layer_norm(x, (3,)),
    "nn.LayerNorm": lambda x: nn.LayerNorm(3)(x),
    "nn.BatchNorm1d": lambda x: nn.BatchNorm1d(3)(x),
    "nnstab.log_softmax": lambda x: nnstab.log_softmax(x, axis=1),
    "nnstab.softmax": lambda x: nnstab.softmax(x, axis=1),
    "nnstab.logsumexp": lambda x: nnstab.logsumexp(x, axis=1),
    "nnstab.log_sigmoid": lambda x: nnstab.log_sigmoid(x),
    "nnstab.softplus": lambda x: nnstab.softplus(x),
    "nnstab.cross_entropy": lambda x: nnstab.cross_entropy(x, LABELS, axis=1),
    "nnstab.binary_cross_entropy_with_logits": lambda x: nnstab.binary_cross_entropy_with_logits(x, Y),
    # look-alikes that are not the patterns
    "log of a non-probability plus eps": lambda x: torch.log(x.abs() + 1e-8),
    "log(p + 1)": lambda x: torch.log(torch.softmax(x, dim=1) + 1.0),
    "log of a scaled sigmoid": lambda x: torch.log(2 * torch.sigmoid(x)),
    "log(exp(x))": lambda x: torch.log(torch.exp(x)),
    "exp(x) + 2": lambda x: torch.log(torch.exp(x) + 2),
    "x / x.sum()": lambda x: x / x.sum(dim=1, keepdim=True),
    "x / x.var()": lambda x: x / x.var(dim=1, keepdim=True),
}


@pytest.mark.parametrize("name", list(STABLE))
def test_the_stable_equivalent_gives_no_finding(kit, name):
    fn = STABLE[name]
    linter = kit.lint(lambda: fn(X).sum().backward())
    assert linter.findings == []


def test_an_in_place_change_ends_a_tag(kit):
    def code():
        p = torch.softmax(X, dim=1)
        q = p * 1.0
        q.mul_(0.5).add_(0.25)      # q is no longer a softmax output
        return torch.log(q)

    assert kit.lint(code).findings == []


def test_an_in_place_log_of_a_softmax_is_still_found(kit):
    def code():
        p = torch.softmax(X.detach(), dim=1)
        return p.log_()  # <log_>

    f = kit.only(kit.lint(code).findings)
    assert f.details["pattern"] == "log_softmax" and f.details["line"] == kit.marker_line(__file__, "log_")
