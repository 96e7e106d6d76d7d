"""One training step as the hooks saw it, framework-neutral: module calls, the tensors between them, and measurements.

Each measurement is a few numbers (a sum, a min and a max) or a small vector (per unit) appended to
the step's Tape: Python floats on the CPU, device tensors on an accelerator, never read there on the
spot. Every `every` steps the adapter `read()`s the pending tapes (one transfer for device results) into
`svals` (floats) and `vvals` (NumPy vectors); `nnstab.watch.summary` turns a read tape into the
StepView the checks see.

Vocabulary:
  TRec   one tensor (array) that crossed a module boundary: who produced it, who consumed it, which
         measurement says whether its values were finite, and whether its gradient was measured.
  Call   one forward call of a watched module, in completion order (children complete before parents).
  Meas   one measurement: what it is, which layer it belongs to, and where its numbers sit.
"""
from __future__ import annotations

import functools
import math

import numpy as np

# What a measurement holds (the numbers, in order):
FINITE = "finite"    # sum of a forward tensor: NaN/inf exactly when one of its values is
SKIPPED = "skipped"  # a FINITE not taken: the step's sentinels showed the pass finite (its value reads 0.0)
RANGE = "range"      # min, max of a module output
GRAD = "grad"        # sum of squares of a gradient (NaN/inf when a value is, or beyond ~1e19 in float32)
GRAD_RANGE = "grad_range"   # min, max of a gradient
GRAD_VIA = "grad_via"       # NaN/inf exactly when a gradient not held was: its layer's parameter gradients'
                            # sum of squares (sentinel mode, large gradients; see adapters/torch_grads.py)
SAMPLE = "sample"    # vector: a fixed subsample of a tensor's values (aux: (role, element count))
RELU = "relu"        # vector: per-unit max over the batch (0 = the unit was zero on the whole batch)
SAT = "sat"          # vector: per-unit mean squared distance from the activation's steepest point (aux: kind)
SOFTMAX = "softmax"  # vector: each softmax row's largest probability
PARAM = "param"      # per layer: sums of squares of its parameters, then of their gradients
                     # (aux: (n params, n grads, measured at forward time))
LOSS = "loss"        # the loss
SCALE = "scale"      # AMP: the GradScaler's scale (and found_inf when update() had not run yet)

SAMPLE_SIZE = 1024   # values per tensor for the underflow shares: +-3% at 95% (thresholds are 10% and 50%)


