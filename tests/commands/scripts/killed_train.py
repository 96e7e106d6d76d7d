"""Training stopped from outside after three steps, as by a time limit (SIGTERM). Knows nothing of nnstab."""
import os
import signal

import torch
from torch import nn

torch.manual_seed(0)
model = nn.Linear(4, 1)
optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
for step in range(100):
    if step == 3:
        os.kill(os.getpid(), signal.SIGTERM)  # the signal arrives while the script works
    loss = model(torch.randn(8, 4)).pow(2).mean()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
