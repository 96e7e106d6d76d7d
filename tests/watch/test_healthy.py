"""Well-initialised networks training normally give no warning and no error (infos are allowed: notes on AMP)."""
import torch
from torch import nn

import nnstab.nn as nnn


def blobs(n=256, dim=16, classes=4, seed=0):
    """Separable Gaussian blobs: a learnable task, so training really moves the weights."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=g) * 2
    y = torch.randint(0, classes, (n,), generator=g)
    return centres[y] + torch.randn(n, dim, generator=g), y


def problems(monitor):
    return [str(f) for f in monitor.findings if f.severity != "info"]


def test_mlp_with_adam(tools):
    torch.manual_seed(0)
    x, y = blobs()
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(),
                          nn.Linear(64, 4))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    mon = tools.torch_train(model, steps=80, opt=opt, x=lambda s: x[(s * 32) % 256:(s * 32) % 256 + 32],
                            y=lambda s: y[(s * 32) % 256:(s * 32) % 256 + 32])
    assert problems(mon) == []
    losses = [r["loss"] for r in mon.records if r["type"] == "step"]
    assert losses[-1] < losses[0] / 2          # it did learn: the absence of findings is not an idle run


def test_cnn_with_sgd_momentum(tools):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(16, 4))
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 3, 12, 12, generator=g)
    y = (x[:, 0].mean((1, 2)) > 0).long() + 2 * (x[:, 1].mean((1, 2)) > 0).long()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    mon = tools.torch_train(model, steps=40, opt=opt, x=lambda s: x[(s * 16) % 64:(s * 16) % 64 + 16],
                            y=lambda s: y[(s * 16) % 64:(s * 16) % 64 + 16])
    assert problems(mon) == []


def test_nnstab_nn_mlp(tools):
    nnn.manual_seed(0)
    x, y = blobs()
    model = nnn.Sequential(nnn.Dense(16, 64), nnn.ReLU(), nnn.Dense(64, 64), nnn.Tanh(), nnn.Dense(64, 4))
    x, y = x.numpy(), y.numpy()
    mon = tools.numpy_train(model, steps=60, lr=0.05, x=lambda s: x[(s * 32) % 256:(s * 32) % 256 + 32],
                            y=lambda s: y[(s * 32) % 256:(s * 32) % 256 + 32])
    assert problems(mon) == []
    losses = [r["loss"] for r in mon.records if r["type"] == "step"]
    assert losses[-1] < losses[0] / 2
