"""The canonical form of a column value: the same JSON-able value as written and as read back.

Placeholder until the integrity work's module lands: only :func:`canonical_value`, which
:mod:`versioning.personal` imports lazily.
"""

from __future__ import annotations

import base64
import datetime as dt
import enum
import uuid
from decimal import Decimal
from typing import Any

import sqlalchemy as sa

__all__ = ["canonical_value"]


def canonical_value(column: sa.Column[Any], value: Any) -> Any:
    """``value`` of ``column`` as a JSON-able value that does not depend on the backend."""
    if value is None or isinstance(value, str | bool | int | float):
        return value
    if isinstance(value, Decimal):
        return str(value.normalize()) if value else "0"
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(dt.UTC).replace(tzinfo=None)
        return value.isoformat()
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, enum.Enum):
        return value.name
    if isinstance(value, dict):
        return {str(k): canonical_value(column, v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [canonical_value(column, v) for v in value]
    return str(value)
