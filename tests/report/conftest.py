"""Record lists shaped like a real watch log (header, steps with per-layer statistics, findings, end)."""
import math
import types

import pytest

LAYERS = [
    {"name": "fc1", "type": "Linear", "dtype": "torch.float32", "params": 8256},
    {"name": "act", "type": "ReLU", "dtype": "torch.float32", "params": 0},
    {"name": "fc2", "type": "Linear", "dtype": "torch.float32", "params": 650},
]


def header(**extra):
    record = {"type": "header", "schema_version": 1, "nnstab_version": "0.1.0", "framework": "torch",
              "model": "MLP", "layers": LAYERS, "options": {"every": 1}, "started": "2026-11-29T12:00:00",
              "rank": None, "world_size": None, "command": ["nnstab", "run", "train.py"]}
    record.update(extra)
    return record


def step(i, *, broken=False, grad_scale=1.0):
    """Step `i` of a small MLP; `broken` puts a blown-up fc2's infinities and NaNs in it, as strings (as on disk)."""
    loss = "nan" if broken else 2.3 * math.exp(-i / 20) + 0.05
    fc2_grad = "inf" if broken else 0.5 * grad_scale
    return {
        "type": "step", "step": i, "loss": loss, "time": 0.01 * (i + 1), "rank": None,
        "layers": {
            "fc1": {"act_min": -3.0, "act_max": 3.5 + i / 100, "act_absmax": 3.5 + i / 100, "act_nonfinite": 0.0,
                    "param_grad_norm": 0.9 * grad_scale, "param_norm": 4.0, "act_fp16_overflow_frac": 0.0,
                    "grad_out_norm": 0.02, "grad_nonfinite": 0.0},
            "act": {"act_min": 0.0, "act_max": 3.5, "act_absmax": 3.5, "dead_frac": 0.25 + i / 1000,
                    "act_nonfinite": 0.0},
            "fc2": {"act_min": -2.0, "act_max": "inf" if broken else 1.0 + i / 10,
                    "act_absmax": "inf" if broken else 1.0 + i / 10, "param_grad_norm": fc2_grad,
                    "grad_out_norm": 0.1, "saturated_frac": 0.0, "act_nonfinite": 1.0 if broken else 0.0,
                    "grad_nonfinite": 1.0 if broken else 0.0},
        },
    }


def finding(kind, layer, step_, phase, severity, value, threshold, message, **extra):
    record = {"type": "finding", "kind": kind, "layer": layer, "step": step_, "phase": phase,
              "severity": severity, "value": value, "threshold": threshold, "message": message,
              "count": 1, "last_step": None, "rank": None, "details": {}}
    record.update(extra)
    return record


def end(steps, status="ok", error=None):
    return {"type": "end", "status": status, "error": error, "steps": steps, "time": 0.01 * steps}


NONFINITE_MESSAGE = ("fc2 produced inf in its output at step 37; lower the learning rate, clip gradients "
                     "(torch.nn.utils.clip_grad_norm_) or check its input for huge values.")


def healthy_run(n=50):
    return [header()] + [step(i) for i in range(n)] + [end(n)]


def nonfinite_run(n=50, first_bad=37):
    records = [header()]
    for i in range(n):
        records.append(step(i, broken=i >= first_bad, grad_scale=1.0 + (i >= 30) * 50))
        if i == 5:
            records.append(finding("underflow", "fc1", 5, "forward", "info", 0.02, 0.01,
                                   "fc1's activations would flush to zero in float16 (smallest normal 6.1e-5); "
                                   "keep float32 here or use bfloat16 for this layer.",
                                   details={"dtype": "float16"}))
        if i == 30:
            records.append(finding("exploding_gradient", "fc2", 30, "backward", "warning", 25.0, 10.0,
                                   "fc2's gradient norm jumped to 25 (limit 10); clip gradients or lower the "
                                   "learning rate."))
        if i == first_bad:
            records.append(finding("nonfinite", "", first_bad, "loss", "error", "nan", 0.0,
                                   "the loss is nan; the first non-finite value came earlier in the step, "
                                   "see the layer findings.", count=n - first_bad, last_step=n - 1))
            records.append(finding("nonfinite", "fc2", first_bad, "forward", "error", "inf", 0.0,
                                   NONFINITE_MESSAGE, count=n - first_bad, last_step=n - 1))
    return records + [end(n)]


@pytest.fixture(scope="session")
def runs():
    """The record builders, for tests that need other lengths or a broken step elsewhere."""
    return types.SimpleNamespace(healthy_run=healthy_run, nonfinite_run=nonfinite_run, header=header, step=step,
                                 finding=finding, end=end)


@pytest.fixture
def healthy_records():
    return healthy_run()


@pytest.fixture
def nonfinite_records():
    return nonfinite_run()
