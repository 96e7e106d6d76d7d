"""Inputs far from zero (20 +- 0.4 degC): half the ReLU units are off for every example from the start (nnstab.nn).

Setting: a ReLU MLP in nnstab.nn (He initialisation, Adam at lr 1e-3) classifying the airflow pattern
of a greenhouse (3 classes) from sixteen temperature sensors, read raw in degrees Celsius: every
reading is 20 degC give or take half a degree, and the information is in those small differences.

What goes wrong: a unit computes w . x + b with x = mu + delta, a large common offset mu (20 in every
coordinate) plus a small variation delta (+-0.4). Its pre-activation is w . mu + w . delta, and the
first term, the same for every example, is ~50 times the second: its sign decides the unit's fate.
For about half the units it is negative, so the unit outputs 0 for every example in the data, ReLU
passes no gradient back, and Adam never moves its weights: those units are dead before the first step
and stay dead. The next layer sees inputs with the same structure (large, nearly constant) and loses
a good share of its units the same way. The network trains on what is left, and slowly.

The fix (--fixed): centre and scale the inputs (subtract each sensor's mean, divide by its standard
deviation): the pre-activations are then centred at the bias, every unit is active on part of the
data, and no unit dies.
"""
EXPECTED = {"kinds": ["dead_relu"], "framework": "nnstab.nn"}

import numpy as np

import nnstab
import nnstab.nn as nn
from _probekit import finish, minibatches, parse_args, watch_options

SENSORS, CLASSES = 16, 3


def greenhouse(n: int = 3072, seed: int = 0):
    """Temperatures (degC) of SENSORS sensors; the class is the pattern of the small anomalies (three patterns)."""
    rng = np.random.default_rng(seed)
    patterns = rng.normal(0.0, 0.3, size=(CLASSES, SENSORS))
    y = rng.integers(0, CLASSES, size=n)
    x = 20.0 + patterns[y] + 0.2 * rng.normal(size=(n, SENSORS))
    return x, y


def main(argv=None) -> dict:
    args = parse_args(__doc__, argv, default_steps=200, quick_steps=50)
    nn.manual_seed(0)
    x, y = greenhouse()
    if args.fixed:
        x = (x - x.mean(axis=0)) / x.std(axis=0)
    x = x.astype(np.float32)
    model = nn.Sequential(nn.Dense(SENSORS, 64), nn.ReLU(), nn.Dense(64, 64), nn.ReLU(), nn.Dense(64, CLASSES))
    loss_fn = nn.CrossEntropyLoss()
    opt = nn.optim.Adam(model.parameters(), lr=1e-3)
    with nnstab.watch(model, **watch_options(args)) as monitor:
        for idx in minibatches(len(y), 128, args.steps):
            loss = loss_fn(model(x[idx]), y[idx])
            model.zero_grad()
            model.backward(loss_fn.backward())
            opt.step()
            monitor.step(loss=loss)
    hidden = model[:2](x)
    accuracy = float(np.mean(model(x).argmax(1) == y))
    return finish(monitor, args, final_loss=loss, accuracy=accuracy,
                  dead_share_layer_1=float(np.mean(hidden.max(axis=0) <= 0)))


if __name__ == "__main__":
    main()
