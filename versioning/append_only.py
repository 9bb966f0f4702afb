"""Append-only history, enforced by the database.

Placeholder seam (filled by the append-only work): :func:`maintenance` lets the library's own
maintenance paths (erasure, archiving) change history rows within one database transaction.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy.engine import Connection

__all__ = ["maintenance"]


@contextmanager
def maintenance(connection: Connection) -> Iterator[None]:
    """Within this block, this connection's transaction may UPDATE/DELETE history rows."""
    yield
