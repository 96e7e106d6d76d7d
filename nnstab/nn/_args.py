"""Checks for the arguments of layer, initialiser and optimiser constructors; each error names the argument and the fix.

A size must be an int (a float such as 3.5 or a string such as "3" would otherwise be truncated or
parsed silently), a rate or coefficient a real number, as torch's own constructors insist.
"""
from __future__ import annotations

import numbers


def integer(value, name: str, owner: str) -> int:
    """An int (NumPy integers too; bools refused: True is not a size or a dimension)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        got = f"{value!r} ({type(value).__name__})"
        raise TypeError(f"{owner}: {name} must be an int, got {got}{_int_hint(value, name)}")
    return int(value)


def size(value, name: str, owner: str, minimum: int = 0) -> int:
    """An int >= minimum."""
    value = integer(value, name, owner)
    if value < minimum:
        raise ValueError(f"{owner}: {name} must be >= {minimum}, got {value}")
    return int(value)


def real(value, name: str, owner: str, low: float | None = None, high: float | None = None) -> float:
    """A real number (not a bool or a string), within [low, high] where given; NaN is refused by either bound."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{owner}: {name} must be a real number, got {value!r} ({type(value).__name__})")
    value = float(value)
    if (low is not None and not value >= low) or (high is not None and not value <= high):
        where = f"in [{low:g}, {high:g}]" if low is not None and high is not None else \
            f">= {low:g}" if low is not None else f"<= {high:g}"
        raise ValueError(f"{owner}: {name} must be {where}, got {value}")
    return value


def _int_hint(value, name: str) -> str:
    """'; pass name=3' for a value that reads as a whole number ("3", 3.0), else nothing."""
    if isinstance(value, bool):
        return ""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return ""
    return f"; pass {name}={int(number)}" if number.is_integer() else ""
