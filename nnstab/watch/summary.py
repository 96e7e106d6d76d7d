"""From a read Tape to the StepView the checks see: per-layer statistics and where non-finite values began.

Framework-neutral: both adapters record the same Tape, so checks never ask which framework ran.

Where a NaN/inf began, in execution order:
  forward   the first call (children complete before parents) whose own output was non-finite while
            every input was finite; if every non-finite output had a non-finite input, the model's
            input batch itself (layer "", source "input");
  loss      the loss, when the forward pass was finite;
  backward  the first non-finite gradient backward produced, blamed on the module that computed it:
            the consumer of that tensor (through modules that cannot create NaN/inf, to the next one that
            can), the loss for the model's output, the enclosing module for a tensor no watched module
            consumed; or a module whose own parameter gradients went non-finite, if it ran earlier in backward;
  update    a module whose parameters are non-finite after the optimiser step — seen at the step's end
            when parameters are checked, or, between checks, when the module's next forward output goes
            non-finite and its parameters turn out to be broken already (then it is the previous step's update).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from nnstab.watch import tape as T
from nnstab.watch.limits import dtype_name, shares_many


@dataclass
class Origin:
    phase: str            # forward | loss | backward | update
    layer: str            # "" = the model's input, the loss, or the whole model
    value: float          # the offending figure (nan, +-inf, or a norm)
    inf: bool             # an infinity from finite inputs (overflow), not a NaN
    dtype: str = ""
    source: str = ""      # "input" (came in with the batch), "loss" (the loss's own gradient), "" otherwise
    via: str = ""         # for backward: the layer whose gradient it was
    step_offset: int = 0  # -1: it happened in the previous step's update, seen in this step's forward


class StepView:
    """What the checks see of one step (framework-neutral)."""

    __slots__ = ("step", "loss", "stats", "dtypes", "grad_dtypes", "order", "output_layers", "dead", "saturated",
                 "params_at_forward", "origins", "amp_scale", "amp_skipped", "measured", "broken")

    def __init__(self, step, measured=None, broken=False):
        self.step = step
        self.loss = None                # float or None
        self.stats = {}                 # layer -> {stat: float}, the step record's "layers"
        self.dtypes = {}                # layer -> dtype of its outputs (on steps with ranges or samples)
        self.grad_dtypes = {}           # layer -> dtype of the gradients of its outputs
        self.order = []                 # layers in forward order (first completion)
        self.output_layers = set()      # layers whose output is the model's output
        self.dead = {}                  # relu layer -> bool per unit: zero on the whole batch
        self.saturated = {}             # layer -> bool per unit (rows for softmax)
        self.params_at_forward = {}     # layer -> its parameters' sum of squares when its output broke (NaN/inf:
                                        # a NaN/inf among them)
        self.origins = []               # Origin, in execution order (at most one)
        self.amp_scale = None           # the loss scale the step's gradients carried, under AMP
        self.amp_skipped = False        # GradScaler skipped the step
        self.measured = measured        # the Plan of the step
        self.broken = broken            # a hook failed: only the loss and parameters are trusted


def summarize(tape: T.Tape, names: list[str], sat_slope: float, softmax_top: float) -> StepView:
    """The StepView of a read tape. `sat_slope`/`softmax_top` define a saturated unit (see checks/saturation.py)."""
    view = StepView(tape.step, measured=tape.plan, broken=tape.broken)
    sv = tape.svals
    if tape.loss is not None:
        view.loss = sv[tape.meas[tape.loss].s0]
    scale = 1.0
    if tape.amp is not None:
        view.amp_scale, view.amp_skipped = tape.amp
        if view.amp_scale and math.isfinite(view.amp_scale) and view.amp_scale > 0:
            scale = view.amp_scale
    skip = tape.eval_passes() if not tape.broken else set()
    stats, order = view.stats, view.order
    if not tape.broken:
        for c in tape.calls:
            if c.pass_id in skip:
                continue
            name = names[c.layer]
            if name not in stats:
                stats[name] = {}
                order.append(name)
            for rec, _ in c.outputs:
                if rec.root_output:
                    view.output_layers.add(name)
    params = {}
    finite, grad, inv_scale2 = T.FINITE, T.GRAD, 1.0 / (scale * scale)
    for i, m in enumerate(tape.meas):
        w = m.what
        if w is T.PARAM:
            _param(view, tape, sv, m, names[m.layer], params)
            continue
        if w is T.SKIPPED or m.layer is None or (skip and m.pass_id in skip) or tape.broken:
            continue
        name = names[m.layer]
        st = stats.get(name)
        if st is None:
            st = stats[name] = {}
        x = sv[m.s0] if m.ns else None
        if w is finite:                   # the two every-step measurements, inline
            if x - x != 0:
                st["act_nonfinite"] = 1.0
            elif "act_nonfinite" not in st:
                st["act_nonfinite"] = 0.0
        elif w is grad:
            if "_grad_sq" in st:
                st["_grad_sq"] += x * inv_scale2
                st["_grad_n"] += m.aux or 0
            else:
                st["_grad_sq"], st["_grad_n"] = x * inv_scale2, m.aux or 0
                dn = _DTYPE_NAMES.get(m.dtype)
                if dn is None:
                    dn = _DTYPE_NAMES[m.dtype] = dtype_name(m.dtype)
                view.grad_dtypes[name] = dn
            if x - x != 0:
                st["grad_nonfinite"] = 1.0
            elif "grad_nonfinite" not in st:
                st["grad_nonfinite"] = 0.0
        else:
            _accumulate(view, tape, sv, i, m, name, st, scale, sat_slope, softmax_top)
    dead, saturated = view.dead, view.saturated
    samples = []      # (layer statistics, "act_" or "grad_", sample, dtype): their shares in one go
    for name, st in stats.items():
        if "_grad_sq" in st or "_sample_act" in st or "_sample_grad" in st or name in dead or name in saturated:
            _finish(view, name, st, samples)
    if samples:
        for (st, prefix, _, _), found in zip(samples, shares_many([(a, dtype) for _, _, a, dtype in samples])):
            for k, v in found.items():
                st[prefix + k] = v
    if not tape.broken and not all(map(math.isfinite, sv)):   # origins only when something is NaN/inf
        view.origins = _origins(tape, names, skip, params, view)
    elif tape.broken and view.loss is not None and not math.isfinite(view.loss):
        view.origins = [Origin("loss", "", view.loss, math.isinf(view.loss), source="loss")]
    return view


_DTYPE_NAMES = {}     # dtype object -> "float32": names of torch and NumPy dtypes, filled as they come


def _accumulate(view, tape, sv, i, m, name, st, scale, sat_slope, softmax_top):
    """The less frequent measurements (ranges, samples, units) into the layer's statistics."""
    w = m.what
    if w == T.RANGE:
        mn, mx = sv[m.s0], sv[m.s0 + 1]
        view.dtypes[name] = dtype_name(m.dtype)
        st["act_min"] = _nanmin(st.get("act_min"), mn)
        st["act_max"] = _nanmax(st.get("act_max"), mx)
        st["act_absmax"] = _nanmax(st.get("act_absmax"), _absmax(mn, mx))
    elif w == T.GRAD_RANGE:
        st["grad_out_absmax"] = _nanmax(st.get("grad_out_absmax"), _absmax(sv[m.s0], sv[m.s0 + 1]) / scale)
    elif w == T.SAMPLE:
        key = "_sample_act" if m.aux[0] == "act" else "_sample_grad"
        if key == "_sample_act":
            view.dtypes[name] = dtype_name(m.dtype)
        st.setdefault(key, (dtype_name(m.dtype), []))[1].append(tape.v(i))
    elif w == T.RELU:
        dead = tape.v(i) == 0
        prev = view.dead.get(name)
        view.dead[name] = dead if prev is None or prev.shape != dead.shape else (prev & dead)
    elif w == T.SAT:
        peak = 0.25 if m.aux == "sigmoid" else 1.0
        # mean slope over the batch: sigmoid' = 1/4 - (s - 1/2)^2, tanh' = 1 - t^2
        sat = (peak - tape.v(i)) < sat_slope * peak
        prev = view.saturated.get(name)
        view.saturated[name] = sat if prev is None or prev.shape != sat.shape else (prev & sat)
    elif w == T.SOFTMAX:
        sat = tape.v(i) > softmax_top
        prev = view.saturated.get(name)
        view.saturated[name] = sat if prev is None else np.concatenate([prev, sat])


