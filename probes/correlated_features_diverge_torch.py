"""lr 0.1 on sixteen strongly correlated features: one direction of the loss is too steep, and the loss climbs (torch).

Setting: linear regression (torch.nn.Linear(16, 1), MSE) by full-batch gradient descent at lr 0.1, a
learning rate that converges quickly on a few independent standardised features. Here the sixteen
standardised inputs are readings of related quantities, pairwise correlated at 0.6.

What goes wrong: the loss is a quadratic bowl with Hessian H = 2 E[x x^T]. Correlated features give
it one steep direction, the features' common component, with eigenvalue ~2 (1 + 15 * 0.6) = 20
(20.7 on this sample; every other direction has ~2 (1 - 0.6) = 0.8). Gradient descent multiplies the
error along an eigenvector by (1 - lr * lambda) per step, and is stable only for lr < 2 / lambda_max
= 0.097. At 0.1 the steep direction's error grows by |1 - 2.07| = 1.07 per step, alternating in sign:
the loss falls for a few steps (the other directions converge) and then rises exponentially, ~14% a step.
No NaN for hundreds of steps; the fit just gets worse each step.

The fix (--fixed): a learning rate below 2 / lambda_max: at 0.05 the steep direction contracts by
|1 - 1.03| = 0.03 per step and the loss decreases monotonically. (Whitening or PCA-decorrelating the
features removes the steep direction itself.)
"""
EXPECTED = {"kinds": ["loss_divergence"], "framework": "torch"}

import numpy as np
import torch
import torch.nn.functional as F

import nnstab
from _probekit import finish, parse_args, to_float, torch_setup, watch_options

RHO, FEATURES = 0.6, 16
LR, FIXED_LR = 0.1, 0.05      # lambda_max = 20.7 on this sample: the limit 2/lambda_max is 0.097


def readings(n: int = 512, seed: int = 0):
    rng = np.random.default_rng(seed)
    common = rng.normal(size=(n, 1))
    x = np.sqrt(RHO) * common + np.sqrt(1 - RHO) * rng.normal(size=(n, FEATURES))
    y = x @ rng.normal(0.0, 0.5, size=FEATURES) + 0.1 * rng.normal(size=n)
    return torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32)[:, None]


def main(argv=None) -> dict:
    args = parse_args(__doc__, argv, default_steps=200, quick_steps=60)
    torch_setup(0)
    x, y = readings()
    model = torch.nn.Sequential(torch.nn.Linear(FEATURES, 1))
    opt = torch.optim.SGD(model.parameters(), lr=FIXED_LR if args.fixed else LR)
    with nnstab.watch(model, **watch_options(args)) as monitor:
        for _ in range(args.steps):
            loss = F.mse_loss(model(x), y)                 # full batch: the curvature argument is exact
            opt.zero_grad()
            loss.backward()
            opt.step()
            monitor.step(loss=loss)
    phi = torch.cat([torch.ones(len(x), 1), x], dim=1).double()
    lam_max = torch.linalg.eigvalsh(2 * phi.T @ phi / len(x))[-1].item()
    return finish(monitor, args, final_loss=to_float(loss), lambda_max=lam_max, stable_lr_limit=2 / lam_max)


if __name__ == "__main__":
    main()
