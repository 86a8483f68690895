"""Type and range checks of user-facing knobs: one MiaError line naming the key, before any work starts.

An integer knob given a float (``attack.t=80.5``) is refused rather than truncated, and a bool is never taken
for a number (``True`` is an ``int`` to Python, not to a user): a knob that silently means something else is
a wrong result.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

from mia.errors import MiaError


def is_integer(value: Any) -> bool:
    """A whole number given as an integer (numpy's included), not a bool and not a float like 80.0."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """A finite real number (an integer or a float), not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _bounds(minimum: float | None, maximum: float | None) -> str:
    if minimum is not None and maximum is not None:
        return f" in {minimum}..{maximum}"
    if minimum is not None:
        return f" ≥ {minimum}"
    return f" ≤ {maximum}" if maximum is not None else ""


def require_integer(key: str, value: Any, minimum: int | None = None, maximum: int | None = None,
                    optional: bool = False) -> None:
    """``value`` must be an integer within the bounds (or None when ``optional``)."""
    if optional and value is None:
        return
    fits = is_integer(value) and (minimum is None or value >= minimum) and (maximum is None or value <= maximum)
    if not fits:
        null = " or null" if optional else ""
        raise MiaError(f"{key} must be an integer{_bounds(minimum, maximum)}{null}, got {value!r}")


def require_number(key: str, value: Any, low: float | None = None, high: float | None = None,
                   open_interval: bool = False) -> None:
    """``value`` must be a finite number in [low, high] (in (low, high) when ``open_interval``)."""
    fits = is_number(value)
    if fits and low is not None:
        fits = value > low if open_interval else value >= low
    if fits and high is not None:
        fits = value < high if open_interval else value <= high
    if not fits:
        if low is not None and high is not None:
            where = f" in ({low}, {high})" if open_interval else f" in [{low}, {high}]"
        elif low is not None:
            where = f" > {low}" if open_interval else f" ≥ {low}"
        else:
            where = ""
        raise MiaError(f"{key} must be a finite number{where}, got {value!r}")


def require_bool(key: str, value: Any) -> None:
    """``value`` must be true or false (``report.profile=no`` is a string, which Python would call true)."""
    if not isinstance(value, bool):
        raise MiaError(f"{key} must be true or false, got {value!r}")
