"""A healthy baseline: a well-initialised ReLU MLP trained with Adam (torch).

Setting: a 4-layer ReLU MLP (torch's default Linear initialisation, standardised inputs) classifying
10 Gaussian clusters with Adam at lr 1e-3 and batch size 128: the recipe every other scenario in
this gallery departs from in one way.

What goes wrong: nothing. Activations stay O(1) through the depth, gradient norms are of the same
order at every layer, no unit is dead or saturated, and the loss falls steadily. The monitor should
report nothing at warning or above; it is here to show what a clean report looks like and to keep
the probes honest about false alarms.

The fix (--fixed): nothing to fix; --fixed runs the same recipe, so both reports are clean.
"""
EXPECTED = {"kinds": [], "framework": "torch"}

import torch
import torch.nn.functional as F

import nnstab
from _probekit import blobs, finish, minibatches, parse_args, to_float, torch_setup, watch_options


def main(argv=None) -> dict:
    args = parse_args(__doc__, argv, default_steps=200, quick_steps=50)
    torch_setup(0)
    x, y = blobs(2048, 32, 10, spread=0.7, seed=5)
    x = (x - x.mean(0)) / x.std(0)
    x, y = torch.tensor(x, dtype=torch.float32), torch.tensor(y)
    model = torch.nn.Sequential(
        torch.nn.Linear(32, 128), torch.nn.ReLU(),
        torch.nn.Linear(128, 128), torch.nn.ReLU(),
        torch.nn.Linear(128, 64), torch.nn.ReLU(),
        torch.nn.Linear(64, 10),
    )
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
