"""nnstab.watch: hook-based probes that find numerical failures while a model trains.

    monitor = nnstab.watch(model)          # torch.nn.Module or nnstab.nn.Module
    ... train, calling monitor.step(loss=loss) after each optimiser step ...
    monitor.findings                       # [Finding(kind, layer, step, phase, severity, value, threshold, message)]
    monitor.report().save("report.html")
    monitor.close()                        # every hook removed

Layout: monitor.py (Monitor, watch), adapters/ (torch, nnstab.nn hooks -> Tape), summary.py (Tape ->
StepView, where NaN began), checks/ (one kind per file, CHECKS table), finding.py, log.py (JSONL records),
amp.py (GradScaler), options.py (option checking), limits.py (float formats), tape.py (one step's record).

This package is itself callable: importing any of its submodules makes `nnstab.watch` the package
rather than the function, so `nnstab.watch(model)` must work either way.
"""
import sys
import types

from nnstab.watch.checks import CHECKS, Check
from nnstab.watch.finding import KINDS, PHASES, SEVERITIES, Finding, severity_rank
from nnstab.watch.log import read_log
from nnstab.watch.monitor import Monitor, watch

__all__ = ["watch", "Monitor", "Finding", "KINDS", "PHASES", "SEVERITIES", "severity_rank", "CHECKS", "Check",
           "read_log"]


class _CallablePackage(types.ModuleType):
    def __call__(self, model, **options):
        return watch(model, **options)


sys.modules[__name__].__class__ = _CallablePackage
