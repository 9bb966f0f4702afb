"""The kinds of change a history row records."""

from __future__ import annotations

import enum

__all__ = ["Operation"]


class Operation(enum.StrEnum):
    """What happened to a record in one version. Stored as its lower-case value."""

    INSERT = "insert"
    UPDATE = "update"
    DELETE = "delete"
