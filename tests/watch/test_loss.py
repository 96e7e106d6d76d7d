"""loss_divergence: a loss that grows by a factor within a window, or that is non-finite."""
import torch
from torch import nn


def quadratic(lr, steps):
    """Least squares on 4 points; a step size beyond 2/L makes every step overshoot by a growing amount."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 1, bias=False))
    return model, dict(steps=steps, lr=lr, x=torch.eye(4), y=torch.ones(4, 1), loss_fn=nn.functional.mse_loss)


def test_diverging_loss_is_a_warning_before_it_overflows(tools):
    model, kw = quadratic(lr=6.0, steps=20)
    mon = tools.torch_train(model, **kw)
    f = tools.first(mon, "loss_divergence")
    assert (f.layer, f.phase, f.severity) == ("", "loss", "warning")
    assert f.value > 4 and f.step <= 8


def test_converging_loss_is_not_divergence(tools):
    model, kw = quadratic(lr=0.5, steps=60)
    mon = tools.torch_train(model, **kw)
    assert not [f for f in mon.findings if f.kind == "loss_divergence"]


def test_noisy_but_healthy_loss_is_not_divergence(tools):
    torch.manual_seed(0)
    x, y = torch.randn(512, 16), torch.randint(0, 4, (512,))

    def batch(step, size=8):
        return x[(step * size) % 512:(step * size) % 512 + size]

    def labels(step, size=8):
        return y[(step * size) % 512:(step * size) % 512 + size]

    mon = tools.torch_train(tools.torch_mlp(), steps=60, lr=0.05, x=batch, y=labels)
    assert not [f for f in mon.findings if f.severity != "info"], [str(f) for f in mon.findings]


def test_nan_loss_is_an_error(tools):
    mon = tools.torch_train(tools.torch_mlp(), steps=3, loss_fn=lambda out, y: out.sum() * float("nan"))
    f = tools.first(mon, "loss_divergence")
    assert (f.layer, f.step, f.phase, f.severity, f.count) == ("", 0, "loss", "error", 3)


def feed_losses(losses):
    """A monitor that saw these losses, one per step (the model's own numbers are healthy)."""
    import nnstab

    model = nn.Linear(2, 1)
    mon = nnstab.watch(model, checks=["loss_divergence"])
    for loss in losses:
        model(torch.ones(4, 2)).sum().backward()
        model.zero_grad()
        mon.step(loss=float(loss))
    mon.close()
    return [f for f in mon.findings if f.kind == "loss_divergence"]


def test_a_trend_free_loss_is_not_divergence_however_noisy():
    # small batches near convergence: log(loss) spreads by ~1 from batch to batch, without any trend;
    # the lowest of fifty 5-loss medians is then beaten fourfold in most windows
    import numpy as np

    for seed in range(5):
        rng = np.random.default_rng(seed)
        losses = np.exp(rng.normal(np.log(3e-3), 1.0, 300))
        assert not feed_losses(losses), seed
        losses[rng.random(300) < 0.05] = 0.0    # float32 cross-entropy of a batch with huge margins: exactly 0
        assert not feed_losses(losses), seed


def test_a_noisy_loss_that_climbs_is_divergence_dated_where_it_began_to_grow():
    import numpy as np

    rng = np.random.default_rng(0)
    steps = np.arange(300)
    climb = np.where(steps < 100, 0.0, (steps - 100) * np.log(1.05))     # +5% a step from step 100 on
    found = feed_losses(np.exp(np.log(0.5) + climb + rng.normal(0, 0.5, 300)))
    assert found and found[0].severity == "warning"
    assert 100 < found[0].step < 200 and found[0].value > 4
