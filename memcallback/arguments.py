"""Argument checks shared by the public constructors: one clear message naming the argument and what it accepts."""

from __future__ import annotations


def is_int(value: object) -> bool:
    """An ``int`` that is not a ``bool`` (``True`` is an int to Python, never a count to a user)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_real(value: object) -> bool:
    """A real number (``int`` or ``float``, not ``bool``); NaN passes here and fails every range check."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def require(ok: bool, name: str, value: object, accepted: str) -> None:
    """Raise ``ValueError("{name}={value!r} is invalid: expected {accepted}.")`` unless ``ok``."""
    if not ok:
        raise ValueError(f"{name}={value!r} is invalid: expected {accepted}.")
