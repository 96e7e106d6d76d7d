"""A healthy baseline: bfloat16 mixed precision (torch.autocast) on a well-scaled problem (torch).

Setting: a 3-layer ReLU MLP regressing a smooth function of 16 standardised features, trained with
AdamW under torch.autocast(dtype=bfloat16): matrix products and activations in bfloat16, parameters
and the optimiser in float32, the loss computed in float32.

What goes wrong: nothing. bfloat16 has float32's exponent range (up to 3.4e38, normal down to
1.2e-38), so neither the activations nor the gradients come near overflow or underflow and no loss
scaling is needed; its 8-bit significand only adds noise of ~0.4% per product, far below the
minibatch noise. The monitor should report nothing at warning or above.

The fix (--fixed): nothing to fix; --fixed runs the same recipe, so both reports are clean.
"""
EXPECTED = {"kinds": [], "framework": "torch"}

import numpy as np
import torch
import torch.nn.functional as F

import nnstab
from _probekit import finish, minibatches, parse_args, to_float, torch_setup, watch_options


def smooth_target(n: int = 4096, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 16))
    w = rng.normal(size=(16, 4)) / 4
    y = np.sin(x @ w).sum(axis=1) + 0.05 * rng.normal(size=n)
    return torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32)[:, None]


def main(argv=None) -> dict:
    args = parse_args(__doc__, argv, default_steps=200, quick_steps=50)
    torch_setup(0)
    x, y = smooth_target()
    model = torch.nn.Sequential(torch.nn.Linear(16, 128), torch.nn.ReLU(), torch.nn.Linear(128, 128), torch.nn.ReLU(),
                                torch.nn.Linear(128, 1))
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    with nnstab.watch(model, **watch_options(args)) as monitor:
        for idx in minibatches(len(y), 256, args.steps):
            idx = torch.as_tensor(idx)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = model(x[idx])
            loss = F.mse_loss(out.float(), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            monitor.step(loss=loss)
    with torch.no_grad():
        mse = F.mse_loss(model(x), y).item()
    return finish(monitor, args, final_loss=to_float(loss), full_data_mse=mse, target_variance=y.var().item())


if __name__ == "__main__":
    main()
