"""Adapters: how hooks attach to a framework's modules; `adapter_for(model)` picks one.

torch.py watches torch.nn.Module, numpy_nn.py watches nnstab.nn.Module; both record the same Tape.
"""
from __future__ import annotations

import sys


def adapter_for(model):
    """The adapter class for `model`, or a TypeError that names what is accepted."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(model, torch.nn.Module):
        from nnstab.watch.adapters.torch import TorchAdapter

        return TorchAdapter
    if type(model).__module__.startswith("nnstab.nn") or _is_nnstab_module(model):
        from nnstab.watch.adapters.numpy_nn import NumpyAdapter

        return NumpyAdapter
    raise TypeError(f"nnstab.watch(model) needs a torch.nn.Module or an nnstab.nn.Module, got "
                    f"{type(model).__module__}.{type(model).__name__}")


def _is_nnstab_module(model) -> bool:
    nn = sys.modules.get("nnstab.nn.module")
    return nn is not None and isinstance(model, nn.Module)
