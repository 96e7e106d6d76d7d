"""How the monitor watches a torch.nn.Module: one forward hook per module, node hooks for gradients.

Cost discipline, one fused reduction per tensor: a module output's sum (NaN/inf exactly when one of its
values is), a gradient's sum of squares (one BLAS dot on the CPU), a ReLU's per-unit max; min/max,
value samples and parameter norms only on the steps their checks are scheduled.
  on an accelerator  the reductions are launched in the hooks and stay device tensors; `read()` moves
                     every pending result to the host in one transfer (never a synchronisation per hook);
  on the CPU         there is no device to wait for, but Python between layers runs with cold caches:
                     the forward hooks only append what they saw; the calls are recorded and the whole
                     pass is measured in one tight loop when the model's forward returns (adapters/
                     base.py: link_pending, flush_forward); results are Python floats at once.
Measurements read detached tensors; hooks never modify a tensor and return None.

Only module forward hooks are registered on modules (`_forward_hooks`; a forward pre-hook too on
modules with inplace=True, see torch_modes.py); gradients are watched with pre-hooks on the autograd
nodes of the step's own activations (torch_grads.py), which go away with the step's graph, so
`detach()` leaves every hook dictionary of every module exactly as it was. Activation checkpointing,
torch.compile and in-place operations: torch_modes.py.
"""
from __future__ import annotations

import dataclasses
import math

import torch
from torch import Tensor, nn

from nnstab.watch import tape as T
from nnstab.watch.adapters.base import BaseAdapter, LayerInfo
from nnstab.watch.adapters.torch_grads import HALVES, GradsMixin, _min_max, _sumsq
from nnstab.watch.options import distributed
from nnstab.watch.adapters.torch_modes import (FULLGRAPH_NOTE, ModesMixin, checkpoint_ctx, eager,
                                               graph_breaks_allowed, in_backward, unwrap_compiled)
from nnstab.watch.tape import SAMPLE_SIZE, sample_stride

_compiling = torch.compiler.is_compiling
_grad_enabled = torch.is_grad_enabled
_graph_task_id = torch._C._current_graph_task_id

RELU_TYPES = (nn.ReLU, nn.ReLU6)
SIGMOID_TYPES = (nn.Sigmoid,)
TANH_TYPES = (nn.Tanh,)
SOFTMAX_TYPES = (nn.Softmax,)
# Modules that cannot turn finite inputs into NaN/inf (so never the origin of one), and whose
# gradients need no separate look: their consumer's and producer's tensors tell the story.
THROUGH_TYPES = RELU_TYPES + SIGMOID_TYPES + TANH_TYPES + SOFTMAX_TYPES + (
    nn.Identity, nn.Flatten, nn.Unflatten, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
    nn.LeakyReLU, nn.Hardtanh, nn.Hardsigmoid, nn.LogSoftmax, nn.GELU, nn.SiLU, nn.Softsign, nn.Tanhshrink,
)
CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
# Modules whose tensor input and output are floating whenever they run at all (no dtype question asked).
FLOAT_IN_OUT = THROUGH_TYPES + CONV_TYPES + (
    nn.Linear, nn.Bilinear, nn.LayerNorm, nn.GroupNorm, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d,
    nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d, nn.ELU, nn.SELU, nn.CELU, nn.Softplus, nn.Mish,
)


def _units_of(module):
    """(unit statistic, centre) for activations with units: relu / sigmoid / tanh / softmax; else None."""
    if isinstance(module, RELU_TYPES):
        return "relu", None
    if isinstance(module, SIGMOID_TYPES):
        return "sigmoid", 0.5
    if isinstance(module, TANH_TYPES):
        return "tanh", 0.0
    if isinstance(module, SOFTMAX_TYPES):
        return "softmax", module.dim
    return None


def _tensors(x, depth=0):
    """The tensors in x: a tensor, or (nested up to 3 levels) tuples, lists, dict values and dataclass
    fields of them (a model returning a @dataclass of logits and loss)."""
    if isinstance(x, torch.Tensor):
        yield x
    elif depth < 3 and isinstance(x, (tuple, list)):
        for v in x:
            yield from _tensors(v, depth + 1)
    elif depth < 3 and isinstance(x, dict):
        for v in x.values():
            yield from _tensors(v, depth + 1)
    elif depth < 3 and dataclasses.is_dataclass(x) and not isinstance(x, type):
        for field in dataclasses.fields(x):
            yield from _tensors(getattr(x, field.name, None), depth + 1)


