"""Restoring a record to a previous version, re-creating it if it was deleted.

A restore is an ordinary change of the live row, so it is recorded like any other; the transaction's
``reason`` says what was restored unless the audit context gives one. What is written back:

* never masked or excluded columns: history does not hold their real values. They keep their live
  value (or, when re-creating a deleted record, their column default);
* never a column the database computes (``Computed``, ``Identity(always=True)``, a
  ``server_default=FetchedValue()``): the database gives it its value, and history records that;
* never the ``version_id_col``: a version counter only grows. An update bumps it as any other
  does; a re-created record gets the value that follows the last one history recorded for it, so a
  writer still holding an older version fails with ``StaleDataError``;
* on an update, never a column with ``onupdate`` / ``server_onupdate``: the restore is a change
  made now, and those columns take the value any update gives them;
* never a column the version does not hold: one that is NULL in history but NOT NULL now (added
  by a migration after the version was recorded). It keeps its live value, or, when re-creating
  the record, takes its default; with no default, the restore is refused before anything is
  written (see docs/migrations.md);
* never a column whose value was erased from the version (:attr:`Version.erased`, see
  :func:`versioning.erase`): the same as a column the version does not hold — it keeps its live
  value, or, when re-creating the record, takes its default (NULL for a nullable column); a NOT
  NULL column without a default makes the re-creation refused before anything is written.

The restore compares against the row as the database holds it, read (and locked where the backend
can) at once, never against values the session may hold from before another transaction changed
the row.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, overload

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.orm import InstanceState, Mapper, Session, UOWTransaction
from sqlalchemy.orm.attributes import set_committed_value

from versioning import _compat, arguments, guard, recording
from versioning.concealed import masked_unloaded
from versioning.declaration import ModelSpec, require_spec
from versioning.errors import ArgumentError, RestoreConflictError, RestoreError
from versioning.operation import Operation
from versioning.reading import _MISSING, Version, _filters, _instance, _key, version_at
from versioning.schema import TRANSACTION_ID, VERSION_ID
from versioning.snapshots import latest

__all__ = ["restore"]

#: ``session.info`` key: (state, attribute, value) of each version counter a re-creation sets.
_FRESH_VERSION = "_versioning_fresh_version"


def _label(spec: ModelSpec, key: tuple[Any, ...]) -> str:
    """How restore's messages name a record: ``Invoice 1``, ``Item ('north', 7)``."""
    return f"{spec.model.__name__} {key[0] if len(key) == 1 else key!r}"


def _generated(column: sa.Column[Any]) -> bool:
    """Whether the database gives this column its value on INSERT and does not take one."""
    server_default = column.server_default
    return (
        column.computed is not None
        or (column.identity is not None and bool(column.identity.always))
        or (
            # A bare FetchedValue (a trigger, say); a DefaultClause or Identity can be overridden.
            isinstance(server_default, sa.FetchedValue)
            and not isinstance(server_default, sa.DefaultClause | sa.Identity | sa.Computed)
        )
    )


def _set_on_update(column: sa.Column[Any]) -> bool:
    """Whether an UPDATE gives this column a value of its own (the restore leaves it to it)."""
    return (
        column.computed is not None
        or (column.identity is not None and bool(column.identity.always))
        or column.onupdate is not None
        or column.server_onupdate is not None
    )


