"""Adam at lr 0.1: the first large steps push ReLU units negative for every input, and they never return (torch).

Setting: a ReLU MLP (two hidden layers of 128) classifying 10 Gaussian clusters with Adam, at a
learning rate of 0.1 - a value that is fine for plain SGD on this problem but 100 times Adam's usual
1e-3.

What goes wrong: Adam's step is ~lr per weight whatever the gradient's size, so each of the first
steps moves every weight of a unit by ~0.1 in the direction its gradient sign says, all together.
For many units of the second hidden layer this drives the pre-activation w . h + b below zero for
every example in the data: the unit outputs 0 everywhere, ReLU's derivative is 0 there, no gradient
ever reaches its weights again, and it is dead for good. Within ten steps a large share of the layer
is gone; the network keeps training with the capacity that is left and ends up well short of what
the same architecture reaches.

The fix (--fixed): Adam's usual learning rate, 1e-3: steps are small next to the weights (std ~0.05),
units drift instead of jumping, and none dies.
"""
EXPECTED = {"kinds": ["dead_relu"], "framework": "torch"}

import torch
import torch.nn.functional as F

import nnstab
from _probekit import blobs, finish, minibatches, parse_args, to_float, torch_setup, watch_options

LR, FIXED_LR = 0.1, 1e-3


def main(argv=None) -> dict:
    args = parse_args(__doc__, argv, default_steps=200, quick_steps=50)
    torch_setup(0)
    x, y = blobs(2048, 32, 10, spread=0.7, seed=3)
    x, y = torch.tensor(x, dtype=torch.float32), torch.tensor(y)
    model = torch.nn.Sequential(torch.nn.Linear(32, 128), torch.nn.ReLU(), torch.nn.Linear(128, 128), torch.nn.ReLU(),
                                torch.nn.Linear(128, 10))
    opt = torch.optim.Adam(model.parameters(), lr=FIXED_LR if args.fixed else LR)
    with nnstab.watch(model, **watch_options(args)) as monitor:
        for idx in minibatches(len(y), 128, args.steps):
            idx = torch.as_tensor(idx)
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            monitor.step(loss=loss)
    with torch.no_grad():
        hidden = model[:4](x)
        dead = (hidden.amax(0) <= 0).float().mean().item()
        accuracy = (model(x).argmax(1) == y).float().mean().item()
    return finish(monitor, args, final_loss=to_float(loss), accuracy=accuracy, dead_share_layer_3=dead)


if __name__ == "__main__":
    main()
