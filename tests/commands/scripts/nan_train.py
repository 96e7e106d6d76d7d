"""Training that turns NaN: a hand-written standardisation layer divides by the batch's spread, and one
batch holds the same sample 64 times (spread 0, so 0/0). Knows nothing of nnstab."""
from collections import OrderedDict

import torch
from torch import nn


class Standardize(nn.Module):
    def forward(self, x):
        return (x - x.mean(0)) / x.std(0)


torch.manual_seed(0)
model = nn.Sequential(OrderedDict(fc1=nn.Linear(4, 16), norm=Standardize(), act=nn.ReLU(), out=nn.Linear(16, 2)))
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
loss_fn = nn.CrossEntropyLoss()

for step in range(30):
    x = torch.randn(64, 4)
    y = (x[:, 0] > 0).long()
    if step == 12:  # a duplicated sample fills the batch
        x, y = x[:1].repeat(64, 1), y[:1].repeat(64)
    loss = loss_fn(model(x), y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    if step % 10 == 0:
        print(f"step {step}: loss {loss.item():.4f}")