class TorchAdapter(GradsMixin, ModesMixin, BaseAdapter):
    framework = "torch"
    SENTINELS = True

    def __init__(self, model):
        super().__init__(model)
        self.float_in, self.float_out = [], []   # per layer: known to take / give floating tensors
        self.held = []                           # gradients held back until the step's end (sentinel mode)
        self._own = None                         # layer -> its own parameters (for the sentinels)
        self._trainable = {}                     # layer -> how many of its own values train (recounted now and then)
        self._stand_ins = []                     # this backward's _StandIns, their gradients taken as it ends
        self._stand_in_task = None               # the backward (graph task) they belong to
        self.stand_ins = True                    # large gradients may be replaced by stand-ins (one process)
        self._reset_checkpoints()
        self._wrappers = {}                      # id(module) -> the OptimizedModule wrapping it (torch.compile)

    # -- the model ---------------------------------------------------------------------------
    def _modules(self):
        modules, self._wrappers = unwrap_compiled(self.model.named_modules())   # the user's names, compiled or not
        return modules

    def accelerated(self):
        for p in self.model.parameters():
            return p.device.type != "cpu"     # the first parameter tells where the model lives
        return False

    def layer_info(self, name, module) -> LayerInfo:
        params = list(module.parameters(recurse=False))
        dtype = str(params[0].dtype).replace("torch.", "") if params else ""
        return LayerInfo(name, type(module).__name__, dtype, sum(p.numel() for p in params))

    def _role(self, module):
        return T.THROUGH if isinstance(module, THROUGH_TYPES) else T.COMPUTE

    def _attach_one(self, idx, module):
        role, units = self._role(module), _units_of(module)
        conv = isinstance(module, CONV_TYPES)
        self.float_in.append(isinstance(module, FLOAT_IN_OUT))
        self.float_out.append(isinstance(module, FLOAT_IN_OUT))
        where = f"forward hook of {self.names[idx] or 'the model'!r}"

        def run(mod, inputs, output):
            if self.active and self.tape is not None and idx not in self.disabled:
                try:   # measurements work on detached tensors: nothing enters the autograd graph
                    if in_backward():                  # a checkpoint recomputing its segment
                        self.recomputed(idx, role, inputs, output)
                    elif torch.is_grad_enabled():
                        if self.defer:                 # host tensors: noted now, recorded as the forward ends
                            hint = (output._version, output.grad_fn) if type(output) is Tensor else None
                            self.pending.append((idx, role, units, conv, inputs, output, hint))
                            if idx == 0 or idx in self.modified_layers:
                                self.link_pending()
                        else:
                            self.record_forward(idx, role, units, conv, inputs, output)
                    else:                              # no_grad: an evaluation, or a reentrant checkpoint
                        ctx = checkpoint_ctx(backward=False)
                        if ctx is not None:
                            self.checkpointed(ctx, idx, role, units, conv, inputs, output)
                except Exception as exc:   # never into training
                    self.fail(where, exc, idx)

        run_eagerly = []                 # run, as dynamo sees it: made when first traced (it imports dynamo)
        note = self.pending.append       # the common case, kept short: it runs between two layers

        def hook(mod, inputs, output):
            if _compiling():                           # dynamo is tracing this call
                if graph_breaks_allowed():             # end the graph here, run the hook on real tensors
                    if not run_eagerly:
                        run_eagerly.append(eager(run))
                    return run_eagerly[0](mod, inputs, output)
                self.notes.add(FULLGRAPH_NOTE)          # fullgraph=True: not seen inside the graph
                return None
            if self.noting and _graph_task_id() == -1 and _grad_enabled() and idx not in self.disabled:
                note((idx, role, units, conv, inputs, output,
                      (output._version, output.grad_fn) if type(output) is Tensor else None))
                if idx == 0 or idx in self.modified_layers:
                    self.link_pending()
                return None
            return run(mod, inputs, output)

        target = self._wrappers.get(id(module), module)  # a compiled module's hooks go on its wrapper
        if getattr(module, "inplace", False) is True:  # ReLU(inplace=True) & co: look at the input first
            self.handles.append(target.register_forward_pre_hook(self._before_inplace))
        return target.register_forward_hook(hook)

    def floats(self, x, layer, inputs=False):
        if type(x) is tuple and len(x) == 1:
            x = x[0]
        if type(x) is torch.Tensor:
            # modules known to take and give floating tensors are not asked (each question costs)
            if (self.float_in if inputs else self.float_out)[layer] or x.is_floating_point():
                return (x,)
            return ()
        return [t for t in _tensors(x) if t.is_floating_point()]

    def _from_conv(self, rec, tape):
        p = rec.producer
        while p >= 0:
            call = tape.calls[p]
            if isinstance(self.modules[call.layer], CONV_TYPES):
                return True
            if call.role is not T.THROUGH or not call.inputs:
                return False
            p = call.inputs[0].producer
        return False

    # -- measurements (each: one reduction; on the CPU a float, elsewhere a device tensor) --------------
    def _finite(self, tape, layer, t, rec):
        return tape.add(T.FINITE, layer, t.dtype, (self._finite_value(t),), trec=rec)

    def _finite_value(self, t):
        x = t.detach()
        dtype = x.dtype
        if self.on_cpu and dtype is not torch.bfloat16:
            s = (x.sum(dtype=torch.float32) if dtype is torch.float16 else x.sum()).item()
            if s - s != 0:          # inf or NaN (cheaper than math.isinf here); tell the two apart exactly
                s = _sum(x)
            return s
        return _sum(x)

    def _range(self, tape, layer, t):
        x = t.detach()
        tape.add(T.RANGE, layer, t.dtype, _min_max(x))

    def _sample(self, tape, layer, t, role, pass_id=None):
        x = t.detach().reshape(-1)
        n = x.numel()
        step = sample_stride(n)
        tape.add(T.SAMPLE, layer, t.dtype, vectors=(x[::step][:SAMPLE_SIZE].clone(),), aux=(role, n), pass_id=pass_id)

    def _units(self, tape, layer, units, conv, rec, t):
        kind, arg = units
        nd = t.dim()
        if nd < 2 or not (tape.plan.units if kind == "relu" else tape.plan.sat):
            return
        x = t.detach()
        if kind == "softmax":
            dim = arg if arg is not None else (0 if nd in (0, 1, 3) else 1)
            tape.add(T.SOFTMAX, layer, t.dtype, vectors=(x.amax(dim),))   # each row's largest probability
            return
        # a unit is a channel of (N, C, ...) convolution outputs, else a feature (the last dimension)
        unit_dim = 1 if nd >= 4 or (nd == 3 and (conv or self._from_conv(rec, tape))) else nd - 1
        if unit_dim == 1 and nd > 2:      # reduce the positions first, the fast contiguous way
            x = x.reshape(x.shape[0], x.shape[1], -1)
            dims = (0, 2)
        else:
            dims = tuple(d for d in range(nd) if d != unit_dim)
        if kind == "relu":                # per unit, its largest output over the batch (0: dead on it)
            tape.add(T.RELU, layer, t.dtype, vectors=(x.amax(dims),))
        else:                             # per unit, the mean squared distance from the steepest point
            d = x - 0.5 if kind == "sigmoid" else x
            tape.add(T.SAT, layer, t.dtype, vectors=((d * d).mean(dims, dtype=torch.float32),), aux=kind)

    # -- the step's end --------------------------------------------------------------------------
    def _param_lists(self):
        """[(layer, its own parameters)] for layers that have any, listed once: the tree does not change."""
        if self._own_params is None:
            lists = [(k, list(m.parameters(recurse=False))) for k, m in enumerate(self.modules)]
            self._own_params = [(k, ps) for k, ps in lists if ps]
        return self._own_params

    def _params(self, tape, only=None, grads_only=False):
        with torch.no_grad():
            for k, params in self._param_lists():
                if only is not None and k != only:
                    continue
                params = [p for p in params if p.requires_grad]
                if not params:
                    continue
                grads = [p.grad for p in params if p.grad is not None and not p.grad.is_sparse]
                norms = ([] if grads_only else [_sumsq(p) for p in params]) + [_sumsq(g) for g in grads]
                tape.add(T.PARAM, k, params[0].dtype, norms,
                         aux=(0 if grads_only else len(params), len(grads), only is not None))

    def begin(self, step, plan):
        self._reset_checkpoints()
        if step % 64 == 0:          # layers frozen or unfrozen since: a stale count only costs, never misses
            self._trainable.clear()
            self.stand_ins = distributed()[1] in (None, 1)   # not where gradients are all-reduced
        self._stand_ins = []
        return super().begin(step, plan)

    def end(self, loss=None, scaler_state=None):
        self._reset_checkpoints()
        return super().end(loss, scaler_state)

    def check_loss(self, loss):
        if isinstance(loss, torch.Tensor):
            if loss.numel() != 1 or not loss.is_floating_point():
                raise TypeError(f"loss must be a scalar (one-element floating tensor) or a float, "
                                f"got a tensor of shape {tuple(loss.shape)} and dtype {loss.dtype}; "
                                f"pass loss=loss.mean() or loss.item()")
        elif loss is not None and not isinstance(loss, (int, float)) and not hasattr(loss, "__float__"):
            raise TypeError(f"loss must be a one-element tensor, a float or None, got {type(loss).__name__}")

    def _loss(self, tape, loss):
        if isinstance(loss, torch.Tensor):
            x = loss.detach()
            if x.device.type == "cpu" and not self.read_loss_now:
                x = x.view(()) if x.dim() else x   # read with the pending steps' other statistics: one warm
            elif x.device.type == "cpu":            # loop of reads then, not a read between training steps
                x = x.item()
            else:
                x = x.reshape(())
            return tape.add(T.LOSS, None, loss.dtype, (x,))
        return tape.add(T.LOSS, None, "float64", (float(loss),))

    def _scale(self, tape, scaler_state):
        return tape.add(T.SCALE, None, "float32", tuple(x.detach().reshape(()).clone() for x in scaler_state))

    def read(self, tapes):
        scalars = [s for tp in tapes for s in tp.scalars]
        vectors = [v for tp in tapes for v in tp.vectors]
        late = [k for k, s in enumerate(scalars) if type(s) is not float]
        if all(scalars[k].device.type == "cpu" for k in late) and all(v.device.type == "cpu" for v in vectors):
            # host tensors: CPU statistics were read as they were made, a memory load each (the losses now)
            svals, vals = scalars, [_host(v) for v in vectors]
            if late:
                svals = list(scalars)
                for k in late:
                    svals[k] = svals[k].item()
        else:
            on_device = [k for k, s in enumerate(scalars) if type(s) is not float]
            got, vals = _gather([scalars[k] for k in on_device], [v.reshape(-1) for v in vectors])
            svals = list(scalars)                  # the one host-device synchronisation is in _gather
            for k, v in zip(on_device, got):
                svals[k] = v
        s0 = v0 = 0
        for tp in tapes:
            ns, nv = len(tp.scalars), len(tp.vectors)
            tp.set_values(svals[s0:s0 + ns] if len(tapes) > 1 else svals, vals[v0:v0 + nv])
            s0, v0 = s0 + ns, v0 + nv


