"""A classifier whose head takes log(softmax(...)) by hand, with sharp logits. Knows nothing of nnstab."""
import argparse

import torch
from torch import nn

parser = argparse.ArgumentParser()
parser.add_argument("--steps", type=int, default=200)
args = parser.parse_args()


class Head(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(16, 4)

    def forward(self, h):
        return torch.log(torch.softmax(self.fc(h) * 200.0, dim=1))  # <planted>


torch.manual_seed(0)
model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), Head())
optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
for step in range(args.steps):
    x, y = torch.randn(32, 8), torch.randint(0, 4, (32,))
    loss = nn.functional.nll_loss(model(x), y)
    print(f"forward {step}")
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
