"""Masks for sensitive columns.

A mask is any callable ``str -> str`` named in ``__versioned__["mask"]``. A masked column's change
is still recorded as a change, but the stored old and new values (and the snapshot) are the mask's
output, never the real value. ``None`` is never passed to a mask: a missing value stays ``None``.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["REDACTED", "Mask", "last4", "redact"]

Mask = Callable[[str], str]

REDACTED = "[REDACTED]"


def redact(value: str) -> str:
    """Replace the whole value: history shows only that the field changed."""
    return REDACTED


def last4(value: str) -> str:
    """Keep the last four characters and hide the rest, e.g. ``************1111``.

    Values of four characters or fewer are hidden entirely, since keeping them would keep all of it.
    """
    if len(value) <= 4:
        return "*" * len(value)
    return "*" * (len(value) - 4) + value[-4:]
