"""Gradient accumulation: four backward passes per optimizer step; a hand-written log-sigmoid loss."""
import torch
from torch import nn

torch.manual_seed(0)
model = nn.Sequential(nn.Linear(4, 1))
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
for step in range(40):
    x, y = torch.randn(16, 4), torch.randint(0, 2, (16, 1)).float()
    z = model(x)
    loss = -(y * torch.log(torch.sigmoid(z)) + (1 - y) * torch.log(torch.sigmoid(-z))).mean()  # <planted>
    print(f"forward {step}")
    loss.backward()
    if step % 4 == 3:
        optimizer.step()
        optimizer.zero_grad()
