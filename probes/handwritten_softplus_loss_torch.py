"""A hand-written logistic loss log(1 + exp(-margin)) rounds every confident example's loss to 0 (torch).

Setting: a small ReLU MLP classifies two Gaussian clusters of readings in their raw, unnormalised
units (three times the unit scale), trained with Adam. The logistic loss is written out by hand from
its textbook form, loss = log(1 + exp(-margin)) with margin = (2y - 1) * z, and the run is watched
with `nnstab.watch(model, lint=True)`.

What goes wrong: the classes separate and the margins keep growing. Past a margin of 16.6,
exp(-margin) < float32's eps / 2, so 1 + exp(-margin) rounds to exactly 1 and the example's loss is
exactly 0 instead of exp(-margin) (about 1e-8 and below): the first examples get there around step
17, and after 150 steps a third of the data set has a loss of exactly 0. The per-example losses that
loss-based methods read (hard-example mining, loss weighting, curriculum by loss, a log-likelihood
evaluation) are lost: the confident examples all tie at 0. Nothing is NaN and training proceeds, so
the statistics checks see a healthy run; only the formula shows the damage: the lint reports
log(1 + exp(x)) with the share of its inputs in that range, the source line and the replacement.
(A margin below -88.7, a confidently wrong example, would overflow exp to inf: the other end of the
same formula's losing range.)

The fix (--fixed): torch.nn.functional.softplus(-margin) (or nnstab.softplus, or
F.binary_cross_entropy_with_logits on the logits): softplus(x) = max(x, 0) + log1p(exp(-|x|)) keeps
exp(-margin) itself for large margins (log1p(t) = t there) and never overflows.
"""
EXPECTED = {"kinds": ["unstable_formula"], "framework": "torch"}

import torch
import torch.nn.functional as F

import nnstab
from _probekit import blobs, finish, minibatches, parse_args, to_float, torch_setup, watch_options

RAW_SCALE = 3.0    # unnormalised readings: the margins pass 16.6 within twenty steps


def logistic_loss(z, y, fixed: bool):
    margin = (2 * y - 1) * z
    if fixed:
        return F.softplus(-margin).mean()                    # exp(-margin) kept for large margins
    return torch.log(1 + torch.exp(-margin)).mean()          # 1 + 1e-8 == 1 in float32: loss 0


def main(argv=None) -> dict:
    args = parse_args(__doc__, argv, default_steps=150, quick_steps=40)
    torch_setup(0)
    x, y = blobs(1024, 20, 2, spread=1.0, seed=0)
    x, y = torch.tensor(RAW_SCALE * x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32)
    model = torch.nn.Sequential(torch.nn.Linear(20, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    with nnstab.watch(model, lint=True, **watch_options(args)) as monitor:
        for idx in minibatches(len(y), 64, args.steps):
            idx = torch.as_tensor(idx)
            loss = logistic_loss(model(x[idx]).squeeze(1), y[idx], args.fixed)
            opt.zero_grad()
            loss.backward()
            opt.step()
            monitor.step(loss=loss)
    with torch.no_grad():
        z = model(x).squeeze(1)
        margin = (2 * y - 1) * z
        per_example = F.softplus(-margin) if args.fixed else torch.log(1 + torch.exp(-margin))   # on all data
        lost = (per_example == 0).float().mean().item()
        accuracy = ((z > 0).float() == y).float().mean().item()
    return finish(monitor, args, final_loss=to_float(loss), accuracy=accuracy, share_of_losses_rounded_to_0=lost,
                  min_margin=margin.min().item(), max_margin=margin.max().item())


if __name__ == "__main__":
    main()
