"""Replay a torch model's step to the operation that made its first NaN/inf, without touching the real run.

The watched model gets a forward pre-hook and a forward hook (registered here, removed on close) that
keep the latest step's snapshot (snapshot.py). When the monitor's first non-finite finding arrives, the
step is run again from the snapshot: torch.func.functional_call on the eager model (a compiled model's
`_orig_mod`) with fresh leaves made from the parameter copies and clones of the buffers, every module
hook and global module hook set aside, other torch function/dispatch modes (a lint, a profiler) set
aside, the RNG set to each forward's saved state, the same autocast; then torch.autograd.grad from the
gradients the real backward sent into the outputs (no .grad is touched). Everything is restored after,
so the run continues exactly as it would have. The finder (finder.py) names the first operation.
"""
from __future__ import annotations

import contextlib
import time

import torch
from torch.nn.modules import module as nn_module
from torch.utils._pytree import tree_flatten

from nnstab.watch.replay.finder import Finder
from nnstab.watch.replay.snapshot import TorchSnapshot, _cuda_in_use

_MODULE_HOOKS = ("_forward_hooks", "_forward_hooks_with_kwargs", "_forward_hooks_always_called",
                 "_forward_pre_hooks", "_forward_pre_hooks_with_kwargs", "_backward_hooks",
                 "_backward_pre_hooks")
_GLOBAL_HOOKS = ("_global_forward_pre_hooks", "_global_forward_hooks", "_global_forward_hooks_with_kwargs",
                 "_global_forward_hooks_always_called", "_global_backward_pre_hooks", "_global_backward_hooks")
LOSS_OPS_SHOWN = 12   # autograd nodes named between the loss and the model's outputs


