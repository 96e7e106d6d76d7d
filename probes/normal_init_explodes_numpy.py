"""N(0, 1) weights in a deep ReLU network: gradients of 1e8 from the first step (nnstab.nn).

Setting: the nnstab.nn twin of normal_init_explodes_torch: an 8-layer ReLU MLP, 256 units wide,
classifying 10 Gaussian clusters with Adam, every Dense layer built with init="normal" (N(0, 1)).

What goes wrong: each layer multiplies the scale of its input by sqrt(fan_in / 2) = 11.3 (fan-in
256, half the ReLUs off), so after eight layers the logits are ~1e9. The cross-entropy gradient at
the logits is bounded by 1, but it is multiplied by the same weights on the way back and by the huge
activations at every weight: parameter gradients of ~1e8. Adam rescales each step to ~lr, so the
run does not blow up (with plain SGD the first step would); it just cannot shrink weights that are
a thousand times too large in 150 steps of size 1e-3: the loss starts at ~1e8 and is still in the
tens of thousands at the end, against ~1e-3 for the fixed run.

The fix (--fixed): init="he", N(0, 2/fan_in): each layer preserves the variance of its input, the
logits start O(1), and gradients are O(1) at every layer.
"""
EXPECTED = {"kinds": ["exploding_gradient"], "framework": "nnstab.nn"}

import numpy as np

import nnstab
import nnstab.nn as nn
from _probekit import blobs, finish, minibatches, parse_args, watch_options

DEPTH, WIDTH = 8, 256


def mlp(in_features: int, classes: int, fixed: bool) -> nn.Sequential:
    init = "he" if fixed else "normal"
    layers, width = [], in_features
    for _ in range(DEPTH - 1):
        layers += [nn.Dense(width, WIDTH, init=init), nn.ReLU()]
        width = WIDTH
    layers.append(nn.Dense(width, classes, init=init))
    return nn.Sequential(*layers)


def main(argv=None) -> dict:
    args = parse_args(__doc__, argv, default_steps=150, quick_steps=40)
    nn.manual_seed(0)
    x, y = blobs(2048, 32, 10, spread=1.0, seed=1)
    x = x.astype(np.float32)
    model = mlp(32, 10, args.fixed)
    loss_fn = nn.CrossEntropyLoss()
    opt = nn.optim.Adam(model.parameters(), lr=1e-3)
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