def _version_key(spec: ModelSpec) -> str | None:
    column = spec.mapper.version_id_col
    if column is None:
        return None
    return spec.mapper.get_property_by_column(column).key


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
    label = _label(spec, version.primary_key)
    version_key = _version_key(spec)
    for key in spec.pk_keys:
        if _generated(spec.live_columns[key]):
            raise RestoreError(
                f"cannot re-create {label}: its primary key column "
                f"{key!r} is generated by the database, which does not let it be written, so "
                f"the record cannot get its key back; insert it by hand (e.g. PostgreSQL's "
                f"OVERRIDING SYSTEM VALUE) or restore it under a new key"
            )
    for prop in mapper.column_attrs:
        key = prop.key
        if key in spec.attr_set and key not in spec.masks:
            continue
        why = "masked" if key in spec.masks else "excluded from history"
        if key == version_key:
            if mapper.version_id_generator is False:
                continue  # the database gives it its value
            raise RestoreError(
                f"cannot re-create {label}: its version column {key!r} "
                f"is {why}, so restore cannot give it a value later than every one it had (a "
                f"writer holding an old version would then overwrite the record); record the "
                f"column in history or re-create the record by hand"
            )
        for column in prop.columns:
            if isinstance(column, sa.Column) and not _has_default(column):
                raise RestoreError(
                    f"cannot re-create {label}: column "
                    f"{key!r} is {why}, so history cannot give it back, and it is NOT NULL "
                    f"without a default; give the column a default or restore it by hand"
                )


def _absent(spec: ModelSpec, version: Version, writable: list[str]) -> set[str]:
    """The columns ``version`` does not hold: NULL in history, NOT NULL in the live table.

    A column added (by a migration) after the version was recorded is NULL in its history row;
    so is one made NOT NULL since. Neither can be written back as NULL.
    """
    return {
        k
        for k in writable
        if version.state.get(k) is None and spec.live_columns[k].nullable is False
    }


def _check_erased_creatable(spec: ModelSpec, version: Version, erased: set[str]) -> None:
    """A re-created record gives an erased column its default (or NULL); refuse if it has none."""
    for k in sorted(erased):
        column = spec.live_columns[k]
        if column.nullable is False and not _has_default(column):
            raise RestoreError(
                f"cannot re-create {_label(spec, version.primary_key)} as of "
                f"transaction {version.transaction_id}: the value of column {k!r} was erased from "
                f"that version, and the column is NOT NULL without a default; give the column a "
                f"default, or re-create the record by hand with a value for {k!r}"
            )


def _check_absent_creatable(spec: ModelSpec, version: Version, absent: set[str]) -> None:
    """A re-created record gives an absent column its default; refuse if it has none."""
    for k in sorted(absent):
        column = spec.live_columns[k]
        if column.default is None and column.server_default is None and not _generated(column):
            raise RestoreError(
                f"cannot re-create {_label(spec, version.primary_key)} as of "
                f"transaction {version.transaction_id}: that version holds no value for column "
                f"{k!r} (NULL in history: added or made NOT NULL after it was recorded), which "
                f"is NOT NULL without a default; give the column a default, or fill the history "
                f"column for old versions in the migration that added it, or re-create the "
                f"record by hand"
            )