class TorchReplayer:
    framework = "torch"

    def __init__(self, model, mode: str):
        self.model = model
        self.mode = mode
        self.snapshot = TorchSnapshot(model, host=(mode == "host"))
        self.step = 0
        self.runs = 0              # replays run (0 on a healthy run)
        self.seconds = 0.0         # time they took
        self.optimizer = None      # (class name, lr) of the last optimiser that stepped this model
        self.loss = None           # the step's loss tensor, kept only for a step found non-finite
        self._pass = None
        self._handles = []
        self.broken = None         # why the snapshots stopped, if a hook failed
        self.stopped = False
        self._optimizer_hook = None
        self._pre_step_hook = None
        self.suspect = None        # () -> whether the step so far holds a NaN/inf (set by the monitor)
        self._pre_stepped = False  # an optimiser of this model's parameters began a step in this step

    # -- hooks ------------------------------------------------------------------------------------
    def start(self):
        from torch.optim import optimizer as optim_module

        self._handles = [
            self.model.register_forward_pre_hook(self._pre, with_kwargs=True),
            self.model.register_forward_hook(self._post),
        ]
        self._optimizer_hook = optim_module.register_optimizer_step_post_hook(self._stepped)
        self._pre_step_hook = optim_module.register_optimizer_step_pre_hook(self._before_update)
        self._params = None
        return self

    def stop(self):
        """No more snapshots: the model's hooks off, the snapshot's references dropped. The optimiser hook
        stays (inert) until close(): a replay may run inside torch's loop over those hooks (`nnstab run`
        steps the monitor from one), which must not change size while it runs."""
        for h in self._handles:
            h.remove()
        self._handles = []
        self.snapshot.passes = []
        self.loss = None
        self.stopped = True

    def close(self):
        self.stop()
        if self._optimizer_hook is not None:
            self._optimizer_hook.remove()
            self._optimizer_hook = None
        if self._pre_step_hook is not None:
            self._pre_step_hook.remove()
            self._pre_step_hook = None

    def _pre(self, module, args, kwargs):
        if self.broken is not None or not torch.is_grad_enabled() or torch.compiler.is_compiling():
            return None
        try:
            snap = self.snapshot
            if snap.step != self.step:
                snap.begin(self.step)
            self._pass = snap.add_pass(args, kwargs)
        except Exception as exc:   # never into training: the replay is off from here on, and says why
            self._broke("taking the step's snapshot", exc)
        return None

    def _post(self, module, args, output):
        p, self._pass = self._pass, None
        if p is not None and self.broken is None and torch.is_grad_enabled():
            try:
                self.snapshot.watch_outputs(p, output)
            except Exception as exc:
                self._broke("watching the outputs' gradients", exc)
        return None

    def _before_update(self, optimizer, args, kwargs):
        """An optimiser is about to update: a lazy snapshot copies this model's parameters now if the step
        so far (forward and backward) holds a NaN/inf; a healthy step's parameters are never copied."""
        if self.stopped or self.broken is not None:
            return
        try:
            if not self._updates_model(optimizer):
                return
            self._pre_stepped = True
            snap = self.snapshot
            if snap.lazy and not snap.copied and snap.step == self.step and self.suspect is not None \
                    and self.suspect():
                snap.copy_params()
        except Exception as exc:
            self._broke("copying the parameters before the update", exc)

    def _updates_model(self, optimizer) -> bool:
        if self._params is None:
            self._params = {id(p) for p in self.model.parameters()}
        return any(id(p) in self._params for g in optimizer.param_groups for p in g["params"])

    def _stepped(self, optimizer, args, kwargs):
        if self.stopped:
            return
        try:
            if self._params is None:
                self._params = {id(p) for p in self.model.parameters()}
            group = optimizer.param_groups[0] if optimizer.param_groups else {}
            if any(id(p) in self._params for g in optimizer.param_groups for p in g["params"]):
                self.optimizer = (type(optimizer).__name__, group.get("lr"))
        except Exception as exc:
            self._broke("noting the optimiser", exc)

    def _broke(self, what, exc):
        self.broken = f"{what} failed: {type(exc).__name__}: {exc}"
        self.snapshot.passes = []

    def stepped(self, step: int):
        """monitor.step() ended step `step - 1`: the next forward takes a new snapshot. Lazy copies from now
        on when this model lives on the CPU and its update came through a torch.optim step (whose pre-hook
        copies when needed); eager ones when its parameters changed without one (updates by hand). On an
        accelerator the copy stays eager: it is cheap there, and deciding would cost a synchronisation."""
        snap = self.snapshot
        if self._pre_stepped:
            snap.lazy = snap.on_cpu()
        elif snap.updated():
            snap.lazy = False
        self._pre_stepped = False
        self.step = step

    # -- the replay ---------------------------------------------------------------------------------
    def replay(self, finding, update_from_snapshot: bool) -> dict:
        """Run the snapshot's step again and say where its first NaN/inf was made (a details dict)."""
        t0 = time.perf_counter()
        self.runs += 1
        try:
            if self.snapshot.host and _cuda_in_use():
                torch.cuda.synchronize()   # the copies into host memory were queued without waiting
            if finding.phase == "update":
                return self._update(finding, update_from_snapshot)
            snap = self.snapshot
            if self.broken is not None:
                return {"status": "failed", "reason": self.broken}
            if not snap.passes:
                return {"status": "failed", "reason": "no training forward of this step was recorded"}
            finder = self._run(snap)
            return self._verdict(finder, finding, snap)
        finally:
            self.seconds += time.perf_counter() - t0

    def _run(self, snap) -> Finder:
        from nnstab.lint.where import ModuleTracker

        eager, prefix = _inner(self.model)
        device = {n: p.device for n, p in self.model.named_parameters()}
        with _set_aside(eager, snap.modules()):
            tracker = ModuleTracker(eager)
            tracker.attach()
            try:
                finder = Finder(tracker)
                params = {}
                for name, copy in snap.step_params().items():
                    name = name[len(prefix):] if name.startswith(prefix) else name
                    t = copy.to(device.get(prefix + name, copy.device), non_blocking=True) if self.snapshot.host \
                        else copy
                    params[name] = t.detach().requires_grad_(snap.requires_grad.get(prefix + name, False))
                state = {**params, **{(n[len(prefix):] if n.startswith(prefix) else n): b.clone()
                                      for n, b in snap.buffers.items()}}
                leaves = [t for t in params.values() if t.requires_grad]
                finder.lint = []                 # what nnstab.lint says of the replayed forwards
                for k, p in enumerate(snap.passes):
                    finder.pass_index = k
                    self._one_pass(eager, state, leaves, p, finder)
                    if finder.events:
                        break
                shown = prefix.replace("_orig_mod.", "")   # layer names as the monitor gives them
                for e in finder.events:
                    e.module = shown + e.module if e.module else shown.rstrip(".")
                return finder
            finally:
                tracker.detach()

    def _one_pass(self, eager, state, leaves, p, finder):
        for m, flag in zip(self.snapshot.modules(), p.training):
            m.training = flag
        torch.set_rng_state(p.rng)
        if p.cuda_rng is not None:
            torch.cuda.set_rng_state_all(p.cuda_rng)
        with contextlib.ExitStack() as stack:
            for dev, dtype in p.autocast.items():
                stack.enter_context(torch.autocast(dev, dtype=dtype))
            stack.enter_context(torch.enable_grad())
            finder.phase = "forward"
            with finder:
                # the lint's mode innermost: it sees the user's calls first (the finder's frames would hide the
                # user's line from it; its own frames are transparent to the finder) and names the stable form
                linter = _start_linter(eager)
                try:
                    out = torch.func.functional_call(eager, state, tuple(p.args), dict(p.kwargs), strict=False)
                finally:
                    finder.lint += _close_linter(linter)
        outs, grads = [], []
        flat, _ = tree_flatten(out)
        for k, g in p.grads.items():
            if k < len(flat) and isinstance(flat[k], torch.Tensor) and flat[k].requires_grad:
                outs.append(flat[k])
                grads.append(g)
        if outs and leaves and not finder.events:
            finder.phase = "backward"
            with finder:
                torch.autograd.grad(outs, leaves, grads, allow_unused=True)
        finder.out_finite &= all(bool(torch.isfinite(t).all()) for t in flat
                                 if isinstance(t, torch.Tensor) and t.is_floating_point())
        finder.grads_finite &= all(bool(torch.isfinite(g).all()) for g in grads)

    def _verdict(self, finder, finding, snap) -> dict:
        base = {"status": "found", "ops_checked": finder.ops, "passes": len(snap.passes), "mode": self.mode}
        # a loss that went non-finite first: backward ran from it already broken, its events are consequences
        events = [e for e in finder.events if not (finding.phase == "loss" and e.phase == "backward")]
        if events:
            ev = _choose(events, finding)
            base.update(ev.to_dict())
            lint = _lint_for(getattr(finder, "lint", []), base)
            if lint is not None:
                base["formula"], base["replacement"] = lint.details["formula"], lint.details["replacement"]
            if ev.pass_index:
                base["pass"] = ev.pass_index
            others = [e for e in events if e is not ev][:3]
            if others:
                base["also"] = [{"op": e.op, "module": e.module, "phase": e.phase,
                                 "source": e.source.short if e.source else None} for e in others]
            return base
        if finder.out_finite and (not finder.grads_finite or finding.phase == "loss"
                                  or (finding.details or {}).get("source") == "loss"):
            base.update(status="found", phase="loss", op=None, module="", source=None, code=None,
                        reason="the model's outputs were finite when replayed; the NaN/inf was made "
                               "in the loss, computed outside the model")
            chain = _loss_chain(self.loss, snap)
            if chain:
                base["loss_ops"] = chain
            return base
        if not finder.out_finite:
            # the replay went non-finite too, but no operation made NaN/inf from finite inputs: it came in
            # with parameters already broken, or from infinities an operation was given on purpose
            bad = _nonfinite_names(snap.step_params().items())
            base.update(status="unattributed", op=None, source=None, code=None, parameters=bad[:8],
                        reason=(f"the step's parameters {', '.join(bad[:8])} were already NaN/inf when it began "
                                f"(a checkpoint or an edit before this step)" if bad else
                                "every NaN/inf of the replay came from operations given infinities, not from "
                                "finite inputs (a -inf mask over a whole row before a softmax, inf - inf)"))
            return base
        base.update(status="not_reproduced",
                    reason="the replayed step was finite: the step is not reproducible (a nondeterministic "
                           "operation, data changed in place after the forward, or state outside the model)")
        return base

    def _update(self, finding, from_snapshot: bool) -> dict:
        bad = _nonfinite_names(self.model.named_parameters())
        d = {"status": "found", "phase": "update", "op": None, "module": finding.layer, "source": None,
             "code": None, "parameters": bad[:8]}
        if self.optimizer is not None:
            d["optimizer"], d["lr"] = self.optimizer
        if from_snapshot:    # seen at the end of the step itself: its gradients and starting values are at hand
            params = dict(self.model.named_parameters())
            grads = [params[n].grad for n in bad if params[n].grad is not None]
            if grads:
                d["grads_finite"] = all(bool(torch.isfinite(g).all()) for g in grads)
            if self.snapshot.copied:
                d["before_finite"] = all(bool(torch.isfinite(self.snapshot.params[n]).all())
                                         for n in bad if n in self.snapshot.params)
        return d


