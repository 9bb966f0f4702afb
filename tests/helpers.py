"""Small helpers shared by the test modules (importable since pytest puts tests/ on sys.path)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from versioning import Operation, Version, history

Sessions = Callable[[], Session]


def count(engine: sa.Engine, table: sa.Table) -> int:
    """Rows in ``table``, counted on a connection of its own."""
    with engine.connect() as connection:
        return int(connection.scalar(sa.select(sa.func.count()).select_from(table)) or 0)


def read(sessions: Sessions, model: type[Any], pk: Any) -> list[Version]:
    """The record's history, read in a fresh session that is closed afterwards."""
    with sessions() as session:
        return history(session, model, pk)


def ops(versions: list[Version]) -> list[Operation]:
    return [v.operation for v in versions]