def _host(v):
    """A CPU tensor's values as a NumPy array (float32 or float64; halves widened)."""
    if v.dtype in HALVES:
        v = v.float()
    return v.detach().numpy().reshape(-1)


def _gather(scalars, vectors):
    """Every scalar and vector in one device->host copy: (list of floats, list of float64 arrays)."""
    parts = ([torch.stack([s.float() if s.dtype in HALVES else s for s in scalars])] if scalars else []) + vectors
    if not parts:
        return [], []
    try:
        flat = torch.cat([p if p.dtype not in HALVES else p.float() for p in parts])
    except RuntimeError:   # results on several devices (model parallelism): gather on the host
        flat = torch.cat([p.detach().to("cpu").float() for p in parts])
    host = flat.detach().to("cpu").double().numpy()
    n = len(scalars)
    svals = host[:n].tolist()
    vals, off = [], n
    for v in vectors:
        vals.append(host[off:off + v.numel()])
        off += v.numel()
    return svals, vals


def _sum(x):
    """sum(x), NaN/inf exactly when a value of x is: a float on the CPU, a float64 device tensor elsewhere.

    On the CPU the float32 sum (one fast pass) is read at once; in the rare case it is infinite the
    sum is redone in float64, which tells a true infinity from a sum beyond float32's range, and when
    it is NaN, a look for infinities tells an overflow (+inf and -inf summing to NaN) from a NaN made
    otherwise. On a GPU, where the reduction is memory-bound, it accumulates in float64 from the start
    and is not waited for.
    """
    if x.device.type != "cpu":
        return x.sum(dtype=torch.float64)
    s = (x.sum(dtype=torch.float32) if x.dtype in HALVES else x.sum()).item()
    if math.isinf(s):
        s = x.double().sum().item()
    if s != s and bool(torch.isinf(x).any()):
        s = math.inf          # +inf and -inf summed to NaN: values overflowed (NaN may follow from them)
    return s
