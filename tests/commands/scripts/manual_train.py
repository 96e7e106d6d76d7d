"""Linear regression updated by hand, without torch.optim. Knows nothing of nnstab."""
import torch
from torch import nn

torch.manual_seed(0)
model = nn.Linear(3, 1)
true_w = torch.tensor([[1.0, -2.0, 0.5]])
for step in range(15):
    x = torch.randn(32, 3)
    loss = ((model(x) - x @ true_w.T) ** 2).mean()
    model.zero_grad()
    loss.backward()
    with torch.no_grad():
        for p in model.parameters():
            p -= 0.1 * p.grad
print(f"final loss {loss.item():.4f}")
