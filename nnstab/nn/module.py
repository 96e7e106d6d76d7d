"""Module, Parameter and Sequential: the tree a NumPy network is built from, with torch-shaped hooks.

A layer subclasses `Module` and writes two methods: `forward(x)`, which keeps what its derivative
needs in `self._saved`, and `_backward(grad_output)`, which returns dL/dx and adds dL/dp into each
parameter's `.grad`. `module(x)` runs `forward` and then the forward hooks; `module.backward(g)`
runs the backward pre-hooks, `_backward` and then the full backward hooks, exactly where torch
would run them:

    out = model(x)
    loss = loss_fn(out, y)
    model.zero_grad()
    model.backward(loss_fn.backward())      # returns dL/dx, fills p.grad
    opt.step()

A module made of children (like Sequential) calls them in `forward` and calls their `backward`
in reverse order in `_backward`; errors raised below carry the child's qualified name upwards.

Hooks live in the ordered dicts `_forward_hooks`, `_backward_pre_hooks` and `_backward_hooks`
(torch's names), keyed by the id of their handle, so a tool that attaches hooks can check that it
left them as it found them.
"""
from __future__ import annotations

import itertools
from collections import OrderedDict

import numpy as np

from nnstab.nn.errors import BackwardBeforeForwardError, LayerDtypeError, LayerError, LayerInputError

SUPPORTED_DTYPES = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))
DEFAULT_DTYPE = np.dtype(np.float32)   # torch's default; float64 for exactness, float16 to show overflow


def as_float_dtype(dtype) -> np.dtype:
    """A NumPy float dtype from anything np.dtype accepts, or a clear error."""
    try:
        dt = np.dtype(dtype)
    except TypeError as exc:
        raise TypeError(f"dtype must be float16, float32 or float64, got {dtype!r}") from exc
    if dt not in SUPPORTED_DTYPES:
        raise TypeError(f"dtype must be float16, float32 or float64, got {dt}; "
                        f"pass dtype=np.float32 (the default) or np.float64")
    return dt


class Parameter:
    """A learnable array: `.data` (the values), `.grad` (None until a backward pass adds to it) and `.name`.

    `.name` is the attribute name in the module that owns it ("weight", "bias"); the qualified
    name ("0.fc.weight") is what `Module.named_parameters()` yields.
    """

    __slots__ = ("data", "grad", "name")

    def __init__(self, data, name: str = ""):
        self.data = np.asarray(data)
        self.grad = None
        self.name = name

    @property
    def shape(self):
        return self.data.shape

    @property
    def dtype(self):
        return self.data.dtype

    @property
    def size(self):
        return self.data.size

    def accumulate_grad(self, g):
        """grad += g, as torch accumulates into .grad across backward passes until zero_grad()."""
        if self.grad is None:
            self.grad = g if g.dtype == self.data.dtype else g.astype(self.data.dtype)
        else:
            self.grad += g

    def __repr__(self):
        return f"Parameter(name={self.name!r}, shape={self.data.shape}, dtype={self.data.dtype})"


class RemovableHandle:
    """What register_*_hook returns: `remove()` takes the hook out again (safe to call twice)."""

    _ids = itertools.count()

    def __init__(self, hooks_dict):
        self.hooks_dict = hooks_dict
        self.id = next(RemovableHandle._ids)

    def remove(self):
        self.hooks_dict.pop(self.id, None)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.remove()


