"""The measuring paths agree: host (read at once, measured at the forward's end) and accelerator (kept on
the device, gathered in one transfer), and reading every step or every n steps."""
import torch
from torch import nn

from nnstab.watch import watch
from nnstab.watch.adapters.torch import TorchAdapter


class Log(nn.Module):
    def forward(self, x):
        return torch.log(x)


def run(model_fn, steps, monkeypatch=None, device_path=False, **options):
    if device_path:      # pretend the model lives on an accelerator: nothing is read before the step's end
        monkeypatch.setattr(TorchAdapter, "accelerated", lambda self: True)
    model = model_fn()
    torch.manual_seed(1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    x, y = torch.randn(16, 8), torch.randint(0, 3, (16,))
    mon = watch(model, **options)
    for _ in range(steps):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        mon.step(loss=loss)
    mon.close()
    if device_path:
        monkeypatch.undo()
    steps = [{k: v for k, v in r.items() if k != "time"} for r in mon.records if r["type"] == "step"]
    return steps, [(f.kind, f.layer, f.step, f.phase, f.severity, f.count) for f in mon.findings]


def healthy():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 3))


def broken():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), Log(), nn.Linear(16, 3))


def same(a, b):
    """Step records equal up to float rounding (the device path sums in float64)."""
    assert len(a) == len(b)
    for ra, rb in zip(a, b):
        assert ra.keys() == rb.keys() and ra["layers"].keys() == rb["layers"].keys()
        for layer, sa in ra["layers"].items():
            sb = rb["layers"][layer]
            assert sa.keys() == sb.keys(), layer
            for k in sa:
                x, y = sa[k], sb[k]
                assert x == y or abs(x - y) <= 1e-5 * max(abs(x), abs(y)) or (x != x and y != y), (layer, k, x, y)


def test_device_path_gives_the_host_path_results(monkeypatch):
    # the accelerator measures every layer and the parameters every step: ask the host path for the same
    every_step = {"nonfinite": {"params_every": 1}, "exploding_gradient": {"layers_every": 1}}
    for model_fn in (healthy, broken):
        host = run(model_fn, 12, checks=every_step)
        device = run(model_fn, 12, monkeypatch, device_path=True, checks=every_step)
        same(host[0], device[0])
        assert host[1] == device[1]
    assert ("nonfinite", "1", 0, "forward", "error", 12) in run(broken, 12)[1]


class SqrtOfPositive(nn.Module):
    def forward(self, x):
        return torch.sqrt(x * (x > 0))     # finite forward, NaN gradient at 0


def backward_broken():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), SqrtOfPositive(), nn.Linear(16, 3))


def test_sentinels_find_what_measuring_every_layer_finds():
    full = {"exploding_gradient": {"layers_every": 1}}
    for model_fn in (healthy, broken, backward_broken):
        assert run(model_fn, 12)[1] == run(model_fn, 12, checks=full)[1]
    assert ("nonfinite", "3", 0, "backward", "error", 12) in run(backward_broken, 12)[1]


def test_reading_every_n_steps_changes_nothing_but_when():
    for model_fn in (healthy, broken):
        a, fa = run(model_fn, 13, every=1)
        b, fb = run(model_fn, 13, every=5)
        same(a, b)
        assert fa == fb
