"""Erasing a record's personal values from every version of its history.

:func:`erase` sets the snapshot values of the given personal columns to NULL in every history
row of the record, nulls their entries in ``changes`` and replaces their salts by the
commitments that keep each row's digest unchanged (see :mod:`versioning.personal`). The erasure
is a transaction of its own, recorded with a transaction row (who, from the audit context; why,
``reason``; which table, key and columns, in ``extra`` — never a value). The live record is not
touched: change or delete it first, in a transaction of its own (that change is recorded, and
erased with the rest).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from versioning import arguments, guard, recording
from versioning.append_only import maintenance
from versioning.declaration import ModelSpec
from versioning.encoding import encode
from versioning.errors import ArgumentError, ErasureError
from versioning.personal import erase_values, unsalted
from versioning.reading import _filters
from versioning.restoring import _label
from versioning.schema import CHANGES, PERSONAL, VERSION_ID

__all__ = ["erase"]


def _columns(spec: ModelSpec, columns: Any) -> list[str]:
    """The attribute keys of ``columns`` (attribute or column names), each declared personal."""
    name = spec.model.__name__
    declared = sorted(spec.personal)
    if isinstance(columns, str) or not isinstance(columns, Iterable):
        raise ArgumentError(
            f"versioning.erase(): columns must be a list of column names, got {columns!r}; "
            f"e.g. columns={declared or ['email']!r}"
        )
    by_column = {spec.history_names[k]: k for k in spec.attrs}
    keys: list[str] = []
    for column in columns:
        key = column if column in spec.attr_set else by_column.get(column)
        if key is None or key not in spec.personal:
            what = "not a recorded column" if key is None else "not declared personal"
            fix = (
                f"the personal columns of {name} are {declared}"
                if declared
                else f"{name} declares none"
            )
            raise ArgumentError(
                f"versioning.erase(): {name}.{column} is {what}; only columns listed in "
                f"{name}.__versioned__['personal'] can be erased ({fix}): add it there before "
                f"recording values you may have to erase"
            )
        if key not in keys:
            keys.append(key)
    if not keys:
        raise ArgumentError(
            f"versioning.erase(): columns is empty; name the columns to erase, e.g. "
            f"columns={declared!r}"
        )
    return keys


def _reason(reason: Any) -> str:
    if not isinstance(reason, str) or not reason.strip():
        raise ArgumentError(
            f"versioning.erase() needs a reason (a non-empty str saying why, e.g. "
            f"reason='GDPR request 2026-113'), got {reason!r}"
        )
    return reason


def erase(
    session: Session, model: type[Any], pk: Any, *, columns: Iterable[str], reason: str
) -> int:
    """Erase the values of personal ``columns`` from every version of a record; the caller
    commits. Returns how many versions changed.

    Must be the only thing its transaction records: pending changes are flushed first, and a
    transaction that already changed versioned records (or changes one afterwards) is refused
    with :class:`~versioning.VersioningError`. A version recorded before a column was declared
    personal holds no salt for it: erasing it would make the version fail verification, so the
    erasure is refused with :class:`~versioning.ErasureError`, before anything is written.
    """
    session = arguments.session(session, "erase")
    spec = arguments.model(model, "erase")
    key = arguments.primary_key(spec, pk)
    keys = _columns(spec, columns)
    reason = _reason(reason)
    session.flush()  # pending changes are their own: note_event refuses them below
    history = spec.history
    connection = session.connection(bind_arguments={"mapper": spec.mapper})
    snapshot = [history.c[spec.history_names[k]] for k in keys]
    select = (
        sa.select(history.c[VERSION_ID], history.c[CHANGES], history.c[PERSONAL], *snapshot)
        .where(*_filters(spec, key))
        .order_by(history.c[VERSION_ID])
        .with_for_update()
    )
    rows = [dict(row) for row in connection.execute(select).mappings()]
    missing = {
        k: [row[VERSION_ID] for row in rows if k in unsalted(history, row, [k])] for k in keys
    }
    missing = {k: ids for k, ids in missing.items() if ids}
    if missing:
        detail = "; ".join(f"{k!r} in version(s) {ids}" for k, ids in missing.items())
        raise ErasureError(
            f"cannot erase from the history of {_label(spec, key)} in {history.name!r}: "
            f"{detail} were recorded before the column was declared personal (they hold no "
            f"salt), so their digest covers the value itself, and erasing it would make "
            f"verify() report them altered. Nothing was written. Declare personal columns "
            f"before recording values that may have to be erased; these versions can only be "
            f"changed by hand, and verify() will report it"
        )
    updates = []
    for row in rows:
        erased = erase_values(history, row, keys)
        if erased is not None:
            updates.append(
                {"e_id": row[VERSION_ID], "e_changes": erased[0], "e_personal": erased[1]}
            )
    dialect = connection.dialect
    model_name = spec.model.__name__
    extra = {
        "erasure": {
            "table": history.fullname,
            "model": model_name,
            "key": [
                encode(spec.type_of(k), v, dialect, f"{model_name}.{k}")
                for k, v in zip(spec.pk_keys, key, strict=True)
            ],
            "columns": keys,
            "versions": len(updates),
        }
    }
    recording.note_event(session, spec, reason=reason, extra=extra)
    if updates:
        statement = (
            history.update()
            .where(history.c[VERSION_ID] == sa.bindparam("e_id"))
            .values(
                {
                    **{column: None for column in snapshot},
                    history.c[CHANGES]: sa.bindparam("e_changes", type_=history.c[CHANGES].type),
                    history.c[PERSONAL]: sa.bindparam("e_personal", type_=history.c[PERSONAL].type),
                }
            )
        )
        with guard.writing(), maintenance(connection):
            connection.execute(statement, updates)
    return len(updates)
