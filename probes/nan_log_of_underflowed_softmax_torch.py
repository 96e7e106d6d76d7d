"""A model that returns log(softmax(z)) itself goes -inf inside a module, and the replay names the line (torch).

Setting: a classifier whose head returns log-probabilities, as models meant for nll_loss do: cosine
similarities between normalised embeddings and normalised class prototypes, divided by a temperature of
0.01, then `torch.log(torch.softmax(logits, dim=1))` written by hand inside the head's forward. Trained
with Adam on ten Gaussian clusters. The monitor is created with replay=True (as `nnstab run` does).

What goes wrong: the logits span up to 200; once the model is confident the gap between the largest
logit and the others passes 104 and float32 softmax rounds their probabilities to exactly 0, so the
head's own output holds log(0) = -inf (an infinity made from finite inputs, which the overflow check
reports too). nll_loss then meets -inf (a mislabelled example's target) and backward multiplies
infinities by zeros: NaN in every weight after one step. The monitor finds the first
non-finite step and the head that made it; the replay re-runs that step from its snapshot under a
dispatch mode and names the operation, aten::log, in module 'head', with this file's line.

The fix (--fixed): `torch.log_softmax(logits, dim=1)`: z - logsumexp(z) never forms a probability, so a
gap of 200 gives a log-probability of -200, not -inf.
"""
EXPECTED = {"kinds": ["nonfinite", "overflow"], "framework": "torch"}

import torch
import torch.nn.functional as F

import nnstab
from _probekit import blobs, finish, minibatches, parse_args, to_float, torch_setup, watch_options

TEMPERATURE = 0.01  # cosine logits in [-100, 100]: a gap above ~104 makes float32 softmax round to 0


class CosineHead(torch.nn.Module):
    def __init__(self, embed: int, classes: int, fixed: bool):
        super().__init__()
        self.prototypes = torch.nn.Parameter(torch.randn(classes, embed))
        self.fixed = fixed

    def forward(self, f):
        logits = F.normalize(f, dim=1) @ F.normalize(self.prototypes, dim=1).T / TEMPERATURE
        if self.fixed:   # z - logsumexp(z): never log(0)
            return torch.log_softmax(logits, dim=1)
        # probabilities below float32's smallest subnormal (1.4e-45) round to 0, and log(0) = -inf
        return torch.log(torch.softmax(logits, dim=1))


class Classifier(torch.nn.Module):
    def __init__(self, in_features: int, classes: int, fixed: bool, embed: int = 32):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Linear(in_features, 64), torch.nn.ReLU(), torch.nn.Linear(64, embed))
        self.head = CosineHead(embed, classes, fixed)

    def forward(self, x):
        return self.head(self.body(x))


def main(argv=None) -> dict:
    args = parse_args(__doc__, argv, default_steps=150, quick_steps=40)
    torch_setup(0)
    x, y = blobs(1024, 20, 10, spread=2.0, seed=0)
    y[::50] = (y[::50] + 1) % 10                                   # 2% mislabelled, as real data is
    x, y = torch.tensor(x, dtype=torch.float32), torch.tensor(y)
    model = Classifier(20, 10, args.fixed)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    with nnstab.watch(model, **watch_options(args, replay=True)) as monitor:
        for idx in minibatches(len(y), 64, args.steps):
            idx = torch.as_tensor(idx)
            loss = F.nll_loss(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            monitor.step(loss=loss)
    with torch.no_grad():
        accuracy = (model(x).argmax(1) == y).float().mean().item()
    replayed = [f.details["replay"] for f in monitor.findings if "replay" in f.details]
    where = {k: replayed[0].get(k) for k in ("op", "module", "phase", "source")} if replayed else {}
    return finish(monitor, args, final_loss=to_float(loss), accuracy=accuracy,
                  **{f"replay_{k}": v for k, v in where.items()})


if __name__ == "__main__":
    main()