class Module:
    """Base class of every layer, activation and container; see the module docstring for the protocol."""

    _needs_forward = True   # containers set False: their children check for themselves

    def __init__(self):
        d = self.__dict__
        d["_parameters"] = OrderedDict()
        d["_buffers"] = OrderedDict()
        d["_modules"] = OrderedDict()
        d["_forward_hooks"] = OrderedDict()
        d["_backward_pre_hooks"] = OrderedDict()
        d["_backward_hooks"] = OrderedDict()
        d["training"] = True
        d["_saved"] = None
        d["_forward_ran"] = False

    # -- registration -------------------------------------------------------------------------
    def __setattr__(self, name, value):
        d = self.__dict__
        if "_parameters" not in d:
            raise AttributeError(f"call Module.__init__() in {type(self).__name__}.__init__ before assigning {name!r}")
        if isinstance(value, Parameter):
            self._forget(name)
            value.name = name
            d["_parameters"][name] = value
        elif isinstance(value, Module):
            self._forget(name)
            d["_modules"][name] = value
        elif name in d["_buffers"]:
            d["_buffers"][name] = value
        elif name in d["_parameters"] or name in d["_modules"]:
            self._forget(name)
        d[name] = value

    def __delattr__(self, name):
        self._forget(name)
        self._buffers.pop(name, None)
        object.__delattr__(self, name)

    def _forget(self, name):
        self._parameters.pop(name, None)
        self._modules.pop(name, None)

    def register_buffer(self, name: str, array):
        """A non-learnable array saved with the module and converted by `.to(dtype)` (e.g. running statistics)."""
        self._buffers[name] = array
        self.__dict__[name] = array

    def register_parameter(self, name: str, param):
        setattr(self, name, param)

    def add_module(self, name: str, module):
        if not isinstance(module, Module) and module is not None:
            raise TypeError(f"{name!r} must be an nnstab.nn.Module, got {type(module).__name__}")
        setattr(self, name, module)

    # -- the tree --------------------------------------------------------------------------------
    def named_children(self):
        seen = set()
        for name, m in self._modules.items():
            if m is not None and id(m) not in seen:
                seen.add(id(m))
                yield name, m

    def children(self):
        for _, m in self.named_children():
            yield m

    def named_modules(self, memo=None, prefix: str = "", remove_duplicate: bool = True):
        """(qualified name, module) for this module and all below, depth first, named as torch names them."""
        if memo is None:
            memo = set()
        if remove_duplicate:
            if id(self) in memo:
                return
            memo.add(id(self))
        yield prefix, self
        for name, m in self._modules.items():
            if m is None:
                continue
            sub = f"{prefix}.{name}" if prefix else name
            yield from m.named_modules(memo, sub, remove_duplicate)

    def modules(self):
        for _, m in self.named_modules():
            yield m

    def _named_members(self, registry: str, prefix: str, recurse: bool, remove_duplicate: bool = True):
        mods = self.named_modules(prefix=prefix, remove_duplicate=remove_duplicate) if recurse else [(prefix, self)]
        seen = set()
        for mod_prefix, m in mods:
            for name, v in getattr(m, registry).items():
                if v is None or (remove_duplicate and id(v) in seen):
                    continue
                seen.add(id(v))
                yield (f"{mod_prefix}.{name}" if mod_prefix else name), v

    def named_parameters(self, prefix: str = "", recurse: bool = True, remove_duplicate: bool = True):
        yield from self._named_members("_parameters", prefix, recurse, remove_duplicate)

    def parameters(self, recurse: bool = True):
        for _, p in self.named_parameters(recurse=recurse):
            yield p

    def named_buffers(self, prefix: str = "", recurse: bool = True):
        yield from self._named_members("_buffers", prefix, recurse)

    def buffers(self, recurse: bool = True):
        for _, b in self.named_buffers(recurse=recurse):
            yield b

    # -- modes, gradients, dtype ---------------------------------------------------------------------
    def train(self, mode: bool = True):
        for m in self.modules():
            m.__dict__["training"] = bool(mode)
        return self

    def eval(self):
        return self.train(False)

    def zero_grad(self, set_to_none: bool = True):
        """Clear every parameter's gradient: None by default (as torch), or zeros in place."""
        for p in self.parameters():
            if set_to_none or p.grad is None:
                p.grad = None
            else:
                p.grad[...] = 0

    def to(self, dtype):
        """Convert parameters, their gradients and floating buffers to `dtype` in place; returns self."""
        dt = as_float_dtype(dtype)
        for m in self.modules():
            for p in m._parameters.values():
                if p is not None:
                    p.data = p.data.astype(dt, copy=False)
                    if p.grad is not None:
                        p.grad = p.grad.astype(dt, copy=False)
            for name, b in list(m._buffers.items()):
                if isinstance(b, np.ndarray) and b.dtype.kind == "f":
                    setattr(m, name, b.astype(dt, copy=False))
            m._saved = None
            m.__dict__["_forward_ran"] = False
        return self

    def float(self):
        return self.to(np.float32)

    def double(self):
        return self.to(np.float64)

    def half(self):
        return self.to(np.float16)

    @property
    def dtype(self):
        """The dtype of the first parameter (None for a module without parameters)."""
        for p in self.parameters():
            return p.data.dtype
        return None

    # -- hooks -----------------------------------------------------------------------------------
    def register_forward_hook(self, hook):
        """hook(module, inputs, output) after forward; `inputs` is a tuple; a non-None return replaces output.

        Backward is explicit here (there is no tape), so a replacement counts as the module's own
        output: gradients pass through it unchanged, as through torch's `out + (new - out).detach()`.
        To change gradients, use a backward hook.
        """
        return self._add_hook(self._forward_hooks, hook)

    def register_full_backward_pre_hook(self, hook):
        """hook(module, grad_output) before backward; tuples; a non-None return replaces grad_output."""
        return self._add_hook(self._backward_pre_hooks, hook)

    def register_full_backward_hook(self, hook):
        """hook(module, grad_input, grad_output) after backward; tuples; a non-None return replaces grad_input."""
        return self._add_hook(self._backward_hooks, hook)

    @staticmethod
    def _add_hook(hooks, hook):
        if not callable(hook):
            raise TypeError(f"a hook must be callable, got {type(hook).__name__}")
        handle = RemovableHandle(hooks)
        hooks[handle.id] = hook
        return handle

    # -- forward and backward --------------------------------------------------------------------
    def forward(self, *inputs):
        raise NotImplementedError(f"{type(self).__name__} must implement forward(x)")

    def _backward(self, grad_output):
        raise NotImplementedError(f"{type(self).__name__} must implement _backward(grad_output)")

    def __call__(self, *inputs):
        try:
            output = self.forward(*inputs)
        except LayerError as e:
            e.locate(self)
            raise
        self.__dict__["_forward_ran"] = True
        for hook in tuple(self._forward_hooks.values()):
            result = hook(self, inputs, output)
            if result is not None:
                output = result
        return output

    def backward(self, grad_output):
        """dL/d(input) from dL/d(output); adds dL/dp into each parameter's .grad on the way."""
        if self._needs_forward and self._saved is None and not self._forward_ran:
            e = BackwardBeforeForwardError(self, "backward() was called before forward(); "
                                                 "call the module on a batch first (out = model(x))")
            e.locate(self)
            raise e
        for hook in tuple(self._backward_pre_hooks.values()):
            result = hook(self, (grad_output,))
            if result is not None:
                grad_output = _single(result, "grad_output", hook)
        try:
            grad_input = self._backward(grad_output)
        except LayerError as e:
            e.locate(self)
            raise
        if self._backward_hooks:
            gi, go = (grad_input,), (grad_output,)
            for hook in tuple(self._backward_hooks.values()):
                result = hook(self, gi, go)
                if result is not None:
                    gi = (_single(result, "grad_input", hook),)
            grad_input = gi[0]
        return grad_input

    def check_array(self, x, dtype=None):
        """x must be a floating NumPy array, and of `dtype` (the parameters' dtype) when one is given."""
        if not isinstance(x, np.ndarray):
            want = np.dtype(dtype or DEFAULT_DTYPE).name
            raise LayerDtypeError(self, f"expected a NumPy array, got {type(x).__name__}; "
                                        f"wrap it with np.asarray(x, dtype=np.{want})")
        if x.dtype not in SUPPORTED_DTYPES:
            want = np.dtype(dtype or DEFAULT_DTYPE).name
            raise LayerDtypeError(self, f"expected a floating-point input (float16, float32 or float64), "
                                        f"got dtype {x.dtype}; convert it with x.astype(np.{want})")
        if dtype is not None and x.dtype != dtype:
            raise LayerDtypeError(self, f"input dtype {x.dtype} does not match the layer's parameters ({dtype}); "
                                        f"convert the input with x.astype(np.{dtype}) or the model with "
                                        f"model.to(np.{x.dtype})")
        return x

    def check_grad_output(self, grad_output, shape, dtype):
        """grad_output must have the forward output's shape; it is cast to the output's dtype."""
        if not isinstance(grad_output, np.ndarray) or grad_output.shape != shape:
            got = getattr(grad_output, "shape", type(grad_output).__name__)
            raise LayerInputError(self, f"backward() expected grad_output of the output's shape {shape}, got {got}")
        if grad_output.dtype != dtype:
            grad_output = grad_output.astype(dtype)
        return grad_output

    # -- printing ----------------------------------------------------------------------------------
    def extra_repr(self) -> str:
        return ""

    def __repr__(self):
        if not self._modules:
            return f"{type(self).__name__}({self.extra_repr()})"
        lines = [f"{type(self).__name__}("]
        for name, m in self._modules.items():
            body = repr(m).replace("\n", "\n  ")
            lines.append(f"  ({name}): {body}")
        lines.append(")")
        return "\n".join(lines)