def sample_stride(n: int) -> int:
    """A stride that takes at most SAMPLE_SIZE of n values; prime, so it does not alias with a layer's width."""
    if n <= SAMPLE_SIZE:
        return 1
    return _prime_at_least(-(-n // SAMPLE_SIZE))


@functools.lru_cache(maxsize=256)
def _prime_at_least(k: int) -> int:
    while any(k % d == 0 for d in range(2, int(k ** 0.5) + 1)) or k < 2:
        k += 1
    return k


# Module roles: what a call can do to the numbers flowing through it.
COMPUTE = "compute"  # may create NaN/inf or change magnitudes (Linear, Conv, norms, custom modules, containers)
THROUGH = "through"  # cannot turn finite values non-finite (Dropout, Flatten, pools, Identity, activations)


class TRec:
    __slots__ = ("producer", "consumers", "meas", "grad_meas", "root_output", "version", "state")

    def __init__(self, producer: int, meas=None):
        self.producer = producer      # index of the producing Call, -1 when it came from outside the watched modules
        self.consumers = []           # indices of the Calls that took it as an input
        self.meas = meas              # index of the Meas telling whether its values were finite (None: unknown)
        self.grad_meas = None         # index of the Meas of its gradient, once measured
        self.root_output = False      # it is (an) output of the watched model: its gradient comes from the loss
        self.version = None           # the tensor's in-place version counter when its measurement was noted
        self.state = NOTED            # NOTED | EARLY (measured before an in-place op) | MODIFIED (see below)


# Deferred measurements and in-place operations (host tensors are measured when the forward pass ends):
NOTED = 0      # measured when the pass ends, as made (its version counter has not moved)
EARLY = 1      # measured before an in-place module (ReLU(inplace=True) & co) overwrote it: as made
MODIFIED = 2   # something changed it in place before it was measured (`h += ...` in a parent's forward):
               # its values are not the module's own, so a NaN/inf in them is not blamed on the module


class Call:
    __slots__ = ("layer", "pass_id", "inputs", "outputs", "role")

    def __init__(self, layer: int, pass_id: int, role: str):
        self.layer = layer
        self.pass_id = pass_id
        self.inputs = []
        self.outputs = []   # (TRec, created_here)
        self.role = role


class Meas:
    __slots__ = ("what", "layer", "dtype", "s0", "ns", "v0", "nv", "pass_id", "trec", "aux")

    def __init__(self, what, layer, dtype, s0, ns, v0, nv, pass_id, trec=None, aux=None):
        self.what, self.layer, self.dtype = what, layer, dtype
        self.s0, self.ns, self.v0, self.nv = s0, ns, v0, nv
        self.pass_id, self.trec, self.aux = pass_id, trec, aux


class Tape:
    """Everything one step recorded; `scalars`/`vectors` hold framework arrays until the adapter reads them."""

    def __init__(self, step: int, plan):
        self.step = step
        self.plan = plan
        self.scalars = []         # 0-d arrays
        self.vectors = []         # 1-d arrays
        self.meas = []
        self.calls = []
        self.grad_events = []     # Meas indices of gradients, in the order backward produced them
        self.pass_id = 0
        self.passes_with_grad = set()
        self.loss = None          # Meas index
        self.scale = None         # Meas index
        self.svals = None         # after the read: NumPy float64 arrays
        self.vvals = None
        self.amp = None           # monitor's AMP verdict for the step (scale, skipped), filled before summary
        self.broken = False       # a hook failed during the step: only the loss and parameters are trusted
        self.time = 0.0           # seconds since the monitor started, when the step ended

    def add(self, what, layer, dtype, scalars=(), vectors=(), trec=None, aux=None, pass_id=None) -> int:
        s0, v0 = len(self.scalars), len(self.vectors)
        self.scalars.extend(scalars)
        self.vectors.extend(vectors)
        self.meas.append(Meas(what, layer, dtype, s0, len(scalars), v0, len(vectors),
                              self.pass_id if pass_id is None else pass_id, trec, aux))
        return len(self.meas) - 1

    # -- after the read ------------------------------------------------------------------------
    def set_values(self, svals, vlist):
        """Scalars as a list of Python floats; vectors as a list of NumPy arrays (same order as recorded)."""
        self.svals = svals
        self.vvals = vlist
        self.scalars = self.vectors = None   # release the framework arrays

    def s(self, i: int) -> list:
        m = self.meas[i]
        return self.svals[m.s0:m.s0 + m.ns]

    def v(self, i: int, k: int = 0) -> np.ndarray:
        return self.vvals[self.meas[i].v0 + k]

    def nonfinite(self, i) -> bool:
        """Whether measurement i (FINITE or GRAD) saw a NaN or an infinity."""
        return not math.isfinite(self.svals[self.meas[i].s0])

    def has_inf(self, i) -> bool:
        """Whether a FINITE/GRAD measurement points at an infinity rather than a NaN (its sum is +-inf)."""
        return math.isinf(self.svals[self.meas[i].s0])

    def eval_passes(self) -> set:
        """Forward passes of the step that no gradient came back through (evaluation in training mode).

        Only when some other pass of the step had a backward: a step that never ran backward keeps all.
        """
        if not self.passes_with_grad:
            return set()
        passes = {c.pass_id for c in self.calls}
        return passes - self.passes_with_grad