@overload
def restore(session: Session, target: Version, *, relationships: Any = None) -> Any: ...
@overload
def restore(
    session: Session,
    target: type[Any],
    pk: Any,
    *,
    at: dt.datetime | int,
    relationships: Any = None,
) -> Any: ...
def restore(
    session: Session,
    target: Any,
    pk: Any = _MISSING,
    *,
    at: dt.datetime | int | None = None,
    relationships: Any = None,
) -> Any:
    """Put a record back to a version and return the live instance; the caller commits.

    ``restore(session, version)`` restores a :class:`Version` (for a delete version, the state
    just before the deletion); ``restore(session, Model, pk, at=...)`` the record as it was at
    ``at``. Changes pending in the session are flushed first (recorded as their own change); the
    live row is then read from the database, locked where the backend can, and compared with the
    version. The restore is flushed at once, so a constraint it would violate raises
    :class:`RestoreConflictError` here, with data and history left unchanged.

    ``relationships`` names relationships (dotted paths: ``["lines", "lines.notes"]``) to bring
    back to the same moment with the record: see :mod:`versioning.restoring_related`.
    """
    session = arguments.session(session, "restore")
    if isinstance(target, Version):
        if pk is not _MISSING or at is not None:
            raise ArgumentError(
                "versioning.restore(session, version) takes no primary key and no `at`: the "
                "version names both"
            )
        version = target
        paths = _paths(version.model, relationships)
        # A delete version holds the state just before the deletion: its relationships then.
        moment: dt.datetime | int = version.transaction_id - (
            1 if version.operation is Operation.DELETE else 0
        )
    else:
        if not isinstance(target, type) or pk is _MISSING or at is None:
            raise ArgumentError(
                f"versioning.restore() takes a Version, or a model class, a primary key and "
                f"at=: call restore(session, version) or restore(session, Model, pk, at=...), "
                f"got restore(session, {arguments.shown(target)}"
                + ("" if pk is _MISSING else f", {pk!r}")
                + ("" if at is None else f", at={at!r}")
                + ")"
            )
        spec = arguments.model(target, "restore")
        at = arguments.moment(at, "restore")
        paths = _paths(target, relationships)
        found = version_at(session, target, pk, at)
        if found is None or found.operation is Operation.DELETE:
            raise RestoreError(
                f"{_label(spec, _key(spec, pk))} did not exist at {at!r}: there is no "
                f"state to restore (to remove the record, delete it)"
            )
        version = found
        moment = at
    if paths:
        from versioning.restoring_related import restore_related

        return restore_related(session, version, moment, paths)
    return _apply(session, version)


def _paths(model: type[Any], relationships: Any) -> tuple[str, ...]:
    if relationships is None:
        return ()
    from versioning.restoring_related import check_relationships

    return check_relationships(model, relationships)


def _live(session: Session, spec: ModelSpec, key: tuple[Any, ...]) -> Any:
    """The live instance of the record, as the database holds it now, or ``None``."""
    return live_rows(session, spec, [key]).get(key)


def _key_match(columns: Sequence[Any], keys: Sequence[tuple[Any, ...]]) -> sa.ColumnElement[bool]:
    """``columns`` (a key) equal to one of ``keys``."""
    if len(columns) == 1:
        return columns[0].in_([k[0] for k in keys])  # type: ignore[no-any-return]
    return sa.tuple_(*columns).in_(keys)


def live_rows(
    session: Session,
    spec: ModelSpec,
    keys: Sequence[tuple[Any, ...]],
    also: sa.ColumnElement[bool] | None = None,
) -> dict[tuple[Any, ...], Any]:
    """The live instances of the records of ``spec``'s hierarchy with these keys (and of those
    matching ``also``, a condition on the root table's columns), as the database holds them now,
    by key: one query, whatever their number. A key not found is absent."""
    root = spec.root
    # The session may hold values another transaction has changed since (expire_on_commit=False,
    # a long-lived session): read the rows themselves, locked so that they cannot change before
    # the restore writes them, and put their values in the instances the session holds. One query
    # where the identity map would have answered: correctness needs it. (Not session.get(): with
    # a lock it raises StaleDataError for a held instance whose version counter is behind.)
    mapper = root.mapper
    table = mapper.local_table
    conditions: list[Any] = []
    if keys:
        conditions.append(_key_match([root.live_columns[k] for k in spec.pk_keys], keys))
    if also is not None:
        conditions.append(also)
    if not conditions:
        return {}
    where = sa.or_(*conditions)
    union = _polymorphic_union(mapper)
    statement: Any
    if union is None:
        statement = (
            sa.select(root.model)
            # Masked columns stay unloaded: the restore never writes them and the engine's debug
            # log would show them.
            .options(*masked_unloaded(spec.masks, root.model))
            .where(where)
            .with_for_update(of=table)
        )
    else:
        # Concrete inheritance loads through a UNION of every concrete table (ConcreteBase),
        # which cannot be locked, and which holds the other classes' records of the same key:
        # the class's own table is read, with the discriminator the union would give its rows.
        masked = {root.live_columns[k] for k in spec.masks if k in root.live_columns}
        columns: list[Any] = [c for c in table.c if c not in masked]
        columns.append(sa.literal(mapper.polymorphic_identity).label(union.name))
        own = sa.select(*columns).where(where).with_for_update(of=table)
        statement = sa.select(root.model).from_statement(own)
    statement = statement.execution_options(populate_existing=True)
    found = {}
    for live in session.execute(statement).scalars().unique():
        state = sa.inspect(live)
        found[tuple(state.dict[k] for k in spec.pk_keys)] = live
    for key in keys:
        if key not in found:
            # Deleted by another transaction while the session held it: that instance is gone.
            gone = session.identity_map.get(mapper.identity_key_from_primary_key(key))
            if gone is not None:
                session.expunge(gone)
    return found


