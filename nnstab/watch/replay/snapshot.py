"""What a torch model's step is replayed from: the state before its first forward, kept for the latest step only.

Taken by a forward pre-hook on the watched (root) model at its first grad-enabled forward of a step:
  parameters   copied into storage allocated once (one fused copy per device: no allocation), on the
               model's device (replay="device") or in host memory (replay="host", pinned under CUDA);
               frozen ones (requires_grad=False) are referenced, not copied: no optimiser updates them.
               `lazy` (CPU models updated by a torch.optim optimiser): the copy waits for the optimiser's
               step pre-hook and is made only when the step so far holds a NaN/inf — on a healthy step the
               parameters are never copied (the copy and the cache it evicts cost ~15% of a small MLP's
               step); a step with no update leaves the live parameters as the snapshot;
  buffers      cloned (BatchNorm running statistics: small), so the replay starts from the same values;
  per forward  the root's args/kwargs (detached references, not copies), the RNG state (CPU, and every
               CUDA device when CUDA is in use), the autocast state, the module train/eval flags, and,
               through a tensor hook that only keeps a reference, the gradient backward sent into each
               output. Gradient accumulation keeps up to MAX_PASSES forwards of one step.
Nothing here changes a tensor of the run: the copies read the parameters, the hooks return None.
"""
from __future__ import annotations

import torch
from torch.utils._pytree import tree_leaves, tree_map

MAX_PASSES = 8        # forwards kept per step (gradient accumulation); later ones of the step are not replayed
RELIST_EVERY = 64     # steps between re-listing the parameters (a model.to() or a new parameter is seen then)


class Pass:
    """One forward of the step: what it was called with and what flowed back into its outputs."""

    __slots__ = ("args", "kwargs", "rng", "cuda_rng", "autocast", "training", "grads", "out_nodes")

    def __init__(self, args, kwargs, training):
        self.args = _detached_all(args)
        self.kwargs = _detached_all(kwargs)
        self.rng = torch.get_rng_state()
        self.cuda_rng = torch.cuda.get_rng_state_all() if _cuda_in_use() else None
        self.autocast = _autocast_state()
        self.training = training
        self.grads = {}       # index of the output leaf -> gradient backward sent into it
        self.out_nodes = set()  # ids of the outputs' grad_fn nodes (where the loss's graph meets the model)


