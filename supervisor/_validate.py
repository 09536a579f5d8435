"""Argument checks at the public boundary, written once."""

from __future__ import annotations

import math


def saga_id(value: object) -> int:
    """`value` as a saga id, or ``TypeError``/``ValueError`` naming it."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"saga id must be an int, got {type(value).__name__}: {value!r:.80}")
    if value <= 0:
        raise ValueError(f"unknown saga id {value}: ids start at 1")
    return value


def timeout(value: object, what: str = "timeout", allow_none: bool = True) -> float | None:
    """A finite, non-negative number of seconds (or None where allowed)."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{what} must be a number of seconds, got {type(value).__name__}: "
                        f"{value!r:.80}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{what} must be a finite number of seconds >= 0, got {value!r}")
    return float(value)


def text(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str, got {type(value).__name__}")
    return value


def positive(value: object, what: str) -> float:
    """A finite number of seconds (or bytes, ...) > 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
            not math.isfinite(value) or value <= 0:
        raise ValueError(f"{what} must be a positive number, got {value!r}")
    return float(value)