def _single(result, what: str, hook):
    """A hook returns a tuple (as in torch) with one entry per input; our modules have one input."""
    if isinstance(result, (tuple, list)):
        if len(result) != 1:
            raise ValueError(f"backward hook {getattr(hook, '__name__', hook)!r} returned {len(result)} {what} "
                             f"entries; return a tuple with one entry per module input (here 1)")
        return result[0]
    return result


class Sequential(Module):
    """Modules applied in order; children are named "0", "1", ... or by the keys of an OrderedDict."""

    _needs_forward = False

    def __init__(self, *modules):
        super().__init__()
        if len(modules) == 1 and isinstance(modules[0], (OrderedDict, dict)):
            for name, m in modules[0].items():
                self.add_module(str(name), m)
        else:
            for i, m in enumerate(modules):
                self.add_module(str(i), m)

    def __getitem__(self, idx):
        mods = list(self._modules.values())
        if isinstance(idx, slice):
            return Sequential(OrderedDict(list(self._modules.items())[idx]))
        return mods[idx]

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())

    def append(self, module):
        self.add_module(str(len(self)), module)
        return self

    def forward(self, x):
        for m in self._modules.values():
            x = m(x)
        return x

    def _backward(self, grad_output):
        for m in reversed(self._modules.values()):
            grad_output = m.backward(grad_output)
        return grad_output