def _start_linter(model):
    """nnstab.lint's Linter on the replay's model, started; None if it cannot start (the replay goes on)."""
    try:
        from nnstab.lint import Linter

        return Linter(model).start()
    except Exception:
        return None


def _close_linter(linter) -> list:
    if linter is None:
        return []
    try:
        return linter.close()
    except Exception:
        return []


def _lint_for(found, event):
    """The lint finding of the replayed forward at the failing operation's line (else in its module), if any."""
    at_line = [f for f in found if f.details.get("file") == event.get("file") and f.details.get("line") == event.get("line")]
    in_module = [f for f in found if f.layer == event.get("module")]
    return (at_line or in_module or [None])[0]


def _inner(model):
    """The module to replay and the prefix of its names in `model`: a compiled model's eager original
    (`_orig_mod`), a DistributedDataParallel/DataParallel's `module` (replaying through the wrapper would
    start collectives that the other ranks never join)."""
    wrappers = (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)
    inner, prefix = model, ""
    while True:
        orig = getattr(inner, "_orig_mod", None)
        if isinstance(orig, torch.nn.Module):
            inner, prefix = orig, prefix + "_orig_mod."
        elif isinstance(inner, wrappers):
            inner, prefix = inner.module, prefix + "module."
        else:
            return inner, prefix


