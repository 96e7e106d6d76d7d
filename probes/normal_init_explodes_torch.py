"""N(0, 1) weights in a deep ReLU network: every layer multiplies the signal by ~11 (torch).

Setting: an 8-layer ReLU MLP, 256 units wide, classifying 10 Gaussian clusters with Adam; every
weight is drawn from N(0, 1) ("just use randn") instead of a fan-in-scaled distribution.

What goes wrong: a layer with fan-in n and weights of variance 1 multiplies the variance of its
input by n/2 after the ReLU (half the units are zero), i.e. the scale by sqrt(256/2) = 11.3. After
eight layers activations are ~1e8 and the logits ~1e9, so the cross-entropy gradients - bounded at
the logits - are multiplied by the same factor on the way back: parameter gradients of 1e8 and more.
Adam normalises its steps, so nothing turns into NaN, and as the classes are well separated even
the argmax ends up right; but each step moves weights by ~lr while they would have to shrink a
thousandfold: the loss starts at ~1e8 and is still in the tens of thousands after 150 steps (the
fixed run: ~1e-3), the model is absurdly overconfident, and an optimiser that does not normalise
its steps (plain SGD) would have turned every weight into inf or NaN at the first one.

The fix (--fixed): He (Kaiming) initialisation, N(0, 2/fan_in): the variance is preserved through
every ReLU layer, activations and gradients stay O(1), and the same Adam run reaches ~99%.
"""
EXPECTED = {"kinds": ["exploding_gradient"], "framework": "torch"}

import torch
import torch.nn.functional as F

import nnstab
from _probekit import blobs, finish, minibatches, parse_args, to_float, torch_setup, watch_options

DEPTH, WIDTH = 8, 256


def mlp(in_features: int, classes: int, fixed: bool) -> torch.nn.Sequential:
    layers, width = [], in_features
    for _ in range(DEPTH - 1):
        layers += [torch.nn.Linear(width, WIDTH), torch.nn.ReLU()]
        width = WIDTH
    layers.append(torch.nn.Linear(width, classes))
    model = torch.nn.Sequential(*layers)
    for layer in model:
        if isinstance(layer, torch.nn.Linear):
            if fixed:
                torch.nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")   # var 2 / fan_in
            else:
                torch.nn.init.normal_(layer.weight, 0.0, 1.0)                       # var 1: x11 per layer
            torch.nn.init.zeros_(layer.bias)
    return model


def main(argv=None) -> dict:
    args = parse_args(__doc__, argv, default_steps=150, quick_steps=40)
    torch_setup(0)
    x, y = blobs(2048, 32, 10, spread=1.0, seed=1)
    x, y = torch.tensor(x, dtype=torch.float32), torch.tensor(y)
    model = mlp(32, 10, args.fixed)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
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
