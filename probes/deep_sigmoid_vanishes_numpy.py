"""Eight sigmoid layers: each backward step multiplies the gradient by at most 1/4 (nnstab.nn).

Setting: an 8-layer sigmoid MLP in nnstab.nn (64 units, Xavier initialisation, which is the right
scale for sigmoid), classifying 4 Gaussian clusters with SGD and momentum.

What goes wrong: the derivative of the sigmoid is s(1 - s) <= 1/4, reached only at 0. Backpropagation
multiplies the gradient by W^T diag(s'(z)) at every layer; with variance-preserving weights the norm
shrinks by ~s' ~ 0.2 per layer, so the first layers get ~0.2^7 ~ 1e-5 of the last layer's gradient.
They barely move: the network trains as if only its last layers existed, on the nearly random
features the frozen early layers compute, and the loss stalls at chance, log 4, where the same
network with ReLU reaches ~99% accuracy.

The fix (--fixed): ReLU activations with He initialisation: ReLU's derivative is exactly 1 on the
active half, He's variance 2/fan_in compensates for the inactive half, and the gradient norm is
preserved from the last layer to the first.
"""
EXPECTED = {"kinds": ["vanishing_gradient"], "framework": "nnstab.nn"}

import numpy as np

import nnstab
import nnstab.nn as nn
from _probekit import blobs, finish, minibatches, parse_args, watch_options

DEPTH, WIDTH = 8, 64


def mlp(in_features: int, classes: int, fixed: bool) -> nn.Sequential:
    activation, init = (nn.ReLU, "he") if fixed else (nn.Sigmoid, "xavier")
    layers, width = [], in_features
    for _ in range(DEPTH - 1):
        layers += [nn.Dense(width, WIDTH, init=init), activation()]
        width = WIDTH
    layers.append(nn.Dense(width, classes, init=init))
    return nn.Sequential(*layers)


def main(argv=None) -> dict:
    args = parse_args(__doc__, argv, default_steps=200, quick_steps=50)
    nn.manual_seed(0)
    x, y = blobs(2048, 16, 4, spread=1.0, seed=4)
    x = x.astype(np.float32)
    model = mlp(16, 4, args.fixed)
    loss_fn = nn.CrossEntropyLoss()
    opt = nn.optim.SGD(model.parameters(), lr=0.005, momentum=0.9)
    with nnstab.watch(model, **watch_options(args)) as monitor:
        for idx in minibatches(len(y), 128, args.steps):
            loss = loss_fn(model(x[idx]), y[idx])
            model.zero_grad()
            model.backward(loss_fn.backward())
            opt.step()
            monitor.step(loss=loss)
    accuracy = float(np.mean(model(x).argmax(1) == y))
    return finish(monitor, args, final_loss=loss, accuracy=accuracy)


if __name__ == "__main__":
    main()
