"""Computes log(sigmoid(x)) and then fails before its first step. Knows nothing of nnstab."""
import torch

x = torch.tensor([-120.0, 0.0, 3.0])
value = torch.log(torch.sigmoid(x))  # <planted>
raise RuntimeError("the data loader broke")
