"""One missing value stored as NaN poisons every weight after a single step (nnstab.nn).

Setting: a small ReLU regression network in nnstab.nn (float32) fitting a smooth function of eight
sensor readings with SGD. One sensor drops out now and then, and the data set records the missing
readings as NaN, as pandas and most loggers do (0.5% of the rows).

What goes wrong: a NaN row gives a NaN output, the batch-mean loss is NaN, and its gradient reaches
every weight: dL/dW = g^T x sums over the batch, and anything plus NaN is NaN. The first batch that
contains a missing reading writes NaN into every parameter; from then on every output is NaN, whatever
the input. Nothing crashes: NumPy propagates NaN silently, as it should, so the run ends "normally"
with a NaN loss and a useless model.

The fix (--fixed): impute before training: replace each missing reading by its column's mean over
the observed values (np.nanmean) and add a 0/1 "was missing" column so the model can tell. The same
network and optimiser then fit the data.
"""
EXPECTED = {"kinds": ["nonfinite"], "framework": "nnstab.nn"}

import numpy as np

import nnstab
import nnstab.nn as nn
from _probekit import finish, minibatches, parse_args, watch_options

MISSING_RATE = 0.005  # one reading in two hundred: rare enough to miss when eyeballing the data


def sensor_data(n: int = 2048, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 8))
    y = np.sin(x[:, :1]) + 0.5 * x[:, 1:2] * x[:, 2:3] + 0.1 * rng.normal(size=(n, 1))
    missing = rng.random(n) < MISSING_RATE
    x[missing, 3] = np.nan                     # sensor 3 dropped out
    return x, y


def impute(x):
    """Column means over the observed values in place of NaN, plus one 0/1 indicator per incomplete column."""
    missing = np.isnan(x)
    filled = np.where(missing, np.nanmean(x, axis=0), x)
    incomplete = missing.any(axis=0)
    return np.concatenate([filled, missing[:, incomplete].astype(x.dtype)], axis=1)


def main(argv=None) -> dict:
    args = parse_args(__doc__, argv, default_steps=300, quick_steps=60)
    nn.manual_seed(0)
    x, y = sensor_data()
    if args.fixed:
        x = impute(x)
    x, y = x.astype(np.float32), y.astype(np.float32)
    model = nn.Sequential(nn.Dense(x.shape[1], 64), nn.ReLU(), nn.Dense(64, 64), nn.ReLU(), nn.Dense(64, 1))
    loss_fn = nn.MSELoss()
    opt = nn.optim.Adam(model.parameters(), lr=3e-3)
    with nnstab.watch(model, **watch_options(args)) as monitor:
        for idx in minibatches(len(y), 64, args.steps):
            loss = loss_fn(model(x[idx]), y[idx])
            model.zero_grad()
            model.backward(loss_fn.backward())
            opt.step()
            monitor.step(loss=loss)
    full_loss = float(np.mean((model(x) - y) ** 2))
    return finish(monitor, args, final_loss=loss, full_data_mse=full_loss)


if __name__ == "__main__":
    main()
