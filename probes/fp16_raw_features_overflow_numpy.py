"""float16 on raw dollar amounts: the first layer's sums pass 65504 and become inf (nnstab.nn).

Setting: a ReLU classifier in nnstab.nn stored and computed in float16 (to halve memory), predicting
whether a company's quarter ends in profit from the raw net cash flows of its eight business units
over the quarter, in dollars (positive or negative, typically +-15 000, up to ~+-55 000).

What goes wrong: every raw value fits in float16 (its largest finite number is 65504), but the first
layer's outputs are sums of eight products w . x with He weights of std 0.5: their spread is
15 000 * 0.5 * sqrt(8) ~ 21 000, and a few per batch land beyond +-65504. float16 rounds those to
+-inf; the next layer multiplies the infinities by weights of both signs and adds them: inf - inf =
NaN. The very first forward pass returns NaN logits, the gradients are NaN, and the first update
writes NaN into every weight. (In float32 the same sums are harmless: its range ends at 3.4e38.)

The fix (--fixed): standardise each feature (subtract its mean, divide by its standard deviation,
both from the training set), and keep the model in float32. Standardised inputs alone end the
overflow, but a float16 model trained without loss scaling then loses much of its gradients to
float16's subnormal range (see fp16_grads_underflow_torch), and nnstab.nn has no GradScaler: float32
is the sound choice here.
"""
EXPECTED = {"kinds": ["overflow", "nonfinite"], "framework": "nnstab.nn"}

import numpy as np

import nnstab
import nnstab.nn as nn
from _probekit import finish, minibatches, parse_args, watch_options

UNITS = 8
SPREAD = 14000.0   # dollars; the largest |value| in the data stays below float16's 65504


def cash_flows(n: int = 4096, seed: int = 0):
    """Quarterly net cash flow (dollars) of UNITS business units; label: the weighted total is positive."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, UNITS))
    score = z @ rng.uniform(0.5, 1.5, size=UNITS) + 0.5 * rng.normal(size=n)
    return SPREAD * z, (score > 0).astype(np.int64)


def main(argv=None) -> dict:
    args = parse_args(__doc__, argv, default_steps=200, quick_steps=50)
    nn.manual_seed(0)
    x, y = cash_flows()
    dtype = np.float16
    if args.fixed:
        x = (x - x.mean(axis=0)) / x.std(axis=0)
        dtype = np.float32
    x = x.astype(dtype)
    model = nn.Sequential(nn.Dense(UNITS, 64), nn.ReLU(), nn.Dense(64, 64), nn.ReLU(), nn.Dense(64, 2)).to(dtype)
    loss_fn = nn.CrossEntropyLoss()
    opt = nn.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
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
