"""One training step of an unedited script under a Linter: stop after its first optimizer step.

The step ends at the first `optimizer.step()` (torch's global optimizer step post-hook); a script that
has built no torch.optim optimizer by its first backward (optimizers are seen as the script builds
them) ends its step when that backward returns; and a step whose optimizer step never came (GradScaler
skipped it) ends when the model's next forward begins.
The script is then stopped (a BaseException it does not catch), so a long training run costs one step.
"""
from __future__ import annotations

import weakref

import torch
from torch.nn.modules import module as nn_module
from torch.optim import optimizer as optim_module

from nnstab.lint.linter import Linter


class StepsDone(BaseException):
    """Raised into the script once the lint has seen the steps it needed (not an error)."""


class ScriptLinter:
    """Context manager: a Linter plus the step boundaries of a script; `steps` steps, then StepsDone."""

    def __init__(self, steps: int = 1):
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be a positive int, got {steps!r}")
        self.steps = steps
        self.linter = Linter()
        self.done = 0                 # steps completed
        self._backward_since_step = False
        self._handles, self._patches = [], []
        self._in_backward = False
        self._optimizers = weakref.WeakSet()   # the optimizers the script has built

    def __enter__(self):
        self._handles.append(optim_module.register_optimizer_step_post_hook(self._optimizer_stepped))
        self._handles.append(nn_module.register_module_forward_pre_hook(self._forward_started))
        self._patch(torch.Tensor, "backward")
        self._patch(torch.autograd, "backward")
        self._patch_optimizer_init()
        self.linter.start()
        return self

    def __exit__(self, *exc):
        self.linter.close()
        for handle in self._handles:
            handle.remove()
        for owner, name, original in reversed(self._patches):
            setattr(owner, name, original)
        self._handles, self._patches = [], []
        return False

    def _patch(self, owner, name):
        original = owner.__dict__[name] if name in owner.__dict__ else getattr(owner, name)
        self._patches.append((owner, name, original))

        def wrapped(*args, **kwargs):
            if self._in_backward:   # Tensor.backward calls torch.autograd.backward: one backward
                return original(*args, **kwargs)
            self._in_backward = True
            try:
                result = original(*args, **kwargs)
            finally:
                self._in_backward = False
            self._backward_done()
            return result

        wrapped.__wrapped__ = original
        setattr(owner, name, wrapped)

    def _patch_optimizer_init(self):
        original = torch.optim.Optimizer.__dict__["__init__"]
        self._patches.append((torch.optim.Optimizer, "__init__", original))
        optimizers = self._optimizers

        def __init__(optimizer, *args, **kwargs):
            original(optimizer, *args, **kwargs)
            optimizers.add(optimizer)

        __init__.__wrapped__ = original
        torch.optim.Optimizer.__init__ = __init__

    def _backward_done(self):
        self._backward_since_step = True
        if not len(self._optimizers):
            self._boundary()

    def _forward_started(self, module, args):
        if self._backward_since_step and self.linter._tracker.is_root(module):
            self._boundary()   # the model runs again and no optimizer step closed the last one

    def _optimizer_stepped(self, optimizer, args, kwargs):
        self._boundary()

    def _boundary(self):
        self._backward_since_step = False
        self.linter.step()
        self.done += 1
        if self.done >= self.steps:
            raise StepsDone()

