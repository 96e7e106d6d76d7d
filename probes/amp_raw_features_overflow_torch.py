"""float16 autocast on raw dollar amounts: the first layer overflows to inf; GradScaler skips every step (torch).

Setting: the torch twin of fp16_raw_features_overflow_numpy: a ReLU classifier (He initialisation)
predicting whether a company's quarter ends in profit from the raw net cash flows of its eight business
units, in dollars (typically +-15 000), trained with the standard mixed-precision recipe:
torch.autocast(dtype=float16) and a torch.amp.GradScaler.

What goes wrong: autocast runs the Linear layers in float16. Each input fits (float16 ends at 65504),
but the first layer's outputs are sums of eight products w . x with weights of std 0.5: their spread
is 15 000 * 0.5 * sqrt(8) ~ 21 000, and a few per batch pass +-65504. float16 rounds those to +-inf,
the next layer computes inf - inf = NaN, and the loss is NaN. GradScaler sees non-finite gradients and
skips the step, halving its scale, as it is designed to - but the overflow is in the forward pass, not
in the scaled gradients, so it recurs on every batch: every step is skipped, the weights never change,
and the run "trains" for its whole length without learning anything or raising an error. Meanwhile
the scale, halved at every skip, falls from 65536 below 1 within twenty steps, and the finite
gradients of the examples that did not overflow, multiplied by it, sink into float16's subnormal
range: the underflow in the report is the scaler's collapse, a consequence of the overflow.

The fix (--fixed): standardise the features (mean 0, standard deviation 1 from the training set)
before the model: the pre-activations are O(1) and the same AMP recipe trains normally.
"""
EXPECTED = {"kinds": ["overflow", "nonfinite", "underflow"], "framework": "torch"}

import numpy as np
import torch
import torch.nn.functional as F

import nnstab
from _probekit import finish, minibatches, parse_args, to_float, torch_setup, watch_options

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
    torch_setup(0)
    x, y = cash_flows()
    if args.fixed:
        x = (x - x.mean(axis=0)) / x.std(axis=0)
    x, y = torch.tensor(x, dtype=torch.float32), torch.tensor(y)
    model = torch.nn.Sequential(torch.nn.Linear(UNITS, 64), torch.nn.ReLU(), torch.nn.Linear(64, 64), torch.nn.ReLU(),
                                torch.nn.Linear(64, 2))
    for layer in model[::2]:
        torch.nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")      # He, as recommended for ReLU
        torch.nn.init.zeros_(layer.bias)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    scaler = torch.amp.GradScaler("cpu")
    with nnstab.watch(model, **watch_options(args, scaler=scaler)) as monitor:
        for idx in minibatches(len(y), 128, args.steps):
            idx = torch.as_tensor(idx)
            with torch.autocast("cpu", dtype=torch.float16):
                logits = model(x[idx])
            loss = F.cross_entropy(logits.float(), y[idx])
            opt.zero_grad()
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            monitor.step(loss=loss)
    with torch.no_grad():
        accuracy = (model(x).argmax(1) == y).float().mean().item()
    return finish(monitor, args, final_loss=to_float(loss), accuracy=accuracy, final_scale=scaler.get_scale())


if __name__ == "__main__":
    main()