def _absmax(mn, mx):
    return max(abs(mn), abs(mx)) if mn == mn and mx == mx else math.nan


def _finish(view, name, st, samples):
    """Turn the accumulators of a layer into its step statistics; its value samples go into `samples`
    (their underflow/overflow shares are counted for every layer at once)."""
    if "_grad_sq" in st:
        sq, n = st.pop("_grad_sq"), st.pop("_grad_n")
        st["grad_out_norm"] = math.sqrt(sq)
        if n:
            st["grad_out_rms"] = math.sqrt(sq / n)
    if "_sample_act" in st or "_sample_grad" in st:
        for key, prefix in (("_sample_act", "act_"), ("_sample_grad", "grad_")):
            sample = st.pop(key, None)
            if sample is not None:
                dtype, parts = sample
                samples.append((st, prefix, parts[0] if len(parts) == 1 else np.concatenate(parts), dtype))
    dead = view.dead.get(name)
    if dead is not None and dead.size:
        st["dead_frac"] = float(np.count_nonzero(dead)) / dead.size
    sat = view.saturated.get(name)
    if sat is not None:
        st["saturated_frac"] = float(np.count_nonzero(sat)) / sat.size if sat.size else 0.0


def _param(view, tape, sv, m, name, out):
    """A layer's parameter norms into its stats and `out` {layer: (param norm, grad norm, params ok, grads ok)}.

    Parameters looked at during the forward pass (between regular checks, because the layer's output
    went non-finite) go into view.params_at_forward instead: they are the parameters the last update left.
    """
    n_p, n_g, at_forward = m.aux
    vals = sv[m.s0:m.s0 + m.ns]
    p_sq, g_sq = vals[:n_p], vals[n_p:]
    if at_forward:
        view.params_at_forward[name] = math.fsum(p_sq)   # NaN when one is NaN, else inf when one is inf
        return
    p_ok = all(map(math.isfinite, p_sq))
    pn = math.sqrt(math.fsum(p_sq)) if n_p else math.nan    # nan: gradients alone were read (pgrads)
    g_ok = all(map(math.isfinite, g_sq))
    gn = math.sqrt(math.fsum(g_sq)) if n_g else math.nan   # read at monitor.step(): scaler.step() already
                                                            # unscaled .grad in place (AMP), so not divided again
    st = view.stats.get(name)
    if st is None:
        st = view.stats[name] = {}
    if n_p:
        st["param_norm"] = pn
    if n_g:
        st["param_grad_norm"] = gn
    out[name] = (pn, gn, p_ok, g_ok)


