"""Recording changes: turning before/after values into history rows and writing them.

Shared by the unit-of-work capture (:mod:`versioning.capture`) and the capture of ORM-enabled
statements (:mod:`versioning.statements`). One transaction row per database transaction, one
multi-row ``INSERT`` per history table per call.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from versioning.declaration import ModelSpec
from versioning.encoding import encode
from versioning.operation import Operation
from versioning.schema import CHANGES, OPERATION
from versioning.transaction import record

__all__ = ["Change", "write_changes"]


class Change:
    __slots__ = ("after", "before", "operation", "spec", "state")

    def __init__(
        self,
        spec: ModelSpec,
        state: Any,
        operation: Operation,
        before: dict[str, Any] | None,
        after: dict[str, Any] | None,
    ) -> None:
        self.spec = spec
        self.state = state
        self.operation = operation
        self.before = before
        self.after = after


def write_changes(session: Session, changes: list[Change]) -> None:
    """Record the history rows of ``changes`` (updates that change nothing are dropped)."""
    grouped: dict[sa.Table, tuple[Connection, ModelSpec, list[dict[str, Any]]]] = {}
    for change in changes:
        spec = change.spec
        entry = grouped.get(spec.history)
        if entry is None:
            connection = session.connection(bind_arguments={"mapper": spec.mapper})
            entry = grouped[spec.history] = (connection, spec, [])
        row = _history_row(change, entry[0])
        if row is not None:
            entry[2].append(row)
    for history, (connection, spec, rows) in grouped.items():
        if rows:
            record(session, connection, spec.transactions, spec.root.mapper, history, rows)


def _history_row(change: Change, connection: Connection) -> dict[str, Any] | None:
    spec = change.spec
    masks = spec.masks
    names = spec.history_names
    if change.operation is Operation.UPDATE:
        assert change.before is not None and change.after is not None
        before, after = change.before, change.after
        diff: dict[str, list[Any]] = {}
        dialect = connection.dialect
        for key in spec.keys:
            old, new = before[key], after[key]
            type_ = spec.type_of(key)
            if old is new or type_.compare_values(old, new):
                continue
            where = f"{spec.model.__name__}.{key}"
            if key in masks:
                if encode(type_, old, dialect, where) == encode(type_, new, dialect, where):
                    continue
                old = None if old is None else masks[key](old)
                new = None if new is None else masks[key](new)
            pair = [encode(type_, old, dialect, where), encode(type_, new, dialect, where)]
            if key not in masks and pair[0] == pair[1]:
                # Different in Python, the same once stored (a TypeDecorator normalising on the
                # way in, a dict with int keys in a JSON column): nothing changed.
                continue
            diff[key] = pair
        if not diff:
            return None
        values: dict[str, Any] | None = after
        changes: dict[str, list[Any]] | None = diff
    else:
        values = change.after if change.operation is Operation.INSERT else change.before
        changes = None
    assert values is not None
    row: dict[str, Any] = {OPERATION: change.operation, CHANGES: changes}
    for key in spec.keys:
        value = values[key]
        if key in masks and value is not None:
            value = masks[key](value)
        row[names[key]] = value
    return row
