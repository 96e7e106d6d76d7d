"""Replay to the operation: re-run the first non-finite step from a snapshot and name the operation that broke it.

    monitor = nnstab.watch(model, replay=True)       # on by default under `nnstab run`
    ...
    f = monitor.findings[0]                          # kind "nonfinite"
    f.details["replay"]   # {"op": "aten::log", "module": "head", "phase": "forward",
                          #  "source": "train.py:42", "code": "return torch.log(...)", "inputs": [...]}

The cost on a healthy step: torch keeps the latest step's snapshot (a copy of the parameters into storage
allocated once, clones of the buffers, references to the inputs, the RNG state: snapshot.py), and every
step's statistics are scanned for NaN/inf at monitor.step() of that same step (free on the CPU, where
they are already Python floats; one small device-to-host read per step on an accelerator), so the replay
can run while its snapshot is still the latest. nnstab.nn keeps references to each layer's input and
incoming gradient and a copy of the parameters (numpy_replay.py). Only the run's first non-finite step
is replayed, once; the snapshot hooks are removed afterwards.

Modules: snapshot.py (what torch keeps), finder.py (the modes that check every aten operation),
torch_replay.py (the replay), numpy_replay.py (nnstab.nn), this file (what the monitor calls).
"""
from __future__ import annotations

import dataclasses
import math
import sys

def make(model, framework: str, mode: str):
    """The Replay for `model` (mode "device" or "host"), started."""
    if framework == "torch":
        from nnstab.watch.replay.torch_replay import TorchReplayer

        replayer = TorchReplayer(model, mode)
    else:
        from nnstab.watch.replay.numpy_replay import NumpyReplayer

        replayer = NumpyReplayer(model, mode)
    return Replay(replayer.start())


class Replay:
    """What the monitor talks to: the per-step NaN/inf scan, the replay of the first non-finite finding."""

    def __init__(self, replayer):
        self.replayer = replayer
        self.armed = True          # until the run's first non-finite finding has been explained
        self._scanned = (None, 0)  # (tape, how many of its statistics were already found finite)

    @property
    def runs(self) -> int:
        return self.replayer.runs

    def nonfinite(self, tape, loss=None, note_loss=True) -> bool:
        """Whether the step just recorded saw a NaN/inf (checked now, while its snapshot is the latest)."""
        if not self.armed or tape is None:
            return False
        seen_tape, start = self._scanned
        start = start if seen_tape is tape else 0   # a pre-update look at this step found its values finite
        try:
            bad = tape_nonfinite(tape, start)
        except Exception:          # never into training: the step is then checked when it is read, as usual
            return False
        self._scanned = (tape, 0 if bad else _settled(tape))
        if bad and note_loss:
            self.replayer.loss = loss
        return bad

    def stepped(self, step: int):
        if self.armed and self.replayer.broken is None:
            try:
                self.replayer.stepped(step)
            except Exception as exc:   # never into training: the replay then says why it cannot run
                self.replayer.broken = f"keeping the step's snapshot failed: {type(exc).__name__}: {exc}"

    def explain(self, finding):
        """`finding` with details["replay"] and one more clause in its message, for the run's first
        non-finite error; any other finding unchanged. Never raises."""
        if not self.armed or finding.kind != "nonfinite" or finding.severity != "error":
            return finding
        self.armed = False
        try:
            result = self._replay(finding)
        except Exception as exc:   # the replay must never break the monitor, let alone the training
            result = {"status": "failed", "reason": f"{type(exc).__name__}: {exc}"}
        finally:
            self.replayer.stop()   # one replay per run: no more snapshots
        details = dict(finding.details or {})
        details["replay"] = result
        text = clause(result)
        message = finding.message if not text or finding.message.endswith(".") else finding.message + "."
        return dataclasses.replace(finding, details=details, message=message + text)

    def _replay(self, finding) -> dict:
        source = (finding.details or {}).get("source")
        if finding.phase == "forward" and source == "input":
            return {"status": "skipped", "reason": "the input batch already held NaN/inf: no operation of the "
                                                   "model made it"}
        if finding.phase == "forward" and source == "params":
            return {"status": "skipped", "reason": "the parameters were already NaN/inf before the first update"}
        snap_step = self.replayer.snapshot.step
        if finding.phase == "update" and finding.step == snap_step - 1:
            return self.replayer.replay(finding, False)   # seen in the next forward: the snapshot is after it
        if finding.step != snap_step:
            return {"status": "failed", "reason": f"the snapshot kept is of step {snap_step}, not of step "
                                                  f"{finding.step} (only the latest step is kept)"}
        return self.replayer.replay(finding, True)

    def close(self):
        self.armed = False
        self.replayer.close()


def clause(r: dict) -> str:
    """One sentence for the finding's message: what the replay found."""
    status = r.get("status")
    if status == "skipped":
        return ""
    if status == "failed":
        return f" (The replay of this step failed: {r.get('reason')}.)"
    if status == "unattributed":
        return (f" (Replayed, the step went non-finite again, but no operation made it from finite inputs: "
                f"{r.get('reason')}.)")
    if status == "not_reproduced":
        return " (Replayed from its snapshot, the step stayed finite: it is not reproducible.)"
    if r.get("phase") == "update":
        opt = r.get("optimizer")
        params = ", ".join(r.get("parameters") or []) or "the parameters"
        who = f"{opt} (lr={r.get('lr')})" if opt else "the optimiser"
        return f" Replay: {who} wrote NaN/inf into {params}."
    if r.get("op") is None:
        chain = r.get("loss_ops")
        tail = f" (autograd nodes from the model's outputs to the loss: {' -> '.join(chain)})" if chain else ""
        return (" Replay: the model's forward and backward stay finite; the NaN/inf is made in the loss code"
                f"{tail}.")
    module = f"'{r['module']}'" if r.get("module") else "the model"
    phase = "backward, of the forward line" if r.get("phase") == "backward" else r.get("phase")
    where = f" at {r['source']}" if r.get("source") else ""
    code = f": `{r['code']}`" if r.get("code") else ""
    produced = "inf" if r.get("produced") == "infinity" else "NaN"
    fix = f" It is {r['formula']}: use {r['replacement']} instead." if r.get("replacement") else ""
    return f" Replay: the first {produced} was made by {r['op']} in {module} ({phase}){where}{code}.{fix}"


def _settled(tape) -> int:
    """How many of the tape's statistics are final: up to its first slot still waiting for a value."""
    scalars = tape.scalars or []
    return next((k for k, v in enumerate(scalars) if v is None), len(scalars))


def tape_nonfinite(tape, start: int = 0) -> bool:
    """Whether any statistic of a recorded step, from the `start`-th on, is NaN/inf: Python floats are
    looked at directly, device values in one transfer (stacked)."""
    torch = sys.modules.get("torch")
    device = []
    for s in (tape.scalars or ())[start:]:
        if type(s) is float:
            if s - s != 0:
                return True
        elif torch is not None and isinstance(s, torch.Tensor):
            device.append(s)
        elif s is not None:
            v = float(s)
            if not math.isfinite(v):
                return True
    if device:
        try:
            flat = torch.stack([d.reshape(()).double() for d in device])
        except RuntimeError:       # values on several devices
            flat = torch.stack([d.reshape(()).double().cpu() for d in device])
        return not bool(torch.isfinite(flat).all())
    return False
