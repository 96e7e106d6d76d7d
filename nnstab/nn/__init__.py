"""nnstab.nn: a NumPy neural network whose forward and backward passes match torch autograd.

Layers, activations and losses are Modules with `forward` and an explicit `backward`; optimisers
follow torch.optim. A training step:

    out = model(x); loss = loss_fn(out, y)
    model.zero_grad(); model.backward(loss_fn.backward()); opt.step()

or `fit(model, loss_fn, opt, x, y, epochs=..., batch_size=...)` for whole runs.
"""
from nnstab.nn import init, optim
from nnstab.nn.activations import (
    ELU,
    SELU,
    Identity,
    LeakyReLU,
    LogSoftmax,
    ReLU,
    Sigmoid,
    Softmax,
    Softplus,
    Softsign,
    Step,
    Tanh,
)
from nnstab.nn.conv import AvgPool2d, Conv2d, MaxPool2d
from nnstab.nn.errors import BackwardBeforeForwardError, LayerDtypeError, LayerError, LayerInputError
from nnstab.nn.fit import History, evaluate, fit
from nnstab.nn.init import manual_seed
from nnstab.nn.layers import ConvergenceWarning, Dense, Dropout, Flatten, Perceptron, PerceptronResult
from nnstab.nn.losses import BCELoss, BCEWithLogitsLoss, CrossEntropyLoss, KLDivLoss, MSELoss
from nnstab.nn.module import Module, Parameter, RemovableHandle, Sequential
from nnstab.nn.norm import BatchNorm

__all__ = [
    "Module", "Parameter", "Sequential", "RemovableHandle",
    "Dense", "Perceptron", "PerceptronResult", "ConvergenceWarning", "Conv2d", "MaxPool2d", "AvgPool2d",
    "Flatten", "Dropout", "BatchNorm",
    "ReLU", "LeakyReLU", "Sigmoid", "Tanh", "Softmax", "LogSoftmax", "ELU", "SELU", "Softplus", "Softsign",
    "Identity", "Step",
    "MSELoss", "BCELoss", "BCEWithLogitsLoss", "CrossEntropyLoss", "KLDivLoss",
    "init", "optim", "manual_seed", "fit", "evaluate", "History",
    "LayerError", "LayerInputError", "LayerDtypeError", "BackwardBeforeForwardError",
]