def _polymorphic_union(mapper: Mapper[Any]) -> sa.ColumnElement[Any] | None:
    """The discriminator of a concrete class loaded through a polymorphic UNION, else ``None``."""
    on = mapper.polymorphic_on
    table = mapper.local_table
    if on is None or (not mapper.concrete and mapper.inherits is not None):
        return None
    name = getattr(on, "name", None)
    if getattr(on, "table", None) is not table and str(name) not in table.c:
        return on  # a column of the union (pjoin.type), not of the class's table
    return None


def next_versions(
    session: Session, spec: ModelSpec, keys: Sequence[tuple[Any, ...]]
) -> dict[tuple[Any, ...], Any]:
    """The version counter values of re-created records: the one after the last recorded, by
    key; ``{}`` for a model without one. One query, whatever the number of records.

    Any version another transaction can hold was committed, so its history row is there to read
    (history noted in this transaction and not yet written holds versions no one else has seen).
    """
    mapper = spec.mapper
    version_key = _version_key(spec)
    generate = mapper.version_id_generator
    if version_key is None or generate is False or generate is None or not keys:
        return {}
    names = spec.history_names
    statement, _ = latest(
        spec,
        None,
        False,
        narrow=[_key_match([spec.history.c[names[k]] for k in spec.pk_keys], keys)],
        deleted=True,
    )
    connection = session.connection(bind_arguments={"mapper": mapper})
    last = {
        tuple(row[names[k]] for k in spec.pk_keys): row[names[version_key]]
        for row in connection.execute(statement).mappings()
    }
    return {key: generate(last.get(key)) for key in keys}


@event.listens_for(Session, "after_flush", insert=True)
def _set_fresh_version(session: Session, flush_context: UOWTransaction) -> None:
    """Give a re-created record its version counter value (SQLAlchemy inserts the first one).

    Runs before the capture's own ``after_flush`` (``insert=True``), so the INSERT it records
    holds the value the row has when the flush ends.
    """
    wanted: list[tuple[InstanceState[Any], str, Any]] = session.info.pop(_FRESH_VERSION, [])
    for state, key, value in wanted:
        _set_one_fresh_version(session, state, key, value)


def _set_one_fresh_version(
    session: Session, state: InstanceState[Any], key: str, value: Any
) -> None:
    obj = state.obj()
    if obj is None:  # pragma: no cover - the restore holds the instance
        return
    mapper = state.mapper
    column = mapper.version_id_col
    assert column is not None
    table = column.table
    where = [c == state.dict[mapper.get_property_by_column(c).key] for c in table.primary_key]
    connection = session.connection(bind_arguments={"mapper": mapper})
    with guard.writing():
        connection.execute(sa.update(table).where(*where).values({column: value}))
    set_committed_value(obj, key, value)


@contextmanager
def _fresh_version(session: Session, fresh: list[tuple[Any, ModelSpec, Any]]) -> Iterator[None]:
    if not fresh:
        yield
        return
    wanted = []
    for live, spec, value in fresh:
        key = _version_key(spec)
        assert key is not None
        wanted.append((sa.inspect(live), key, value))
    session.info[_FRESH_VERSION] = wanted
    try:
        yield
    finally:
        session.info.pop(_FRESH_VERSION, None)