class TorchSnapshot:
    """The latest step's snapshot of `model` (see the module docstring); `take()` is the pre-hook's work."""

    def __init__(self, model, host: bool):
        self.model = model
        self.host = host
        self.step = -1
        self.params = {}           # name -> copy (the storage is reused from step to step)
        self.requires_grad = {}    # name -> whether the real parameter required grad
        self.buffers = {}          # name -> clone
        self.passes: list[Pass] = []
        self.taken = 0             # snapshots taken (tests and the overhead bench read it)
        self._list = None          # [(name, parameter)], re-listed every RELIST_EVERY steps
        self._pairs = {}           # device -> (copies, parameters) for one fused copy each
        self._modules = None
        self.lazy = False          # copy the parameters only when the optimiser is about to change them
        self.copied = False        # this step's parameters are in self.params
        self.copies = 0            # parameter copies made (tests and the overhead bench read it)
        self._versions = None      # the parameters' version counters at the step's first forward

    def begin(self, step: int):
        """The first forward of `step`: copy the parameters (unless lazy) and the buffers."""
        if self._list is None or step % RELIST_EVERY == 0:
            self._relist()
        self.copied = False
        if not self.lazy:
            self.copy_params()
        self._versions = [p._version for _, p in self._list]
        with torch.no_grad():
            self.buffers = {n: b.clone() for n, b in self.model.named_buffers() if b is not None}
        self.passes = []
        self.step = step
        self.taken += 1

    def copy_params(self):
        """Copy the parameters as they are now (before this step's update) into the snapshot."""
        with torch.no_grad():
            try:
                for dst, src in self._pairs.values():
                    if self.host:
                        for d, s in zip(dst, src):
                            d.copy_(s, non_blocking=True)
                    else:
                        torch._foreach_copy_(dst, src)
            except RuntimeError:       # a parameter changed shape, dtype or device since the last listing
                self._relist()
                for dst, src in self._pairs.values():
                    for d, s in zip(dst, src):
                        d.copy_(s)
        self.copied = True
        self.copies += 1

    def updated(self) -> bool:
        """Whether a parameter was changed in place since the step's first forward (an update)."""
        return self._versions is not None and any(p._version != v for (_, p), v in zip(self._list, self._versions))

    def step_params(self) -> dict:
        """name -> the parameters this step started from: the copy, or, when no copy was made and nothing
        changed them since, the live parameters themselves (a ValueError when they were updated uncopied)."""
        if self.copied:
            return self.params
        if self.updated():
            if self.lazy:    # the optimiser's pre-hook saw nothing to copy for
                raise ValueError("no copy of the step's parameters was kept: just before the optimiser's update "
                                 "the step looked finite (its NaN/inf was only in the loss or in the parameters' "
                                 "gradients, which the monitor reads after the update)")
            raise ValueError("the parameters were updated before the snapshot copied them (an update "
                             "outside torch.optim's step); watch with replay on from the step before")
        return {name: p.detach() for name, p in self._list}

    def on_cpu(self) -> bool:
        return all(p.device.type == "cpu" for _, p in self._list or ())

    def add_pass(self, args, kwargs):
        """A forward of the step (its inputs, RNG and modes); None once MAX_PASSES are kept."""
        if len(self.passes) >= MAX_PASSES:
            return None
        if self._modules is None:
            self._modules = list(self.model.modules())
        p = Pass(args, kwargs, [m.training for m in self._modules])
        self.passes.append(p)
        return p

    def watch_outputs(self, p: Pass, output):
        """Keep, by reference, the gradient backward sends into each output of pass `p`."""
        for k, t in enumerate(tree_leaves(output)):   # (tree_flatten leaves a reference cycle per call)
            if isinstance(t, torch.Tensor) and t.requires_grad and t.is_floating_point():
                if t.grad_fn is not None:
                    p.out_nodes.add(id(t.grad_fn))
                t.register_hook(_keeper(p.grads, k))

    def modules(self):
        if self._modules is None:
            self._modules = list(self.model.modules())
        return self._modules

    def _relist(self):
        self._list = [(n, p) for n, p in self.model.named_parameters()]
        self._modules = list(self.model.modules())
        old = self.params
        self.params, self.requires_grad, pairs = {}, {}, {}
        for name, p in self._list:
            if not p.requires_grad:    # frozen (a fine-tuned model's backbone): no optimiser changes it, so the
                self.params[name] = p.detach()   # live values are the step's; a reference, not a copy
                self.requires_grad[name] = False
                continue
            copy = old.get(name)
            if copy is None or copy.shape != p.shape or copy.dtype != p.dtype or \
                    (not self.host and copy.device != p.device):
                copy = _storage_for(p, self.host)
            self.params[name] = copy
            self.requires_grad[name] = p.requires_grad
            dst, src = pairs.setdefault(p.device, ([], []))
            dst.append(copy)
            src.append(p)
        self._pairs = pairs

    def nbytes(self) -> int:
        """Bytes the parameter copies hold."""
        return sum(t.numel() * t.element_size() for t in self.params.values())


def _storage_for(p, host):
    if not host:
        return torch.empty_like(p, memory_format=torch.preserve_format).detach()
    pin = p.device.type == "cuda"
    return torch.empty(p.shape, dtype=p.dtype, device="cpu", pin_memory=pin)


def _keeper(grads, k):
    def keep(g):
        grads[k] = g if k not in grads else grads[k] + g   # a second backward through the same output adds
    return keep


def _detached(x):
    return x.detach() if isinstance(x, torch.Tensor) else x


def _detached_all(tree):
    """tree with its tensors detached. A forward's usual arguments (a tuple of tensors and plain values,
    a dict of them) directly: torch's tree_map leaves a reference cycle behind each call (a recursive
    closure), garbage a monitored step should not add every step; other structures through tree_map."""
    if type(tree) is tuple and not any(isinstance(v, (tuple, list, dict)) for v in tree):
        return tuple(map(_detached, tree))
    if type(tree) is dict and not any(isinstance(v, (tuple, list, dict)) for v in tree.values()):
        return {k: _detached(v) for k, v in tree.items()}
    return tree_map(_detached, tree)


def _cuda_in_use() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_initialized()


def _autocast_state():
    """{device type: (enabled, dtype)} of the autocast contexts active now (empty when none is)."""
    state = {}
    for dev in ("cpu", "cuda"):
        try:
            if torch.is_autocast_enabled(dev):
                state[dev] = torch.get_autocast_dtype(dev)
        except (RuntimeError, TypeError, AttributeError):   # a device type this build does not know
            pass
    return state
