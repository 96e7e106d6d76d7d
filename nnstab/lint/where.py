"""Where an operation runs: the module whose forward is executing (global module hooks) and the user's line.

The module stack is kept by torch's global forward pre/post hooks; names are the qualified names of the
root model's named_modules(). The user's line is the innermost stack frame outside torch and nnstab;
when that frame is nnstab's own code (its stable functions, the monitor's hooks), the operation is not
the user's and the lint ignores it.
"""
from __future__ import annotations

import linecache
import os
import sys
import threading
import weakref

import torch
from torch.nn.modules import module as nn_module

_TORCH_DIR = os.path.dirname(os.path.abspath(torch.__file__)) + os.sep
_NNSTAB_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
_LINT_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep
_SKIP, _NNSTAB, _USER = 0, 1, 2
_compiling = torch.compiler.is_compiling   # traced code (torch.compile) is not followed: no graph breaks
_kind_of_file = {}   # co_filename -> _SKIP | _NNSTAB | _USER


def _file_kind(filename: str) -> int:
    kind = _kind_of_file.get(filename)
    if kind is None:
        path = os.path.abspath(filename) if not filename.startswith("<") else filename
        if path.startswith(_TORCH_DIR) or path.startswith(_LINT_DIR):
            kind = _SKIP
        elif path.startswith(_NNSTAB_DIR):
            kind = _NNSTAB
        else:
            kind = _USER
        _kind_of_file[filename] = kind
    return kind


class Source:
    """A line of the user's code: file, line number and the text there."""

    __slots__ = ("file", "line")

    def __init__(self, file, line):
        self.file, self.line = file, line

    @property
    def code(self) -> str:
        return linecache.getline(self.file, self.line).strip()

    @property
    def short(self) -> str:
        """file:line, the file relative to the working directory when it lies below it."""
        path = self.file
        if not path.startswith("<"):
            rel = os.path.relpath(path)
            path = path if rel.startswith("..") else rel
        return f"{path}:{self.line}"


def user_source(depth: int = 1):
    """The innermost frame above the caller outside torch and the lint: Source, or None when that frame
    is nnstab's own code (or there is none)."""
    frame = sys._getframe(depth + 1)
    while frame is not None:
        kind = _file_kind(frame.f_code.co_filename)
        if kind == _USER:
            return Source(frame.f_code.co_filename, frame.f_lineno)
        if kind == _NNSTAB:
            return None
        frame = frame.f_back
    return None


class ModuleTracker:
    """The stack of modules whose forward is running, in the thread that created the tracker.

    `model`: the root whose named_modules() name the layers. Without one, the first module called at
    top level that has trainable parameters becomes a root (as `nnstab run` finds a script's model).
    Modules outside every root (a loss module) are "" and their operations are in the "loss" phase.
    """

    def __init__(self, model=None):
        self._discover = model is None
        self._roots = []                          # weak references to the roots
        self.root_types = []                      # their class names (kept after the roots are freed)
        self._names = weakref.WeakKeyDictionary()  # module -> qualified name in its root
        self._outside = weakref.WeakSet()          # modules known to be in no root
        self._stack = []
        self._thread = threading.get_ident()
        self._handles = []
        if model is not None:
            self._add_root(model)

    def attach(self):
        self._thread = threading.get_ident()
        self._handles = [
            nn_module.register_module_forward_pre_hook(self._pre),
            nn_module.register_module_forward_hook(self._post, always_call=True),
        ]

    def detach(self):
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._stack.clear()

    def is_root(self, module) -> bool:
        return any(r() is module for r in self._roots)

    def roots(self) -> list:
        return [m for m in (r() for r in self._roots) if m is not None]

    def where(self) -> tuple[str, str]:
        """(layer, phase) of the operation running now: the innermost named module and "forward", or
        ("", "loss") outside every root's forward."""
        for module in reversed(self._stack):
            name = self._name(module)
            if name is not None:
                return name, "forward"
        return "", "loss"

    def _pre(self, module, args):
        if _compiling() or threading.get_ident() != self._thread:
            return
        if not self._stack and self._discover and module not in self._names and module not in self._outside:
            if any(p.requires_grad for p in module.parameters()):
                self._add_root(module)
            else:
                self._outside.add(module)   # a loss module or another parameterless helper
        self._stack.append(module)

    def _post(self, module, args, output):
        if _compiling() or threading.get_ident() != self._thread:
            return
        while self._stack:   # pop back to this module: an exception may have skipped inner pops
            if self._stack.pop() is module:
                break

    def _add_root(self, model):
        self._roots.append(weakref.ref(model))
        self.root_types.append(type(model).__name__)
        self._rename()

    def _rename(self):
        self._outside = weakref.WeakSet()
        for root in self.roots():
            for name, module in root.named_modules():
                self._names.setdefault(module, name)

    def _name(self, module):
        name = self._names.get(module)
        if name is None and module not in self._outside:
            self._rename()   # a submodule added after the roots were named
            name = self._names.get(module)
            if name is None:
                self._outside.add(module)
        return name