def _check_loadable(session: Session, spec: ModelSpec, version: Version, keys: list[str]) -> None:
    """Refuse a value of the version that the model's type no longer accepts.

    History outlives the model: a value its type has stopped accepting (an ``Enum`` member removed
    since) comes back from history as stored (see ``reading._AsStored``). Written back, the live
    row could not be loaded. An ``Enum`` value must be one of its members today; any value must
    go through the type's bind processing as the flush would send it. Pure Python, no query.
    """
    dialect = session.get_bind(mapper=spec.mapper).dialect
    for key in keys:
        value = version.state.get(key)
        if value is None:
            continue
        type_ = spec.type_of(key)
        try:
            if isinstance(type_, sa.Enum) and not _enum_member(type_, value):
                raise LookupError(value)
            # What the flush would send: a value the type refuses to bind fails here, before
            # anything is written, rather than as a driver error.
            bind = type_.dialect_impl(dialect).bind_processor(dialect)
            if bind is not None:
                bind(value)
        except Exception:
            raise RestoreError(
                f"cannot restore {_label(spec, version.primary_key)} to transaction "
                f"{version.transaction_id}: history holds {key}={value!r}, which the type of "
                f"{spec.model.__name__}.{key} ({type_!r}) no longer accepts (a member removed "
                f"from an Enum, a type changed since), so the record could not be loaded "
                f"afterwards. Nothing was written: add the value back to the type, or restore "
                f"by hand, setting {key} to a value the type accepts"
            ) from None


def _enum_member(type_: sa.Enum, value: Any) -> bool:
    """Whether ``value`` is one of the Enum's members (or its stored names) today."""
    enum_class = type_.enum_class
    if enum_class is not None and isinstance(value, enum_class):
        return True
    return isinstance(value, str) and value in type_.enums


def _describe(session: Session, spec: ModelSpec, version: Version, undelete: bool) -> str:
    """What the restore does, for the transaction's reason and restore's errors.

    A delete version holds the state just before the deletion: that of the version before it,
    which is named (one indexed query, only when restoring a delete version).
    """
    label = _label(spec, version.primary_key)
    if version.operation is not Operation.DELETE:
        return f"restore {label} to transaction {version.transaction_id}"
    history = spec.history
    previous = (
        sa.select(history.c[TRANSACTION_ID])
        .where(*_filters(spec, version.primary_key), history.c[VERSION_ID] < version.version_id)
        .order_by(history.c[VERSION_ID].desc())
        .limit(1)
    )
    connection = session.connection(bind_arguments={"mapper": spec.mapper})
    before = connection.execute(previous).scalar()
    verb = "undelete" if undelete else "restore"
    deleted = f"its deletion in transaction {version.transaction_id}"
    if before is None:  # recorded since before versioning began: only the deletion is known
        return f"{verb} {label} as it was before {deleted}"
    if undelete:
        return f"undelete {label} as of transaction {before}, the version before its deletion"
    return f"restore {label} as of transaction {before}, the version before {deleted}"


@dataclass
class Step:
    """One record's part of a restore, planned (checked, live row read) before anything is written.

    ``live`` is the live instance, or ``None`` until :func:`write_step` re-creates the record;
    ``differs`` the columns an update writes back.
    """

    spec: ModelSpec
    version: Version
    live: Any
    created: bool
    writable: list[str]
    absent: set[str]
    differs: list[str] = field(default_factory=list)
    fresh: Any = _MISSING

    @property
    def changes(self) -> bool:
        return self.created or bool(self.differs)


def check_loadable(session: Session, version: Version) -> None:
    """Refuse, before anything is flushed, a value of ``version`` its model's type refuses."""
    spec = require_spec(version.model)
    _check_loadable(session, spec, version, [*spec.pk_keys, *_writable(spec)])


