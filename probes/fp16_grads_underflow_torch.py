"""float16 mixed precision without loss scaling: the gradients sink below float16's normal range and are lost (torch).

Setting: a ReLU MLP regressing daily returns (values of ~1%) on 16 features, trained full-batch (8192
examples) with Adam under torch.autocast(dtype=float16), the mixed-precision mode: matrix products and
the activations they produce are float16, and so are the gradients flowing back through them.

What goes wrong: the loss is ~1e-4 and its gradient at the output is 2 (out - y) / 8192 ~ 1e-6; each
layer back passes on gradients of the same order or smaller. float16's smallest normal number is
6.1e-5: below it values are subnormal, with fewer significant bits the smaller they are, and below
6e-8 they round to zero. Nearly every non-zero gradient entry of the hidden layers lands there: no
inf, no NaN, just gradients that are coarsely rounded or silently zero. The damage grows as the fit
improves and the residuals shrink: by the end of the run the first layer's weight gradient is off by
about a third from its float32 value (the grad_error_layer_0 metric).

The fix (--fixed): a GradScaler, which is how float16 mixed precision is meant to run: the loss is
multiplied by 2^16 before backward, so gradients sit in float16's normal range, and the parameter
gradients are divided back in float32 before the step (steps with inf/NaN are skipped and the scale
lowered). The first layer's gradient error drops to a few percent, float16's own rounding of the
forward pass. bfloat16 (float32's range) is the other way out.
"""
EXPECTED = {"kinds": ["underflow"], "framework": "torch"}

import numpy as np
import torch
import torch.nn.functional as F

import nnstab
from _probekit import finish, parse_args, to_float, torch_setup, watch_options


def returns(n: int = 8192, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 16))
    y = 0.01 * np.tanh(x @ rng.normal(size=16) / 4) + 0.002 * rng.normal(size=n)
    return torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32)[:, None]


def first_layer_grad_error(model, x, y, scale: float) -> float:
    """||g - g32|| / ||g32|| for the first layer's weight: float16 autocast (loss times `scale`) vs float32."""
    def grad(mixed):
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.float16, enabled=mixed):
            out = model(x)
        (F.mse_loss(out.float(), y) * (scale if mixed else 1.0)).backward()
        return model[0].weight.grad.clone() / (scale if mixed else 1.0)

    g32 = grad(False)
    return ((grad(True) - g32).norm() / g32.norm()).item()


def main(argv=None) -> dict:
    args = parse_args(__doc__, argv, default_steps=200, quick_steps=50)
    torch_setup(0)
    x, y = returns()
    model = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.ReLU(), torch.nn.Linear(64, 64), torch.nn.ReLU(),
                                torch.nn.Linear(64, 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu", enabled=args.fixed)      # disabled: scale() and step() pass through
    with nnstab.watch(model, **watch_options(args)) as monitor:
        for _ in range(args.steps):
            with torch.autocast("cpu", dtype=torch.float16):
                out = model(x)
            loss = F.mse_loss(out.float(), y)
            opt.zero_grad()
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            monitor.step(loss=loss)
    error = first_layer_grad_error(model, x, y, scaler.get_scale() if args.fixed else 1.0)
    return finish(monitor, args, final_loss=to_float(loss), grad_error_layer_0=error)


if __name__ == "__main__":
    main()
