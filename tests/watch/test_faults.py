"""Faults mid-training, each in its own process: the log keeps every step before the fault, and
`nnstab report` rebuilds the report from it alone."""
import json
import signal
import subprocess
import sys
import textwrap

import pytest

from nnstab.watch import read_log

FAULT_STEP = 5

# How each fault is raised inside the training loop, and how the process must end.
FAULTS = {
    "exception": ("raise RuntimeError('data loader broke')", 1),
    # Python raises KeyboardInterrupt for SIGINT, and after the traceback ends the process by SIGINT again.
    "keyboard_interrupt": ("os.kill(os.getpid(), signal.SIGINT)", -signal.SIGINT),
    "sigterm": ("os.kill(os.getpid(), signal.SIGTERM)", -signal.SIGTERM),
    "sigkill": ("os.kill(os.getpid(), signal.SIGKILL)", -signal.SIGKILL),
}


# The end record each fault leaves. A library does not take over the process's signal handlers, so
# SIGTERM, like SIGKILL, leaves no end record and the report says "incomplete" (under `nnstab run`,
# which does handle SIGTERM, the status is "killed": tests/commands/test_run.py).
END_STATUS = {"exception": "exception", "keyboard_interrupt": "interrupted", "sigterm": "incomplete",
              "sigkill": "incomplete"}


def training_script(log_dir, fault: str) -> str:
    return textwrap.dedent(f"""
        import os, signal, torch
        from torch import nn
        import nnstab
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        x, y = torch.randn(16, 4), torch.randint(0, 2, (16,))
        with nnstab.watch(model, log_dir={str(log_dir)!r}) as mon:
            for step in range(100):
                if step == {FAULT_STEP}:
                    {fault}
                opt.zero_grad(); loss = nn.functional.cross_entropy(model(x), y); loss.backward(); opt.step()
                mon.step(loss=loss)
    """)


@pytest.mark.parametrize("name", sorted(FAULTS))
def test_a_fault_mid_training_leaves_every_earlier_step_and_a_report(name, tmp_path):
    fault, returncode = FAULTS[name]
    log_dir = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-c", training_script(log_dir, fault)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == returncode, proc.stderr[-2000:]

    steps = [r["step"] for r in read_log(log_dir) if r["type"] == "step" and not r.get("partial")]
    assert steps == list(range(FAULT_STEP))

    out = tmp_path / "rebuilt.json"
    cli = subprocess.run([sys.executable, "-m", "nnstab.cli", "report", str(log_dir), "-o", str(out)],
                         capture_output=True, text=True, timeout=120)
    assert cli.returncode in (0, 1), cli.stderr[-2000:]
    rebuilt = json.loads(out.read_text())
    assert [s["step"] for s in rebuilt["steps"] if not s.get("partial")] == list(range(FAULT_STEP))
    assert rebuilt["end"]["status"] == END_STATUS[name]
