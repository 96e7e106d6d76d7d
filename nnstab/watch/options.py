"""The keyword options of nnstab.watch: checked by name, so a wrong one says which and what it takes."""
from __future__ import annotations

import math
import os
import sys

from nnstab.watch.checks import CHECKS


def make_checks(checks) -> dict:
    """The `checks` option -> {kind: check instance}: None (all), a list of kinds, or {kind: True/False/options}."""
    if checks is None:
        spec = {kind: {} for kind in CHECKS}
    elif isinstance(checks, dict):
        spec = {}
        for kind, opts in checks.items():
            known_kind(kind)
            if opts is False:
                continue
            if opts is True:
                opts = {}
            if not isinstance(opts, dict):
                raise TypeError(f"checks[{kind!r}] must be True, False or a dict of options, got {opts!r}")
            spec[kind] = opts
        for kind in CHECKS:   # kinds not named keep running with their defaults
            if kind not in checks:
                spec[kind] = {}
    elif isinstance(checks, (list, tuple, set, frozenset)):
        spec = {}
        for kind in checks:
            known_kind(kind)
            spec[kind] = {}
    else:
        raise TypeError(f"checks must be None, a list of kinds or a dict {{kind: options}}, got "
                        f"{type(checks).__name__}")
    return {kind: CHECKS[kind](**opts) for kind, opts in spec.items()}


def period(checks) -> int | None:
    """The least common multiple of every schedule's period (plans repeat with it), None if beyond 1000."""
    p = 1
    for c in checks:
        for n in c.periods():
            p = p * n // math.gcd(p, n)
    return p if p <= 1000 else None


def known_kind(kind):
    if kind not in CHECKS:
        raise ValueError(f"unknown check {kind!r}; the checks are: {', '.join(CHECKS)}")


def positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"watch() option {name!r} must be a positive int, got {type(value).__name__} {value!r}")
    if value < 1:   # the right type, out of range: a ValueError, as int("x") vs range(-1) in Python
        raise ValueError(f"watch() option {name!r} must be a positive int (1 = every step), got {value!r}")
    return value


def boolean(name, value):
    if not isinstance(value, bool):
        raise TypeError(f"watch() option {name!r} must be True or False, got {value!r}")
    return value


def lint(value, model) -> bool:
    """The `lint` option: True adds nnstab.lint's Linter (torch models only: it watches torch operations)."""
    boolean("lint", value)
    torch = sys.modules.get("torch")
    if value and (torch is None or not isinstance(model, torch.nn.Module)):
        raise TypeError(f"watch() option 'lint' needs a torch.nn.Module, got {type(model).__name__}; the lint "
                        f"watches torch operations (nnstab.nn models compute in NumPy and have no torch formulas "
                        f"to lint): drop lint=True for this model")
    return value


REPLAY_MODES = ("device", "host")


def replay(value):
    """The `replay` option -> False, "device" or "host" (True means "device": the snapshot stays where the
    parameters live)."""
    if value is False or value is None:
        return False
    if value is True:
        return "device"
    if isinstance(value, str) and value in REPLAY_MODES:
        return value
    error = ValueError if isinstance(value, str) else TypeError   # a wrong word, or not a word at all
    raise error(f"watch() option 'replay' must be False, True, \"device\" or \"host\", got {value!r}; "
                     f"True keeps the step's snapshot on the parameters' device, \"host\" in host memory")


def path(name, value):
    if not isinstance(value, (str, os.PathLike)):
        raise TypeError(f"watch() option {name!r} must be a directory path (str or pathlib.Path), got "
                        f"{type(value).__name__}")
    return value


def command(value):
    if value is None:
        return None
    if isinstance(value, str) or not all(isinstance(v, str) for v in value):
        raise TypeError(f"watch() option 'command' must be a list of strings (argv), got {value!r}")
    return list(value)


def distributed():
    dist = sys.modules.get("torch.distributed")
    try:
        if dist is not None and dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
    except Exception:
        pass
    return None, None


def version() -> str:
    try:
        from importlib.metadata import version

        return version("nnstab")
    except Exception:
        return "unknown"
