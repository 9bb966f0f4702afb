"""Turning a record's values before and after a change into its history row.

A :class:`Change` is what capture found (the unit of work in :mod:`versioning.capture`, statements
in :mod:`versioning.statements`, :mod:`versioning.inserts` and :mod:`versioning.cascades`);
:func:`history_row` makes it the row of its history table: the snapshot (masked), the operation
and, for an update, the changed columns' old and new values as stored (and, for a model with
personal columns, their salts: see :mod:`versioning.personal`). An update that changes nothing
once stored has no row. :mod:`versioning.recording` writes the rows.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.engine import Connection

from versioning.declaration import ModelSpec
from versioning.encoding import encode
from versioning.operation import Operation
from versioning.personal import salts
from versioning.schema import CHANGES, OPERATION, PERSONAL

__all__ = ["Change", "history_row"]


class Change:
    """One record's change: its spec, state (or ``None`` for a statement), operation and values."""

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


def history_row(change: Change, connection: Connection) -> dict[str, Any] | None:
    """The history row of ``change`` (without its transaction id), or ``None`` for no change."""
    spec = change.spec
    masks = spec.masks
    names = spec.history_names
    if change.operation is Operation.UPDATE:
        assert change.before is not None and change.after is not None
        before, after = change.before, change.after
        diff: dict[str, list[Any]] = {}
        dialect = connection.dialect
        for key in spec.attrs:
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
    for key in spec.attrs:
        value = values[key]
        if key in masks and value is not None:
            value = masks[key](value)
        row[names[key]] = value
    if spec.personal:
        row[PERSONAL] = salts(spec.personal)
    return row
