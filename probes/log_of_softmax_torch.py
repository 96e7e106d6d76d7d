"""log(softmax(z)) turns a confident prediction into -inf and the whole model into NaN (torch).

Setting: a cosine-similarity classifier (normalised embeddings against normalised class prototypes,
divided by a temperature of 0.01, as in contrastive and face-recognition heads) trained with Adam on
ten Gaussian clusters with 2% of the labels wrong. The loss is written by hand as -log(softmax(logits))[target].

What goes wrong: with a temperature of 0.01 the logits span up to 200. As soon as the model is
confident, softmax's probability for a mislabelled example's label is p_y = exp(-(z_max - z_y))
with a gap of ~100. Past a gap of 87, p_y is below float32's smallest normal number (1.2e-38) and
the backward of log, 1/p_y, overflows to inf; softmax's Jacobian then multiplies it by p_y-sized
factors and subtracts: inf - inf and inf * 0 make NaN (past a gap of 104, p_y is exactly 0 and the
loss itself is inf). One Adam step writes NaN into every weight; from then on every activation is
NaN. Training is healthy for a couple of steps and breaks exactly when it starts to succeed.

The fix (--fixed): compute log_softmax directly (torch.nn.functional.cross_entropy, or
nnstab.cross_entropy): log p_y = z_y - logsumexp(z) never forms p, so a gap of 200 gives a loss
of 200, not inf, and the gradient softmax(z) - onehot(y) stays in [-1, 1]. The formula can be caught
before any training: `nnstab lint probes/log_of_softmax_torch.py` points at the line.
"""
EXPECTED = {"kinds": ["nonfinite"], "framework": "torch"}

import torch
import torch.nn.functional as F

import nnstab
from _probekit import blobs, finish, minibatches, parse_args, to_float, torch_setup, watch_options

TEMPERATURE = 0.01  # cosine logits in [-100, 100]: a gap above ~104 makes float32 softmax round to 0


class CosineClassifier(torch.nn.Module):
    def __init__(self, in_features: int, classes: int, embed: int = 32):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Linear(in_features, 64), torch.nn.ReLU(), torch.nn.Linear(64, embed))
        self.prototypes = torch.nn.Parameter(torch.randn(classes, embed))

    def forward(self, x):
        f = F.normalize(self.body(x), dim=1)
        p = F.normalize(self.prototypes, dim=1)
        return f @ p.T / TEMPERATURE


def loss_fn(logits, y, fixed: bool):
    if fixed:
        return F.cross_entropy(logits, y)                          # log_softmax inside: z_y - logsumexp(z)
    return -torch.log(torch.softmax(logits, dim=1)).gather(1, y[:, None]).mean()   # log(0) = -inf


def main(argv=None) -> dict:
    args = parse_args(__doc__, argv, default_steps=150, quick_steps=40)
    torch_setup(0)
    x, y = blobs(1024, 20, 10, spread=2.0, seed=0)
    y[::50] = (y[::50] + 1) % 10                                   # 2% mislabelled, as real data is
    x, y = torch.tensor(x, dtype=torch.float32), torch.tensor(y)
    model = CosineClassifier(20, 10)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    with nnstab.watch(model, **watch_options(args)) as monitor:
        for idx in minibatches(len(y), 64, args.steps):
            idx = torch.as_tensor(idx)
            loss = loss_fn(model(x[idx]), y[idx], args.fixed)
            opt.zero_grad()
            loss.backward()
            opt.step()
            monitor.step(loss=loss)
    with torch.no_grad():
        accuracy = (model(x).argmax(1) == y).float().mean().item()
    return finish(monitor, args, final_loss=to_float(loss), accuracy=accuracy)


if __name__ == "__main__":
    main()