def _nanmin(a, b):
    if a is None:
        return float(b)
    return float("nan") if a != a or b != b else float(min(a, b))


def _nanmax(a, b):
    if a is None:
        return float(b)
    return float("nan") if a != a or b != b else float(max(a, b))


# -- where non-finite values began -----------------------------------------------------------------
def _origins(tape, names, skip, params, view) -> list[Origin]:
    out = []
    fwd = _forward_origin(tape, names, skip)
    p = view.params_at_forward.get(fwd.layer, 0.0) if fwd is not None else 0.0
    if p - p != 0:
        # the layer computed with non-finite parameters: the update before this step broke them (their
        # values, NaN or inf, are the finding's, not those of the output they spoiled)
        fwd = (Origin("update", fwd.layer, p, math.isinf(p), fwd.dtype, step_offset=-1) if tape.step > 0
               else Origin("forward", fwd.layer, p, math.isinf(p), fwd.dtype, source="params"))
    if fwd is not None:
        out.append(fwd)
    elif view.loss is not None and not math.isfinite(view.loss):
        out.append(Origin("loss", "", view.loss, math.isinf(view.loss), source="loss"))
    if not out:
        bwd = _backward_origin(tape, names, skip, params)
        if bwd is not None:
            out.append(bwd)
    if not out:
        order = {n: k for k, n in enumerate(view.order)}
        bad = [n for n, p in params.items() if not p[2]]
        if bad:
            first = min(bad, key=lambda n: order.get(n, len(order)))
            out.append(Origin("update", first, params[first][0], math.isinf(params[first][0])))
    return out


