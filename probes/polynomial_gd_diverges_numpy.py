"""Gradient descent on raw polynomial features: lr just above 2/lambda_max, and the loss turns and climbs (nnstab.nn).

Setting: fitting a cubic to 256 noisy samples on x in [0, 2] with nnstab.nn: one Dense(3, 1) layer on
the features (x, x^2, x^3), mean squared error, full-batch gradient descent at lr 0.075 (the loss falls
nicely for the first steps, so the learning rate looks fine).

What goes wrong: for a linear model the MSE is a quadratic bowl with Hessian H = 2 E[phi phi^T]
(phi = the features and the bias's 1). Gradient descent multiplies the error along each eigenvector of
H by (1 - lr * lambda) per step. The raw powers are badly scaled (x^3 reaches 8), so lambda_max = 28.2:
the stable learning rates are those below 2 / 28.2 = 0.071. At 0.075 every other direction converges
while the error along the top eigenvector is multiplied by |1 - 0.075 * 28.2| = 1.11 per step, with
alternating sign: the loss falls for a while, then grows by ~23% a step, exponentially and without
bound. Nothing is NaN for a long time; the model simply gets worse every step.

The fix (--fixed): a learning rate below the limit, 0.03: every direction contracts (the top one by
|1 - 0.03 * 28.2| = 0.15 per step) and the loss decreases monotonically. Standardising the features
would let a larger learning rate converge faster.
"""
EXPECTED = {"kinds": ["loss_divergence"], "framework": "nnstab.nn"}

import numpy as np

import nnstab
import nnstab.nn as nn
from _probekit import finish, parse_args, watch_options

LR, FIXED_LR = 0.075, 0.03   # lambda_max = 28.2 here: the limit 2/lambda_max is 0.071


def cubic(n: int = 256, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = np.linspace(0.0, 2.0, n)
    y = 1.0 - 2.0 * x + 0.8 * x ** 3 + 0.1 * rng.normal(size=n)
    return np.stack([x, x ** 2, x ** 3], axis=1).astype(np.float32), y[:, None].astype(np.float32)


def main(argv=None) -> dict:
    args = parse_args(__doc__, argv, default_steps=200, quick_steps=60)
    nn.manual_seed(0)
    x, y = cubic()
    model = nn.Sequential(nn.Dense(3, 1, init="xavier"))
    loss_fn = nn.MSELoss()
    opt = nn.optim.SGD(model.parameters(), lr=FIXED_LR if args.fixed else LR)
    with nnstab.watch(model, **watch_options(args)) as monitor:
        for _ in range(args.steps):
            loss = loss_fn(model(x), y)                  # full batch: the curvature argument is exact
            model.zero_grad()
            model.backward(loss_fn.backward())
            opt.step()
            monitor.step(loss=loss)
    phi = np.concatenate([np.ones((len(x), 1)), x], axis=1).astype(np.float64)
    lam_max = float(np.linalg.eigvalsh(2 * phi.T @ phi / len(x))[-1])
    return finish(monitor, args, final_loss=loss, lambda_max=lam_max, stable_lr_limit=2 / lam_max)


if __name__ == "__main__":
    main()
