"""Argument checks shared by every layer: one sentence per bad value, as a ValueError."""

from __future__ import annotations


def is_int(value) -> bool:
    """An integer, and not a bool (which Python counts as one)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value) -> bool:
    """An int or a float, and not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_int(name: str, value, minimum: int) -> int:
    """``value`` as an int ``>= minimum``, or a one-sentence ValueError."""
    if not is_int(value) or value < minimum:
        wanted = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ValueError(f"{name} must be {wanted}, got {value!r}")
    return value


def check_optional_int(name: str, value, minimum: int) -> int | None:
    """Like :func:`check_int`, but None passes (an unset option)."""
    return None if value is None else check_int(name, value, minimum)


def check_choice(name: str, value, choices) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(str, choices))}, got {value!r}")
    return value


def first_line(err: Exception) -> str:
    """An error's first line, for a one-sentence message (its type's name when it says nothing)."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