def _forward_origin(tape, names, skip):
    """The first event in completion order: a non-finite tensor made outside any watched module (the
    input batch, or a functional op) reaching a call, or a call making one from finite inputs."""
    nf = tape.nonfinite
    root_inputs = {id(rec) for c in tape.calls if c.layer == 0 for rec in c.inputs}
    changed = None    # (call, measurement) of the first non-finite output that was changed in place
    for c in tape.calls:
        if c.pass_id in skip or c.role is not T.COMPUTE:
            continue
        bad_in = [rec for rec in c.inputs if rec.meas is not None and nf(rec.meas)]
        outside = [rec for rec in bad_in if rec.producer < 0]
        if outside:
            i = outside[0].meas
            value, inf, dtype = _worst(tape, i)
            name = names[c.layer]
            if id(outside[0]) in root_inputs or c.layer == 0:
                return Origin("forward", "", value, False, dtype, source="input", via=name)
            return Origin("forward", _parent(names, name), value, inf, dtype, via=name)
        if bad_in:
            continue
        bad = [rec for rec, created in c.outputs if created and rec.meas is not None and nf(rec.meas)]
        if bad and all(rec.state == T.MODIFIED for rec in bad):
            # measured after code outside the module changed it in place: not the module's own values
            changed = changed or (c, bad[0].meas)
            continue
        if bad:
            value, inf, dtype = _worst(tape, next(rec.meas for rec in bad if rec.state != T.MODIFIED))
            return Origin("forward", names[c.layer], value, inf, dtype)
    if changed is not None:       # nothing else made it: the code that changed the output in place did
        c, i = changed
        value, inf, dtype = _worst(tape, i)
        return Origin("forward", _parent(names, names[c.layer]), value, inf, dtype, via=names[c.layer])
    return None


def _worst(tape, i):
    """(the offending figure: +-inf or nan, whether it is an infinity, dtype) of a FINITE/GRAD measurement."""
    value = float(tape.svals[tape.meas[i].s0])
    return value, math.isinf(value), dtype_name(tape.meas[i].dtype)


def _backward_origin(tape, names, skip, params):
    nf = tape.nonfinite
    first = next((i for i in tape.grad_events if tape.meas[i].pass_id not in skip and nf(i)), None)
    candidates = []   # (position in forward order of the blamed call, Origin)
    if first is not None:
        rec = tape.meas[first].trec
        value, inf, dtype = _worst(tape, first)
        via = names[tape.calls[rec.producer].layer] if rec.producer >= 0 else ""
        if rec.root_output:
            return Origin("backward", "", value, inf, dtype, source="loss", via=via)
        ci = _blame(tape, rec)
        if ci is not None:
            candidates.append((ci, Origin("backward", names[tape.calls[ci].layer], value, inf, dtype, via=via)))
        else:   # consumed by code outside any watched module, right after its producer: before it in backward
            candidates.append((rec.producer + 0.5, Origin("backward", _parent(names, via), value, inf, dtype,
                                                          via=via)))
    last_call = {}
    for ci, c in enumerate(tape.calls):
        if c.pass_id not in skip:
            last_call[names[c.layer]] = ci
    for name, (pn, gn, p_ok, g_ok) in params.items():
        if not g_ok:
            candidates.append((last_call.get(name, -1), Origin("backward", name, gn, math.isinf(gn), "")))
    if not candidates:
        return None
    return max(candidates, key=lambda c: c[0])[1]   # latest in forward = earliest in backward


def _blame(tape, rec, depth=0):
    """The call that computed rec's gradient: its first consumer that can create NaN/inf."""
    for ci in rec.consumers:
        c = tape.calls[ci]
        if c.role is T.COMPUTE:
            return ci
        if depth < 32:
            for out, _ in c.outputs:
                found = _blame(tape, out, depth + 1)
                if found is not None:
                    return found
    return None


def _parent(names, name):
    """The enclosing module's name ("a.b.c" -> "a.b"; "a" -> "")."""
    return name.rpartition(".")[0] if name else ""
