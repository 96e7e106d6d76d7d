"""AMP: which torch.amp.GradScaler the run uses, the scale a step's gradients carried, and whether it skipped.

GradScaler multiplies the loss by its scale before backward, so every gradient the hooks see is
scaled; when a scaled gradient overflows, scaler.step() skips the optimiser step and update() lowers
the scale (by its backoff factor). Read after update(), the scale tells both: the scale a step used is
the one the previous step left, and it went down exactly when the step was skipped. Read before
update(), the scaler's found_inf tensors say it directly. Nothing here synchronises: the scale and
found_inf are read with the step's other statistics.
"""
from __future__ import annotations

import gc
import sys


class AmpWatch:
    """The GradScaler of a run (given, or found among the live objects when `auto`) and its verdicts."""

    def __init__(self, scaler=None, auto: bool = True):
        self.scaler = scaler
        self.auto = auto and scaler is None
        self.prev = None if scaler is None else initial_scale(scaler)   # scale the next step will carry
        self.notes = set()   # what the monitor should tell the user once (several scalers to choose from)

    def find(self, fresh: bool = False):
        """Look for the run's GradScaler (auto mode only); `fresh`: it has not scaled a step yet."""
        if self.scaler is None and self.auto:
            found = enabled_scalers()
            self.scaler = found[0] if len(found) == 1 else None
            if len(found) > 1:
                self.notes.add(f"{len(found)} enabled torch.amp.GradScalers are alive, so none was picked: steps a "
                               f"scaler skips will read as errors, and gradients as scaled; pass watch(model, "
                               f"scaler=...) the one this model's optimiser uses")
            if self.scaler is not None:
                self.prev = float(getattr(self.scaler, "_init_scale", 1.0)) if fresh else initial_scale(self.scaler)

    def state(self):
        """The scaler's scale tensor (and found_inf tensors while update() has not run), or None."""
        sc = self.scaler
        if sc is None or not getattr(sc, "_enabled", False) or getattr(sc, "_scale", None) is None:
            return None
        found = [t for state in sc._per_optimizer_states.values()
                 for t in state.get("found_inf_per_device", {}).values()]
        return [sc._scale] + found

    def verdict(self, values):
        """(scale the step's gradients carried, whether the scaler skipped the step) from state()'s values."""
        now = float(values[0])
        if len(values) > 1:                       # update() had not run yet: found_inf says it directly
            used, skipped = now, sum(values[1:]) > 0
        else:                                     # update() lowers the scale exactly when it skipped
            used = self.prev if self.prev is not None else now
            skipped = now < used
        self.prev = now
        return used, bool(skipped)


def check_scaler(value):
    """The `scaler` option: a GradScaler, or None/False; anything else is a TypeError naming the option."""
    if value is None or value is False:
        return None
    if not all(hasattr(value, a) for a in ("scale", "step", "update", "get_scale")):
        raise TypeError(f"watch() option 'scaler' must be a torch.amp.GradScaler, None (find it) or False, "
                        f"got {type(value).__name__}")
    return value


def enabled_scalers() -> list:
    """The enabled torch.amp.GradScalers alive in this process."""
    amp = sys.modules.get("torch.amp.grad_scaler")
    if amp is None:
        return []
    cls = amp.GradScaler
    # type() and issubclass(), not isinstance(): isinstance may ask lazy proxies for __class__
    return [o for o in gc.get_objects() if issubclass(type(o), cls) and getattr(o, "_enabled", False)]


def initial_scale(scaler) -> float:
    scale = getattr(scaler, "_scale", None)
    if scale is None:
        return float(getattr(scaler, "_init_scale", 1.0))
    return float(scale)
