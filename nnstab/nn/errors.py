"""Errors a layer raises on bad input; each names the layer, its place in the model, what it expected and what it got.

The layer that detects the problem raises; as the error passes up through the enclosing modules each
one adds its child's name, so the message ends up naming the layer as `model.named_modules()` does:

    LayerInputError: Dense(in_features=64, out_features=32) at '0.fc': expected input of shape (N, 64), got (128, 65)
"""
from __future__ import annotations


def describe(module) -> str:
    return f"{type(module).__name__}({module.extra_repr()})"


class LayerError(Exception):
    """Base of the layer errors; `.module` raised it, `.layer` is its qualified name within the model called."""

    def __init__(self, module, message: str):
        super().__init__(message)
        self.module = module
        self.message = message
        self.path: list[str] = []
        self._reached = module

    def locate(self, module):
        """Called by each enclosing module on the way up: prepend the name of the child the error came from."""
        if module is self._reached:
            return
        for name, m in module.named_modules():
            if m is self._reached and name:
                self.path[:0] = name.split(".")
                break
        self._reached = module

    @property
    def layer(self) -> str:
        return ".".join(self.path)

    def __str__(self):
        where = f" at '{self.layer}'" if self.path else ""
        return f"{describe(self.module)}{where}: {self.message}"


class LayerInputError(LayerError, ValueError):
    """An input of the wrong shape (or rank, or channel count)."""


class LayerDtypeError(LayerError, TypeError):
    """An input whose dtype differs from the layer's parameters, or is not floating point."""


class BackwardBeforeForwardError(LayerError, RuntimeError):
    """backward() on a module that has not run forward()."""
