"""Weights of std 0.01 in a deep tanh network: the signal and its gradient shrink ~9x per layer (torch).

Setting: a 10-layer tanh MLP, 128 units wide, classifying 10 Gaussian clusters with SGD
(momentum 0.9); every weight is drawn from N(0, 0.01^2), the "small random numbers" of old tutorials.

What goes wrong: a layer with fan-in n and weight std s scales its input by s * sqrt(n) =
0.01 * sqrt(128) = 0.11; tanh is the identity near 0, so nothing restores the scale. The backward
pass multiplies by the transposed weights, the same factor per layer: the first layers receive
gradients ~0.11^9 ~ 1e-9 of the last layer's. Those layers do not learn at all, the last one sees
inputs of ~1e-9, and the loss stays at log(10) = 2.30 for the whole run.

The fix (--fixed): Xavier (Glorot) initialisation, variance 2 / (fan_in + fan_out) = 1 / n here:
each layer preserves the scale of the signal forward and of the gradient backward, and the same
SGD run trains.
"""
EXPECTED = {"kinds": ["vanishing_gradient"], "framework": "torch"}

import torch
import torch.nn.functional as F

import nnstab
from _probekit import blobs, finish, minibatches, parse_args, to_float, torch_setup, watch_options

DEPTH, WIDTH = 10, 128
SMALL_STD = 0.01  # the "small random numbers" init: 0.01 * sqrt(128) = 0.11 gain per layer


def mlp(in_features: int, classes: int, fixed: bool) -> torch.nn.Sequential:
    layers, width = [], in_features
    for _ in range(DEPTH - 1):
        layers += [torch.nn.Linear(width, WIDTH), torch.nn.Tanh()]
        width = WIDTH
    layers.append(torch.nn.Linear(width, classes))
    model = torch.nn.Sequential(*layers)
    for layer in model:
        if isinstance(layer, torch.nn.Linear):
            if fixed:
                torch.nn.init.xavier_normal_(layer.weight, gain=torch.nn.init.calculate_gain("tanh"))
            else:
                torch.nn.init.normal_(layer.weight, 0.0, SMALL_STD)
            torch.nn.init.zeros_(layer.bias)
    return model


def main(argv=None) -> dict:
    args = parse_args(__doc__, argv, default_steps=200, quick_steps=50)
    torch_setup(0)
    x, y = blobs(2048, 32, 10, spread=1.0, seed=2)
    x, y = torch.tensor(x, dtype=torch.float32), torch.tensor(y)
    model = mlp(32, 10, args.fixed)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
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
