"""The operation finder: torch modes that check every aten operation of a replayed step for NaN/inf.

Two modes work together while a step is replayed:
  _Where (a torch function mode, above autograd)  notes, for each torch call of the forward, the module
         running it and the user's source line, and tags every autograd node the call created with them
         (node.metadata), so that backward operations can be traced to the forward line they differentiate;
  _Check (a torch dispatch mode, below autograd)  runs each aten operation and, when every floating input
         (tensors and float scalars) was finite and a floating output is not, records an Event: the
         operation, module, phase, source line and its inputs' statistics. In backward the running node is
         torch._C._current_autograd_node(); its tag gives the module and the forward line.
Operations whose output is uninitialised memory (empty, empty_like, ...) are never origins.
"""
from __future__ import annotations

import math
import os
import sys

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from nnstab.lint import where

TAG = "nnstab_replay"     # key of our note in an autograd node's metadata
MAX_EVENTS = 16           # origins kept per replay: the first is usually it; later ones help choose
_UNINITIALISED = {"aten::empty", "aten::empty_like", "aten::empty_strided", "aten::new_empty",
                  "aten::new_empty_strided", "aten::empty_permuted", "aten::resize_", "aten::set_"}
_THIS_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


class Event:
    """One operation that turned finite inputs into NaN/inf."""

    __slots__ = ("op", "node", "module", "phase", "source", "inputs", "what", "pass_index")

    def __init__(self, op, node, module, phase, source, inputs, what, pass_index):
        self.op, self.node, self.module, self.phase = op, node, module, phase
        self.source, self.inputs, self.what, self.pass_index = source, inputs, what, pass_index

    def to_dict(self) -> dict:
        d = {"op": self.op, "module": self.module, "phase": self.phase, "produced": self.what,
             "source": None, "file": None, "line": None, "code": None, "inputs": self.inputs}
        if self.node:
            d["node"] = self.node
        if self.source is not None:
            d.update(source=self.source.short, file=self.source.file, line=self.source.line, code=self.source.code)
        return d


def source_here(skip: int):
    """The user's line running now, looking from `skip` frames above this one (nnstab.lint.where.user_source),
    else the innermost line outside torch and this package (nnstab's own torch functions still get a line)."""
    src = where.user_source(skip)
    if src is not None:
        return src
    frame = sys._getframe(skip)
    while frame is not None:
        name = frame.f_code.co_filename
        if where._file_kind(name) != where._SKIP and not os.path.abspath(name).startswith(_THIS_DIR):
            return where.Source(name, frame.f_lineno)
        frame = frame.f_back
    return None


class Finder:
    """Both modes and what they found; `phase` and `pass_index` are set by the replay as it goes."""

    def __init__(self, tracker):
        self.tracker = tracker
        self.events: list[Event] = []
        self.phase = "forward"
        self.pass_index = 0
        self.ops = 0               # aten operations checked
        self.busy = False          # our own checks are running: let them through untouched
        self.current = None        # (module, Source) of the torch call under way in forward
        self.out_finite = True     # the replayed forwards' outputs were finite
        self.grads_finite = True   # the gradients the real backward sent into them were finite
        self._where = _Where(self)
        self._check = _Check(self)

    def __enter__(self):
        self._where.__enter__()
        self._check.__enter__()
        return self

    def __exit__(self, *exc):
        self._check.__exit__(*exc)
        self._where.__exit__(*exc)
        return False

    # -- forward: module and line of each torch call ----------------------------------------------
    def called(self, func, args, kwargs):
        if self.busy or self.phase != "forward":
            return func(*args, **kwargs)
        outer = self.current
        self.current = (self.tracker.where()[0], source_here(3))
        try:
            out = func(*args, **kwargs)
            self.busy = True
            try:
                _tag(out, self.current)
            finally:
                self.busy = False
            return out
        finally:
            self.current = outer

    # -- every aten operation -------------------------------------------------------------------------
    def dispatched(self, func, args, kwargs):
        if self.busy or len(self.events) >= MAX_EVENTS:
            return func(*args, **kwargs)
        op = func._schema.name
        self.busy = True
        try:
            finite_in = op not in _UNINITIALISED and _all_finite(func, args, kwargs)
        finally:
            self.busy = False
        out = func(*args, **kwargs)
        if not finite_in:
            return out
        self.busy = True
        try:
            self.ops += 1
            what = _nonfinite_kind(out)
            if what is not None:
                self._record(op, func, args, kwargs, what)
        finally:
            self.busy = False
        return out

    def _record(self, op, func, args, kwargs, what):
        node_name, module, source = None, "", None
        if self.phase == "backward":
            node = torch._C._current_autograd_node()
            if node is not None:
                node_name = node.name()
                tag = node.metadata.get(TAG)
                if tag is not None:
                    module, source = tag
        else:
            module, source = self.current if self.current is not None else (self.tracker.where()[0], None)
            if source is None:
                source = source_here(4)
        inputs = [_stats(t) for t in _float_inputs(func, args, kwargs)]
        self.events.append(Event(op, node_name, module, self.phase, source, inputs, what, self.pass_index))


