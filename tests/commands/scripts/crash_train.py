"""Training that crashes mid-way: the sixth batch comes with the wrong number of features. Knows nothing of nnstab."""
import torch
from torch import nn


def batches():
    for step in range(20):
        features = 4 if step != 5 else 5
        yield torch.randn(32, features), torch.randn(32, 1)


torch.manual_seed(0)
model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
optimizer = torch.optim.SGD(model.parameters(), lr=0.05)

for x, y in batches():
    loss = nn.functional.mse_loss(model(x), y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