def _writable(spec: ModelSpec) -> list[str]:
    version_key = _version_key(spec)
    return [
        k for k in spec.attrs if k not in spec.masks and k not in spec.pk_keys and k != version_key
    ]


def plan_step(session: Session, version: Version, live: Any = _MISSING) -> Step:
    """Read (and lock) the live row of ``version``'s record — unless given, as ``live`` (``None``:
    there is none), read by :func:`live_rows` — and check it can be put back: nothing is written.
    Pending changes must have been flushed. A re-created record's version counter is left to
    :func:`next_versions` when ``live`` is given."""
    spec = require_spec(version.model)
    key = version.primary_key
    writable = _writable(spec)
    given = live is not _MISSING
    if not given:
        live = _live(session, spec, key)
    erased = set(writable) & version.erased
    absent = _absent(spec, version, writable) | erased  # an erased value is not held either
    if live is None:
        _check_creatable(spec, version)
        _check_erased_creatable(spec, version, erased)
        _check_absent_creatable(spec, version, absent - erased)
        step = Step(spec, version, None, True, writable, absent)
        if not given:
            step.fresh = next_versions(session, spec, [key]).get(key, _MISSING)
        return step
    if type(live) is not version.model:
        raise RestoreError(
            f"cannot restore {_label(spec, key)}: the live record is now a {type(live).__name__}"
        )
    differs = [
        k
        for k in writable
        if k not in absent  # keeps its live value
        and not _set_on_update(spec.live_columns[k])
        and not spec.type_of(k).compare_values(getattr(live, k), version.state[k])
    ]
    return Step(spec, version, live, False, writable, absent, differs)


def write_step(session: Session, step: Step) -> Any:
    """Put the planned values in the live instance (a new one, added, for a re-created record);
    not flushed. Returns the live instance."""
    version = step.version
    if step.created:
        if step.live is None:
            live = _instance(version.model, {k: version.state[k] for k in step.spec.pk_keys})
            for k in step.writable:
                if not _generated(step.spec.live_columns[k]) and k not in step.absent:
                    setattr(live, k, version.state[k])  # an absent column takes its default
            session.add(live)
            step.live = live
        return step.live
    for k in step.differs:
        setattr(step.live, k, version.state[k])
    return step.live


def describe_step(session: Session, step: Step) -> str:
    """What restoring this record does, for the transaction's reason."""
    return _describe(session, step.spec, step.version, undelete=step.created)


def flush_restore(
    session: Session,
    steps: list[Step],
    what: str,
    also: Sequence[ModelSpec] = (),
    removals: Callable[[], None] | None = None,
    writes: Callable[[], None] | None = None,
) -> None:
    """Flush the written steps (and the other changes the restore made to records of ``also``)
    as one restore whose reason is ``what``; a constraint violated raises
    :class:`RestoreConflictError` with data and history left unchanged.

    ``removals`` makes its writes first, flushed on their own (a record removed frees a unique
    value a record put back may hold); ``writes`` then makes the rest, flushed with the steps."""
    note = recording.note_reason(session, what)
    specs = [*(step.spec for step in steps), *also]
    masked = any(spec.masks for spec in specs)
    try:
        if removals is not None:
            removals()
            session.flush()
        if writes is not None:
            writes()
        fresh = [(s.live, s.spec, s.fresh) for s in steps if s.fresh is not _MISSING]
        with _fresh_version(session, fresh):
            session.flush()
    except sa.exc.IntegrityError as exc:
        recording.forget_reason(session, note)
        spec = next((spec for spec in specs if spec.masks), specs[0])
        conflict = _conflict(session, spec, what, exc)
        if not masked:
            raise conflict from exc
    except BaseException:
        recording.forget_reason(session, note)
        raise
    else:
        return
    # Raised here, outside the ``except`` block: with masked columns the driver's error (whose
    # text may quote a masked value) must not even be the exception's __context__.
    raise conflict


