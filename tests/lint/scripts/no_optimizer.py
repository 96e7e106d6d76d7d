"""Plain SGD by hand (no torch.optim) with a softplus written as log(1 + exp(x)). Knows nothing of nnstab."""
import torch

torch.manual_seed(0)
w = (torch.randn(8, 1) * 30).requires_grad_()
for step in range(50):
    x, y = torch.randn(64, 8), torch.randint(0, 2, (64, 1)).float()
    z = x @ w
    loss = (torch.log(1 + torch.exp(z)) - y * z).mean()  # <planted>
    print(f"forward {step}")
    loss.backward()
    with torch.no_grad():
        w -= 0.1 * w.grad
        w.grad.zero_()