def _nonfinite_names(named) -> list[str]:
    """The names of the (name, tensor) pairs holding a NaN/inf."""
    return [name for name, t in named if not bool(torch.isfinite(t.detach()).all())]


def _choose(events, finding):
    """The event matching the monitor's finding (its phase, inside its layer), else the first."""
    layer = finding.layer

    def inside(e):
        return not layer or e.module == layer or e.module.startswith(layer + ".")
    for test in (lambda e: e.phase == finding.phase and inside(e), lambda e: e.phase == finding.phase):
        for e in events:
            if test(e):
                return e
    return events[0]


def _loss_chain(loss, snap) -> list[str]:
    """Names of the autograd nodes from the loss down to the model's outputs, in forward order."""
    if not isinstance(loss, torch.Tensor) or loss.grad_fn is None:
        return []
    stops = set().union(*(p.out_nodes for p in snap.passes)) if snap.passes else set()
    names, seen, todo = [], set(), [loss.grad_fn]
    while todo and len(names) < LOSS_OPS_SHOWN:
        node = todo.pop(0)
        if node is None or id(node) in seen or id(node) in stops:
            continue
        seen.add(id(node))
        if type(node).__name__ != "AccumulateGrad":
            names.append(node.name())
        todo.extend(n for n, _ in node.next_functions)
    return names[::-1]


@contextlib.contextmanager
def _set_aside(root, modules):
    """Every hook of the model's modules, the global module hooks, the torch function and dispatch modes
    of this thread, the RNG state and the train/eval flags: out of the way while replaying, back after."""
    from torch.utils._python_dispatch import _disable_current_modes

    saved_hooks = []
    for m in modules:
        for name in _MODULE_HOOKS:
            d = m.__dict__.get(name)
            if d:
                saved_hooks.append((d, list(d.items())))
                d.clear()
    for name in _GLOBAL_HOOKS:
        d = getattr(nn_module, name, None)
        if d:
            saved_hooks.append((d, list(d.items())))
            d.clear()
    flags = [m.training for m in modules]
    rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if _cuda_in_use() else None
    function_modes = []
    while torch._C._len_torch_function_stack() > 0:
        function_modes.append(torch._C._pop_torch_function_stack())
    try:
        with _disable_current_modes():
            yield
    finally:
        for mode in reversed(function_modes):
            torch._C._push_on_torch_function_stack(mode)
        torch.set_rng_state(rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)
        for m, flag in zip(modules, flags):
            m.training = flag
        for d, items in saved_hooks:
            d.clear()
            d.update(items)
