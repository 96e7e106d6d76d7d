"""Watching a training script nobody edited: global torch hooks find its model, loss and step boundaries.

  model   the first top-level call (no other module running) of a module with trainable parameters:
          a global forward pre-hook sees it and calls nnstab.watch(model). Modules inside a watched
          model, and modules without trainable parameters (a loss module), are not roots.
  loss    the scalar that .backward() is called on (Tensor.backward / torch.autograd.backward are
          wrapped while the script runs); read (detached) once per step by the monitor. A loss
          scaled by GradScaler.scale is traced back to the unscaled one.
  step    the optimiser's step post-hook: after optimizer.step() every monitor whose model shares
          parameters with that optimiser steps. A step GradScaler skips (inf/NaN gradients) still
          counts. A script with no torch.optim optimiser steps when the model's next top-level forward
          follows a backward. If the script stops mid-step, the partial step is recorded too.
Everything is undone on exit: the script's model and torch are as they were.
"""
from __future__ import annotations

import os
import runpy
import sys
import time
import weakref

PROGRESS_SECONDS = 10.0  # how often a long run prints "step N" on stderr


class ScriptWatcher:
    """Context manager installing the global hooks; `monitors` holds (model, monitor, log_dir) in discovery order."""

    def __init__(self, *, log_dir, command=None, options=None, progress=None):
        self.log_dir = os.fspath(log_dir)
        self.command = list(command) if command else None
        self.options = dict(options or {})
        self.progress = progress or (lambda line: None)
        self.monitors = []            # [(model, monitor, log_dir)]
        self._watched = {}            # id(model) -> state dict
        self._handles = []
        self._patches = []
        self._active = []             # modules whose forward is running (for "top-level")
        self._seen = weakref.WeakSet()  # modules already judged as root or not
        self._losses = []             # the scalars .backward() was called on since the last step (with their
                                      # graph, whose saved tensors backward has freed: the replay names its nodes)
        self._scaled = []             # (weakref(scaled), unscaled) from GradScaler.scale
        self._optimizers = weakref.WeakSet()
        self._optimizer_steps = 0
        self._in_backward = False
        self._last_progress = time.monotonic()
        self._failures = set()       # places where watching failed (said once each)

    # -- install / uninstall ---------------------------------------------------------------------------
    def __enter__(self):
        import torch
        from torch.nn.modules import module as nn_module
        from torch.optim import optimizer as optim_module

        self._handles = [
            nn_module.register_module_forward_pre_hook(self._guarded(self._forward_pre)),
            nn_module.register_module_forward_hook(self._guarded(self._forward_post), always_call=True),
            optim_module.register_optimizer_step_post_hook(self._guarded(self._optimizer_stepped)),
        ]
        self._patch(torch.Tensor, "backward", self._wrap_tensor_backward)
        self._patch(torch.autograd, "backward", self._wrap_autograd_backward)
        self._patch(torch.optim.Optimizer, "__init__", self._wrap_optimizer_init)
        self._patch(torch.amp.GradScaler, "scale", self._wrap_scaler_scale)
        self._patch(torch.amp.GradScaler, "step", self._wrap_scaler_step)
        return self

    def __exit__(self, *exc):
        for handle in self._handles:
            handle.remove()
        for owner, name, original in reversed(self._patches):
            setattr(owner, name, original)
        self._handles, self._patches = [], []
        return False

    def _guarded(self, fn):
        """`fn` made harmless to the script: a failure of the watching is said once on stderr and the
        script goes on as if unwatched there (its own exceptions never pass through here)."""
        def guarded(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except Exception as exc:
                where = fn.__name__.strip("_").replace("_", " ")
                if where not in self._failures:
                    self._failures.add(where)
                    self.progress(f"could not watch this part ({where}): {type(exc).__name__}: {exc}")
                return None
        return guarded

    def _patch(self, owner, name, make):
        original = owner.__dict__[name] if name in owner.__dict__ else getattr(owner, name)
        self._patches.append((owner, name, original))
        setattr(owner, name, make(original))

    # -- model discovery ---------------------------------------------------------------------------------
    def _forward_pre(self, module, args):
        top_level = not self._active
        self._active.append(module)
        if not top_level:
            return
        state = self._watched.get(id(module))
        if state is not None:
            if state["backward_since_step"] and not self._has_optimizer(state):
                self._boundary(state)  # a script without torch.optim: the next forward starts a new step
            return
        if module in self._seen:
            return
        self._seen.add(module)
        if self._is_root(module):
            self._watch(module)

    def _forward_post(self, module, args, output):
        # Pop back to this module: an exception inside a forward may have skipped inner pops.
        while self._active:
            if self._active.pop() is module:
                break

    def _is_root(self, module) -> bool:
        ids = {id(p) for p in module.parameters() if p.requires_grad}
        # a part of a model already watched (called on its own) is covered by that model's monitor
        return bool(ids) and not any(ids & state["params"] for state in self._watched.values())

    def _watch(self, model):
        from nnstab.watch import watch

        index = len(self.monitors)
        log_dir = self.log_dir if index == 0 else os.path.join(self.log_dir, f"model-{index + 1}")
        monitor = watch(model, log_dir=log_dir, command=self.command, **self.options)
        params = list(model.parameters())
        self._watched[id(model)] = {
            "model": model, "monitor": monitor, "params": {id(p) for p in params},
            "backward_since_step": False, "reported": set(), "read": 0, "optimized": False,
        }
        self._has_optimizer(self._watched[id(model)])  # optimisers built before the first forward
        self.monitors.append((model, monitor, log_dir))
        self._last_progress = time.monotonic()
        n_layers = sum(1 for _ in model.named_modules())
        n_params = sum(p.numel() for p in params)
        self.progress(f"watching {type(model).__name__} ({n_layers} modules, {n_params:,} parameters)")

    # -- loss capture --------------------------------------------------------------------------------------
    def _note_backward(self, tensor):
        self._active.clear()  # no forward is running once backward starts
        if getattr(tensor, "numel", None) is None or tensor.numel() != 1 or not tensor.is_floating_point():
            return  # not a loss: backward on a non-scalar with an explicit gradient
        for ref, unscaled in self._scaled:
            if ref() is tensor:
                tensor = unscaled
                break
        self._losses.append(tensor)
        for state in self._watched.values():
            state["backward_since_step"] = True

    def _wrap_tensor_backward(self, original):
        def backward(tensor, *args, **kwargs):
            self._guarded(self._note_backward)(tensor)
            self._in_backward = True
            try:
                return original(tensor, *args, **kwargs)
            finally:
                self._in_backward = False
        return backward

    def _wrap_autograd_backward(self, original):
        def backward(tensors, *args, **kwargs):
            if not self._in_backward:
                import torch

                if isinstance(tensors, torch.Tensor):
                    self._guarded(self._note_backward)(tensors)
                elif isinstance(tensors, (list, tuple)) and len(tensors) == 1 and isinstance(tensors[0], torch.Tensor):
                    self._guarded(self._note_backward)(tensors[0])
            return original(tensors, *args, **kwargs)
        return backward

    def _wrap_scaler_scale(self, original):
        def scale(scaler, outputs):
            scaled = original(scaler, outputs)
            import torch

            if isinstance(outputs, torch.Tensor) and isinstance(scaled, torch.Tensor):
                self._scaled = [(r, u) for r, u in self._scaled if r() is not None][-8:]
                self._scaled.append((weakref.ref(scaled), outputs))
            return scaled
        return scale

    # -- step boundaries -----------------------------------------------------------------------------------
    def _wrap_optimizer_init(self, original):
        def __init__(optimizer, *args, **kwargs):
            original(optimizer, *args, **kwargs)
            self._optimizers.add(optimizer)
        return __init__

    def _wrap_scaler_step(self, original):
        def step(scaler, optimizer, *args, **kwargs):
            before = self._optimizer_steps
            result = original(scaler, optimizer, *args, **kwargs)
            if self._optimizer_steps == before:  # GradScaler skipped optimizer.step (inf/NaN gradients)
                self._guarded(self._optimizer_stepped)(optimizer, args, kwargs)
            return result
        return step

    def _optimizer_stepped(self, optimizer, args, kwargs):
        self._optimizer_steps += 1
        ids = {id(p) for group in optimizer.param_groups for p in group["params"]}
        for state in list(self._watched.values()):
            if state["params"] & ids:
                state["optimized"] = True
                self._boundary(state)

    def _has_optimizer(self, state) -> bool:
        """Whether a torch.optim optimiser updates this model; sticky, since the script's optimisers are
        gone by the time the script's module is torn down."""
        if not state["optimized"]:
            state["optimized"] = any(state["params"] & {id(p) for g in opt.param_groups for p in g["params"]}
                                     for opt in list(self._optimizers))
        return state["optimized"]

    def _boundary(self, state):
        monitor = state["monitor"]
        monitor.step(loss=self._step_loss())
        state["backward_since_step"] = False
        if all(not s["backward_since_step"] for s in self._watched.values()):
            self._losses, self._scaled = [], []
        self._tell(state)

    def _step_loss(self):
        if not self._losses:
            return None
        if len(self._losses) == 1:
            return self._losses[0]     # the monitor reads it detached
        # gradient accumulation: several backward calls feed one step; their mean is the step's loss
        return sum(t.detach().reshape(()).double() for t in self._losses) / len(self._losses)

    def _tell(self, state):
        """Progress on stderr: each kind's first error or warning as its record arrives (no extra read of
        the statistics: the monitor's own `every` decides when they come), and a heartbeat on long runs."""
        monitor, records = state["monitor"], state["monitor"].records
        for r in records[state["read"]:]:
            if r.get("type") == "finding" and r.get("severity") in ("error", "warning") \
                    and r.get("kind") not in state["reported"]:
                state["reported"].add(r["kind"])
                where = f" in {r['layer']}" if r.get("layer") else ""
                self.progress(f"step {r.get('step')}: {r['severity']} {r['kind']}{where} ({r.get('phase')})")
        state["read"] = len(records)
        now = time.monotonic()
        if now - self._last_progress >= PROGRESS_SECONDS:
            self._last_progress = now
            self.progress(f"step {monitor.steps}")

    def finish(self, status: str = "ok", error: str | None = None):
        """Close every monitor with how the script ended. A script without torch.optim that ended normally
        has its last step still open (nothing follows its last backward): it is closed here. A step cut off
        by an exception is recorded by the monitor itself, as far as it got."""
        for state in self._watched.values():
            if status == "ok" and state["backward_since_step"] and not self._has_optimizer(state):
                self._boundary(state)
            state["monitor"].close(status=status, error=error)


def run_path(script: str, args) -> None:
    """Run `script` as `python SCRIPT ARGS...` would, in this process: __main__, sys.argv, sys.path[0]."""
    script = os.path.abspath(script)
    saved_argv, saved_path = sys.argv, list(sys.path)
    sys.argv = [script, *args]
    sys.path.insert(0, os.path.dirname(script))
    try:
        runpy.run_path(script, run_name="__main__")
    finally:
        sys.argv = saved_argv
        sys.path[:] = saved_path
