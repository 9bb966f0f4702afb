"""Restoring a record to a previous version, re-creating it if it was deleted.

A restore is an ordinary change of the live row, so it is recorded like any other; the transaction's
``reason`` says what was restored unless the audit context gives one. Excluded and masked columns
are never written back from history: they keep their live value (or, when re-creating a deleted
record, their column default).
"""

from __future__ import annotations

import datetime as dt
from typing import Any, overload

import sqlalchemy as sa
from sqlalchemy.orm import Session

from versioning.concealed import masked_unloaded
from versioning.declaration import ModelSpec, spec_for
from versioning.errors import RestoreConflictError, RestoreError
from versioning.operation import Operation
from versioning.reading import _MISSING, Version, _instance, _key, version_at
from versioning.transaction import session_state

__all__ = ["restore"]


def _has_default(column: sa.Column[Any]) -> bool:
    return (
        column.nullable is True
        or column.default is not None
        or column.server_default is not None
        or column.computed is not None
        or column.identity is not None
        or (column.primary_key and column.autoincrement is True)
    )


def _check_creatable(spec: ModelSpec, version: Version) -> None:
    """A re-created record gets defaults for what history does not give back; check it can."""
    mapper = spec.mapper
    for prop in mapper.column_attrs:
        key = prop.key
        if key in spec.keyset and key not in spec.masks:
            continue
        for column in prop.columns:
            if isinstance(column, sa.Column) and not _has_default(column):
                why = "masked" if key in spec.masks else "excluded from history"
                raise RestoreError(
                    f"cannot re-create {spec.model.__name__} {version.primary_key!r}: column "
                    f"{key!r} is {why}, so history cannot give it back, and it is NOT NULL "
                    f"without a default; give the column a default or restore it by hand"
                )


@overload
def restore(session: Session, target: Version) -> Any: ...
@overload
def restore(session: Session, target: type[Any], pk: Any, *, at: dt.datetime | int) -> Any: ...
def restore(
    session: Session, target: Any, pk: Any = _MISSING, *, at: dt.datetime | int | None = None
) -> Any:
    """Put a record back to a version and return the live instance; the caller commits.

    ``restore(session, version)`` restores a :class:`Version` (for a delete version, the state
    just before the deletion); ``restore(session, Model, pk, at=...)`` the record as it was at
    ``at``. The restore is flushed at once, so a constraint it would violate raises
    :class:`RestoreConflictError` here, with data and history left unchanged.
    """
    if isinstance(target, Version):
        if pk is not _MISSING or at is not None:
            raise RestoreError("restore(session, version) takes no primary key and no `at`")
        version = target
    else:
        if not isinstance(target, type) or pk is _MISSING or at is None:
            raise RestoreError(
                "call restore(session, version) or restore(session, Model, pk, at=...)"
            )
        spec = spec_for(target)
        found = version_at(session, target, pk, at)
        if found is None or found.operation is Operation.DELETE:
            raise RestoreError(
                f"{spec.model.__name__} {_key(spec, pk)!r} did not exist at {at!r}: there is no "
                f"state to restore (to remove the record, delete it)"
            )
        version = found
    return _apply(session, version)


def _apply(session: Session, version: Version) -> Any:
    spec = spec_for(version.model)
    key = version.primary_key
    root_model = spec.root.model
    live = session.get(
        root_model, key if len(key) > 1 else key[0], options=masked_unloaded(spec.masks, root_model)
    )
    writable = [k for k in spec.keys if k not in spec.masks and k not in spec.pk_keys]
    if live is None:
        _check_creatable(spec, version)
        live = _instance(version.model, {k: version.state[k] for k in spec.pk_keys})
        for k in writable:
            setattr(live, k, version.state[k])
        session.add(live)
    else:
        if type(live) is not version.model:
            raise RestoreError(
                f"cannot restore {version.model.__name__} {key!r}: the live record is now a "
                f"{type(live).__name__}"
            )
        differs = [
            k
            for k in writable
            if not spec.type_of(k).compare_values(getattr(live, k), version.state[k])
        ]
        if not differs:
            return live  # already in that state: nothing to write, nothing to record
        for k in differs:
            setattr(live, k, version.state[k])
    notes = session_state(session).notes
    notes.append(
        f"restore {spec.model.__name__} {key[0] if len(key) == 1 else key!r} "
        f"to transaction {version.transaction_id}"
    )
    try:
        session.flush()
    except sa.exc.IntegrityError as exc:
        raise RestoreConflictError(
            f"restoring {spec.model.__name__} {key!r} to transaction {version.transaction_id} "
            f"violates a constraint ({exc.orig}); the flush was rolled back, so neither data "
            f"nor history changed: call session.rollback() and resolve the conflict first"
        ) from exc
    return live
