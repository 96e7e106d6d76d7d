"""A module imported on first attribute access, so that `import nnstab` does not pay for numba (about 0.4 s)."""
from __future__ import annotations

import importlib.util
import sys


def lazy_module(name: str):
    """The module `name`, executed when one of its attributes is first read (importlib's LazyLoader)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.find_spec(name)
    spec.loader = importlib.util.LazyLoader(spec.loader)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