class _Where(TorchFunctionMode):
    def __init__(self, finder):
        super().__init__()
        self.finder = finder

    def __torch_function__(self, func, types, args=(), kwargs=None):
        return self.finder.called(func, args, kwargs or {})


class _Check(TorchDispatchMode):
    def __init__(self, finder):
        super().__init__()
        self.finder = finder

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return self.finder.dispatched(func, args, kwargs or {})


def _tag(out, note):
    """Tag every autograd node `out` was made by and not tagged yet (the call's own nodes) with `note`."""
    leaves, _ = tree_flatten(out)
    stack = [t.grad_fn for t in leaves if isinstance(t, torch.Tensor) and t.grad_fn is not None]
    while stack:
        node = stack.pop()
        if node is None:
            continue
        meta = node.metadata
        if TAG in meta:
            continue
        meta[TAG] = note
        stack.extend(nxt for nxt, _ in node.next_functions if nxt is not None)


def _float_inputs(func, args, kwargs):
    """The floating tensors an operation reads (an out= argument is written, not read)."""
    leaves, _ = tree_flatten((args, {k: v for k, v in kwargs.items() if k != "out"}))
    out = [t for t in leaves if isinstance(t, torch.Tensor) and t.is_floating_point()
           and t.layout == torch.strided and t.device.type != "meta"]
    if func._schema.overload_name.startswith("out") and "out" not in kwargs:
        writes = {i for i, a in enumerate(func._schema.arguments) if a.alias_info is not None and a.alias_info.is_write}
        out = [t for t in out if not any(t is args[i] for i in writes if i < len(args))]
    return out


def _all_finite(func, args, kwargs) -> bool:
    leaves, _ = tree_flatten((args, kwargs))
    for x in leaves:
        if isinstance(x, float) and not math.isfinite(x):
            return False
    for t in _float_inputs(func, args, kwargs):
        if t.numel() and not bool(torch.isfinite(t).all()):
            return False
    return True


def _nonfinite_kind(out):
    """"NaN" or "infinity" when a floating output of the operation holds one (NaN first), else None (the words,
    not "nan"/"inf", which strict JSON decoding would turn back into floats)."""
    leaves, _ = tree_flatten(out)
    for t in leaves:
        if isinstance(t, torch.Tensor) and t.is_floating_point() and t.layout == torch.strided and t.numel():
            if not bool(torch.isfinite(t).all()):
                return "NaN" if bool(torch.isnan(t).any()) else "infinity"
    return None


def _stats(t) -> dict:
    x = t.detach()
    x = x.double() if x.dtype in (torch.float16, torch.bfloat16) else x
    n = x.numel()
    finite = torch.isfinite(x)
    nonfinite = n - int(finite.sum())
    vals = x[finite] if nonfinite else x
    return {"shape": list(t.shape), "dtype": str(t.dtype).replace("torch.", ""),
            "min": float(vals.min()) if vals.numel() else math.nan,
            "max": float(vals.max()) if vals.numel() else math.nan,
            "nonfinite": nonfinite, "zeros": int((x == 0).sum())}
