"""Sigmoid units fed by N(0, 1) weights over 1024 inputs sit at 0 or 1, where they cannot learn (torch).

Setting: a 2-hidden-layer sigmoid MLP classifying 10 Gaussian clusters in 1024 dimensions (e.g. the
pixels of a 32x32 image, standardised) with SGD and momentum; the hidden layers' weights are drawn
from N(0, 1), the "standard normal" initialisation of many first attempts.

What goes wrong: a pre-activation sums 1024 products of unit-variance inputs and unit-variance
weights: its standard deviation is sqrt(1024) = 32. The sigmoid is within 0.01 of 0 or 1 for
|z| > 4.6, so a first-layer unit is saturated for ~9 examples in 10, and its derivative s(1 - s) is
~1e-3 to 1e-14 there: averaged over a batch, ~1/20 of its peak 1/4. The units act as on/off
switches, the gradient reaching the first layer's weights is cut twentyfold, and training crawls:
after 50 steps the network is at ~65% accuracy where the fixed one is at 100%.

The fix (--fixed): Xavier (Glorot) initialisation, weight variance 2 / (fan_in + fan_out): the
pre-activations are O(1), on the sigmoid's sensitive range, and every layer trains.
"""
EXPECTED = {"kinds": ["saturation"], "framework": "torch"}

import torch
import torch.nn.functional as F

import nnstab
from _probekit import blobs, finish, minibatches, parse_args, to_float, torch_setup, watch_options


def mlp(fixed: bool) -> torch.nn.Sequential:
    model = torch.nn.Sequential(torch.nn.Linear(1024, 128), torch.nn.Sigmoid(), torch.nn.Linear(128, 128),
                                torch.nn.Sigmoid(), torch.nn.Linear(128, 10))
    for layer in model:
        if isinstance(layer, torch.nn.Linear):
            if fixed:
                torch.nn.init.xavier_normal_(layer.weight)
            else:
                torch.nn.init.normal_(layer.weight, 0.0, 1.0)
            torch.nn.init.zeros_(layer.bias)
    return model


def main(argv=None) -> dict:
    args = parse_args(__doc__, argv, default_steps=200, quick_steps=50)
    torch_setup(0)
    x, y = blobs(2048, 1024, 10, spread=0.3, seed=6)
    x = (x - x.mean(0)) / x.std(0)                                   # standardised: the inputs are not the problem
    x, y = torch.tensor(x, dtype=torch.float32), torch.tensor(y)
    model = mlp(args.fixed)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    with nnstab.watch(model, **watch_options(args)) as monitor:
        for idx in minibatches(len(y), 128, args.steps):
            idx = torch.as_tensor(idx)
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            monitor.step(loss=loss)
    with torch.no_grad():
        accuracy = (model(x).argmax(1) == y).float().mean().item()
    return finish(monitor, args, final_loss=to_float(loss), accuracy=accuracy)


if __name__ == "__main__":
    main()