def _apply(session: Session, version: Version) -> Any:
    # Before anything is flushed: a value the model's type no longer accepts is refused.
    check_loadable(session, version)
    # The caller's pending changes go first, as their own change: the restore then starts from
    # the row as the database holds it, and its flush holds nothing but the restore.
    session.flush()
    step = plan_step(session, version)
    if not step.changes:
        return step.live  # already in that state: nothing to write, nothing to record
    live = write_step(session, step)
    flush_restore(session, [step], describe_step(session, step))
    return live


# -- what a constraint violation may say -----------------------------------------------------------

_KINDS = (
    ("unique", ("23505", 1062, 1586, "UNIQUE constraint", "PRIMARY KEY constraint")),
    ("foreign key", ("23503", 1451, 1452, "FOREIGN KEY constraint")),
    ("not null", ("23502", 1048, 1364, "NOT NULL constraint")),
    ("check", ("23514", 3819, 4025, "CHECK constraint")),
)
_MARIADB_KEY = re.compile(r"for key '([\w$.]+)'\Z")
_MARIADB_CONSTRAINT = re.compile(r"CONSTRAINT `([\w$]+)`")
_SQLITE = re.compile(r"\A([A-Z ]+) constraint failed: ([\w$., ]+)\Z")


def _constraint(exc: sa.exc.IntegrityError) -> str:
    """Which constraint the database names, from what can never hold a row's values.

    PostgreSQL gives the name in its diagnostics; MariaDB ends its message with the key's name and
    SQLite's message lists the columns. Nothing else of the driver's text is kept.
    """
    orig = exc.orig
    diag = getattr(orig, "diag", None)
    sqlstate = getattr(diag, "sqlstate", None) or getattr(orig, "sqlstate", None)
    args = getattr(orig, "args", ())
    errno = args[0] if args and isinstance(args[0], int) else None
    text = str(args[-1]) if args else ""
    kind = "a"
    for label, codes in _KINDS:
        if (
            sqlstate in codes
            or errno in codes
            or any(isinstance(c, str) and text.startswith(c) for c in codes)
        ):
            kind = f"a {label}"
            break
    name = getattr(diag, "constraint_name", None)
    if name is None and errno is not None:
        found = _MARIADB_KEY.search(text) or (
            _MARIADB_CONSTRAINT.search(text) if errno in (1451, 1452, 4025) else None
        )
        name = found.group(1) if found else None
    if name is not None:
        return f"{kind} constraint ({name!r})"
    sqlite = _SQLITE.match(text) if errno is None and sqlstate is None else None
    if sqlite is not None:
        return f"{kind} constraint (on {sqlite.group(2)})"
    return f"{kind} constraint"


def _conflict(
    session: Session, spec: ModelSpec, restore: str, exc: sa.exc.IntegrityError
) -> RestoreConflictError:
    what = f"the restore ({restore})"
    then = (
        "the flush was rolled back, so neither data nor history changed: call "
        "session.rollback() and resolve the conflict first"
    )
    if not spec.masks:
        return RestoreConflictError(f"{what} violates a constraint ({exc.orig}); {then}")
    # The database's detail quotes the conflicting row's values, masked ones included: name the
    # constraint only, and do not chain the driver's error.
    error = RestoreConflictError(
        f"{what} violates {_constraint(exc)}; the database's detail is left out because "
        f"{spec.model.__name__} has masked columns; {then}"
    )
    _replace_rollback_cause(session, error)
    return error


def _replace_rollback_cause(session: Session, error: RestoreConflictError) -> None:
    """Keep the driver's error out of the ``PendingRollbackError`` a later call would raise.

    SQLAlchemy keeps the exception that failed a flush on the session's transaction (the private
    ``_rollback_exception``) and quotes it in the ``PendingRollbackError`` raised by any use of
    the session before ``rollback()``; its text has the database's detail. Ours takes its place.
    """
    transaction = session.get_nested_transaction() or session.get_transaction()
    _compat.replace_rollback_exception(transaction, error)
