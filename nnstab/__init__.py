"""nnstab: the numerical health of neural-network training.

Stable numerics (this namespace), a NumPy network (`nnstab.nn`), probes (`nnstab.watch`),
multiple-precision references (`nnstab.oracle`) and test helpers (`nnstab.testing`).
"""
from __future__ import annotations

import importlib

from nnstab.numerics import (
    binary_cross_entropy,
    binary_cross_entropy_with_logits,
    cross_entropy,
    kl_div,
    log_sigmoid,
    log_softmax,
    logsumexp,
    mse,
    sigmoid,
    softmax,
    softplus,
)

__version__ = "0.1.0"

__all__ = [
    "softmax", "log_softmax", "logsumexp", "sigmoid", "log_sigmoid", "softplus",
    "cross_entropy", "binary_cross_entropy", "binary_cross_entropy_with_logits", "kl_div", "mse",
    "watch", "oracle", "testing", "nn",
]

_LAZY_SUBMODULES = ("oracle", "testing", "nn")


def __getattr__(name):
    # Submodules load on first use: `import nnstab` stays cheap (no mpmath, hypothesis or torch).
    if name in _LAZY_SUBMODULES:
        return importlib.import_module(f"nnstab.{name}")
    if name == "watch":
        from nnstab.watch import watch

        return watch
    raise AttributeError(f"module 'nnstab' has no attribute {name!r}")
