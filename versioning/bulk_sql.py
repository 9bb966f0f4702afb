"""History rows of an ORM ``update().where()`` / ``delete().where()``, made inside the database.

:mod:`versioning.statements` records such a statement by reading the rows it may change, running
it restricted to their keys and reading them back. Building every history row in Python from
those reads, and sending each back in the history ``INSERT``, costs about ten times the statement
itself. Here the rows never pass through Python; the database computes them with the SQL of
:mod:`versioning.history_sql`, in per-connection ``TEMPORARY`` staging tables:

1. the keys the statement may change are read (and locked) through the session, with its full ORM
   criteria, as for the Python path (:func:`versioning.statements._candidate_keys`);
2. :meth:`Plan.stage_old` copies those rows, as they are, into the *old* stage (one
   ``INSERT ... SELECT``);
3. the statement runs restricted to the keys, as for the Python path;
4. :meth:`Plan.stage_update` / :meth:`Plan.stage_delete` compute each history row (snapshot,
   ``changes``, personal salts) from the old stage and the live table into the *rows* stage
   (one ``INSERT ... SELECT``) — the :class:`Staged` batch the recording keeps;
5. at commit, :mod:`versioning.recording` moves the batch into the history table, with the
   transaction id, in its place among the transaction's other rows of that table
   (:meth:`Plan.move`: one ``INSERT ... SELECT ... ORDER BY key ... RETURNING``); the rows
   returned, as stored, are hashed for the digest as ``verify`` will hash them.

A batch is identified by a number unique in the process, so a row left in a stage by anything
unforeseen is never moved by another transaction; stage rows live as long as their database
transaction (PostgreSQL ``ON COMMIT DELETE ROWS``; elsewhere deleted once used), and a rolled back
savepoint or transaction takes back what it staged, as it takes back the statement (temporary
tables are transactional on all three backends). The recording forgets such a batch with the
savepoint, as it forgets Python rows.

A model the SQL cannot represent (:func:`plan_for` returns ``None``: another database, a type or
mask without an SQL form, inheritance, foreign keys with database-side actions whose children
are recorded from Python) keeps the Python path: that is not an error.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Dialect, Engine, ExceptionContext
from sqlalchemy.orm import Session, SessionTransaction
from sqlalchemy.schema import CreateTable

from versioning import history_sql, personal
from versioning.canonical import row_hashes
from versioning.declaration import ModelSpec, cascade_edges
from versioning.errors import ConfigurationError, VersioningError
from versioning.live_rows import Key, keys_in
from versioning.operation import Operation
from versioning.schema import CHANGES, OPERATION, PERSONAL, TRANSACTION_ID, VERSION_ID

__all__ = ["OPTION", "STAGER", "Plan", "Staged", "Stager", "plan_for", "want"]

#: The execution option that switches this on (``True``), on an engine, a connection, a
#: session's statements or one statement; off by default for now (the Python path). Leave it off
#: behind a connection pooler that gives each transaction another server connection (PgBouncer's
#: transaction mode), where temporary tables made in one transaction are not there in the next.
OPTION = "versioning_bulk_sql"

#: The execution option that hands a :class:`Stager` to the read it rewrites.
STAGER = "versioning_stager"

#: Batch numbers: unique in the process, so that stage rows are never taken for another batch's.
_BATCHES = itertools.count(1)

_BATCH = "versioning_batch"

#: In a connection's ``info``: the stages it has (created and committed), and the stages created
#: in its current transaction (PostgreSQL and SQLite take them back with a rollback).
_READY = "versioning_stages"
_CREATED = "versioning_stages_created"

#: Where a history table keeps its plans, per dialect name (``None``: the Python path).
_PLANS = "versioning_bulk_sql_plans"


@dataclass(eq=False)
class Staged:
    """The history rows of one statement, waiting in a stage of its connection: computed in the
    rows stage, or (a DELETE that removed every row it read) the old rows themselves."""

    plan: Plan
    batch: int
    move_kind: str

    def move(self, connection: Connection, tx_id: int) -> list[bytes]:
        """Move the rows into the history table with ``tx_id``; their hashes in version order."""
        return self.plan.move(connection, self, tx_id)


class Stager:
    """Turns the statement's locked read of its candidates' keys into one that also copies
    their rows into the old stage (an execution option of that read: see _into_stage)."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.batch = next(_BATCHES)
        self.done = False

    def rewrite(self, statement: str) -> str:
        """``SELECT <keys> FROM ...`` -> ``INSERT INTO <old stage> (...) SELECT <batch>, <keys>,
        <other columns> FROM ... RETURNING <keys>``: the same rows, in the same statement."""
        plan = self.plan
        at = statement.find("\nFROM ")
        if self.done or not statement.startswith("SELECT ") or at < 0:
            return statement  # not the read this was made for: the keys are copied after it
        listed = statement[len("SELECT ") : at].rstrip()
        if listed != plan.key_list:
            return statement
        self.done = True
        return (
            f"{plan.insert_head} SELECT {self.batch}, {listed}{plan.other_list}"
            f"{statement[at:]} RETURNING {plan.returned_keys}"
        )


def _stage_name(kind: str, history: sa.Table) -> str:
    digest = hashlib.sha256(history.fullname.encode()).hexdigest()[:12]
    return f"versioning_{kind}_{digest}"


def _temporary(name: str, dialect: Dialect, columns: list[sa.Column[Any]]) -> sa.Table:
    options: dict[str, Any] = {"prefixes": ["TEMPORARY"]}
    if dialect.name == "postgresql":
        options["postgresql_on_commit"] = "DELETE ROWS"
    elif dialect.name in ("mysql", "mariadb"):
        # Transactional (a rollback takes staged rows back), and strings kept byte for byte.
        options.update(mysql_engine="InnoDB", mysql_charset="utf8mb4", mysql_collate="utf8mb4_bin")
    return sa.Table(
        name, sa.MetaData(), sa.Column(_BATCH, sa.Integer(), nullable=False), *columns, **options
    )


def _copy(name: str, type_: sa.types.TypeEngine[Any]) -> sa.Column[Any]:
    return sa.Column(name, type_, nullable=True)


def _named_type(type_: sa.types.TypeEngine[Any], dialect: Dialect) -> bool:
    """Whether a column of ``type_`` depends on a type of its own in the database (a
    PostgreSQL ENUM or DOMAIN): a stage of such a column would keep that type from being
    dropped as long as the connection lives."""
    impl = type_.dialect_impl(dialect)
    if isinstance(impl, sa.types.TypeDecorator):
        impl = impl.impl_instance.dialect_impl(dialect)
    if isinstance(impl, sa.ARRAY):
        return _named_type(impl.item_type, dialect)
    if isinstance(impl, sa.Enum):
        return bool(impl.native_enum and dialect.supports_native_enum)
    return isinstance(impl, sa.types.SchemaType) and getattr(impl, "name", None) is not None


class Plan:
    """The statements that stage, compute and move one model's history rows on one dialect."""

    def __init__(self, spec: ModelSpec, dialect: Dialect) -> None:
        self.spec = spec
        history = self.history = spec.history
        live = spec.mapper.local_table
        assert isinstance(live, sa.Table)
        self.live = live
        keys = spec.pk_keys + tuple(k for k in spec.attrs if k not in spec.pk_keys)
        live_columns = [spec.live_columns[k] for k in keys]
        for column in [*live_columns, *history.columns]:
            if column.name != OPERATION and _named_type(column.type, dialect):
                raise ConfigurationError(
                    f"{spec.model.__name__}.{column.name}: a type of its own in the database"
                )
        self.old = _temporary(
            _stage_name("old", history), dialect, [_copy(c.name, c.type) for c in live_columns]
        )
        moved = [c for c in history.columns if c.name not in (VERSION_ID, TRANSACTION_ID)]
        self.rows = _temporary(
            _stage_name("rows", history), dialect, [_copy(c.name, c.type) for c in moved]
        )
        self.moved = [c.name for c in moved]
        self._creates = [
            str(CreateTable(t, if_not_exists=True).compile(dialect=dialect)).strip()
            for t in (self.old, self.rows)
        ]
        self.pk = [spec.live_columns[k] for k in spec.pk_keys]
        copied = [c.name for c in live_columns]
        self._copied = copied
        # The texts the locked read of the keys is rewritten with (see Stager): its select list
        # as the ORM renders it, the other columns the same way, the INSERT's head.
        self.key_list = _select_list(self.pk, dialect)
        others = live_columns[len(self.pk) :]
        self.other_list = ", " + _select_list(others, dialect) if others else ""
        preparer = dialect.identifier_preparer
        names = ", ".join(preparer.quote(n) for n in [_BATCH, *copied])
        self.insert_head = f"INSERT INTO {preparer.format_table(self.old)} ({names})"
        self.returned_keys = ", ".join(preparer.quote(c.name) for c in self.pk)

        batch = sa.bindparam("batch", type_=sa.Integer())
        old = self.old.alias("o")
        new = live.alias("n")
        joined = old.join(new, sa.and_(*[old.c[c.name] == new.c[c.name] for c in self.pk]))
        personal_value = history_sql.personal_json(spec, dialect)
        snapshot_names = [n for n, _ in history_sql.snapshot_columns(spec, new, dialect)]
        names_out = [OPERATION, CHANGES, *snapshot_names]
        if personal_value is not None:
            names_out.append(PERSONAL)

        def row_values(source: sa.FromClause, operation: Operation, changes: Any) -> list[Any]:
            values: list[Any] = [
                sa.literal(operation, history.c[OPERATION].type),
                changes,
                *[expr for _, expr in history_sql.snapshot_columns(spec, source, dialect)],
            ]
            if personal_value is not None:
                values.append(personal_value)
            return values

        changes = history_sql.changes_json(spec, old, new, dialect)
        # Every candidate found again, its changes NULL if nothing changed (the move leaves those
        # out); each returns whether it changed: as many as candidates, unless a key changed.
        changed: Any = self.rows.c[CHANGES].is_not(None)
        if dialect.name == "sqlite":
            # SQLite 3.40 answers IS [NOT] NULL wrongly in this RETURNING (the stored NULL
            # reads as not NULL); the length of the text is right (NULL when NULL).
            changed = sa.func.length(sa.type_coerce(self.rows.c[CHANGES], sa.Text()))
        updated = sa.select(batch, *row_values(new, Operation.UPDATE, changes))
        if dialect.name in ("mysql", "mariadb"):
            # MariaDB's INSERT ... SELECT locks every row it reads from the live table: the old
            # rows first, each live row then found by its key, so that it locks only the rows
            # the statement had locked already (a scan of the live table would lock them all).
            updated = updated.prefix_with("STRAIGHT_JOIN").with_hint(new, "FORCE INDEX (PRIMARY)")
        self._stage_update = (
            self.rows.insert()
            .from_select(
                [_BATCH, *names_out],
                updated.select_from(joined).where(old.c[_BATCH] == batch),
            )
            .returning(changed)
        )
        gone = ~sa.exists().where(*[new.c[c.name] == old.c[c.name] for c in self.pk])
        deleted = sa.select(batch, *row_values(old, Operation.DELETE, sa.null())).where(
            old.c[_BATCH] == batch, gone
        )
        # preserve_rowcount: SQLAlchemy keeps an INSERT's row count only when asked.
        self._stage_delete = (
            self.rows.insert()
            .from_select([_BATCH, *names_out], deleted)
            .execution_options(preserve_rowcount=True)
        )
        self._copy_source = sa.select(batch, *[live.c[n] for n in copied])
        self._clear = [
            table.delete().where(table.c[_BATCH] == batch) for table in (self.old, self.rows)
        ]
        self._on_commit = dialect.name == "postgresql"
        self._floats = [
            c.name
            for c in history.columns
            if dialect.name == "sqlite" and _is_float(c.type.dialect_impl(dialect))
        ]
        # The moves: in key order, as the Python path writes a statement's rows.
        tx_id = sa.bindparam("tx_id", type_=history.c[TRANSACTION_ID].type)
        stage = self.rows
        from_rows = sa.select(tx_id, *[stage.c[n] for n in names_out]).where(
            stage.c[_BATCH] == batch
        )
        from_old = (
            sa.select(tx_id, *row_values(old, Operation.DELETE, sa.null()))
            .where(old.c[_BATCH] == batch)
            .order_by(*[old.c[c.name] for c in self.pk])
        )
        order = [stage.c[spec.history_names[k]] for k in spec.pk_keys]
        sources = {
            "changed": from_rows.where(stage.c[CHANGES].is_not(None)).order_by(*order),
            "rows": from_rows.order_by(*order),
            "old": from_old,
        }
        # The rows as stored, for their hashes; ``changes`` as its text, parsed here (the
        # driver's JSON loading costs twice that).
        returned = [
            sa.type_coerce(sa.cast(c, sa.Text()), sa.Text()) if c.name == CHANGES else c
            for c in history.columns
        ]
        self._move = {
            kind: history.insert()
            .from_select([TRANSACTION_ID, *names_out], source)
            .returning(*returned)
            for kind, source in sources.items()
        }

    # --- the steps ------------------------------------------------------------------------------

    def ready(self, connection: Connection) -> bool:
        """Whether this connection has the stages (made by :meth:`create`, committed)."""
        return self.old.name in connection.info.get(_READY, ())

    def create(self, connection: Connection) -> None:
        """Create the stages on this connection (at a commit: see :func:`want`)."""
        if self.ready(connection):
            return
        for create in self._creates:
            connection.exec_driver_sql(create)
        info = connection.info
        if connection.dialect.name in ("mysql", "mariadb"):  # DDL not undone by a rollback
            info.setdefault(_READY, set()).add(self.old.name)
        else:  # there once the transaction commits (see _committed)
            info.setdefault(_CREATED, set()).add(self.old.name)

    def copy_old(self, connection: Connection, stager: Stager, keys: Sequence[Key]) -> None:
        """Copy the rows of ``keys`` into the old stage, if the read could not (see Stager)."""
        if stager.done:
            return
        where = keys_in(self.pk, keys, connection.dialect, self._what())
        copy = self.old.insert().from_select(
            [_BATCH, *self._copied], self._copy_source.where(where)
        )
        connection.execute(copy, {"batch": stager.batch})

    def _what(self) -> str:
        return f"this statement on {self.spec.model.__name__}"

    def stage_update(self, connection: Connection, batch: int, count: int) -> Staged | None:
        """The history rows of the candidates ``batch`` staged, now updated (``count`` of them);
        ``None`` if none of them changed."""
        flags = connection.execute(self._stage_update, {"batch": batch}).scalars().all()
        found, changed = len(flags), any(flag for flag in flags)
        if found != count:
            raise VersioningError(
                f"an UPDATE of {self.spec.model.__name__} changed or removed the primary key of "
                f"{count - found} of its rows; versioning cannot follow those records: change "
                f"keys through the ORM unit of work (obj.id = ...; session.flush())"
            )
        if not changed:
            self.clear(connection, batch)
            return None
        return Staged(self, batch, "changed")

    def stage_delete(self, connection: Connection, batch: int, all_gone: bool) -> Staged | None:
        """The history rows of the candidates ``batch`` staged that are gone now (``all_gone``:
        the DELETE's row count says every one is: the move takes the old rows as they are);
        ``None`` if none is."""
        if all_gone:
            return Staged(self, batch, "old")
        if connection.execute(self._stage_delete, {"batch": batch}).rowcount:
            return Staged(self, batch, "rows")
        self.clear(connection, batch)
        return None

    def clear(self, connection: Connection, batch: int) -> None:
        """Delete the batch's rows from both stages (PostgreSQL: its commit does)."""
        if not self._on_commit:
            for statement in self._clear:
                connection.execute(statement, {"batch": batch})

    def move(self, connection: Connection, staged: Staged, tx_id: int) -> list[bytes]:
        """INSERT the batch's rows into the history table; their hashes, in version order."""
        result = connection.execute(
            self._move[staged.move_kind], {"batch": staged.batch, "tx_id": tx_id}
        )
        names = [c.name for c in self.history.columns]
        rows = [dict(zip(names, row, strict=True)) for row in result.all()]
        self.clear(connection, staged.batch)
        loads = json.loads
        for row in rows:
            text = row[CHANGES]
            if text is not None:
                row[CHANGES] = loads(text)
        for name in self._floats:
            # SQLite's RETURNING gives a REAL column's whole number as it came (an integer),
            # where a read of the stored row gives a float: hashed as verify reads it.
            for row in rows:
                value = row[name]
                if type(value) is int:
                    row[name] = float(value)
        rows.sort(key=lambda row: row[VERSION_ID])
        history = self.history
        if personal.has_personal(history):
            return row_hashes(history, [personal.committed_view(history, row) for row in rows])
        return row_hashes(history, rows)


def _is_float(type_: sa.types.TypeEngine[Any]) -> bool:
    return isinstance(type_, sa.Float) and not type_.asdecimal


def _select_list(columns: Sequence[sa.Column[Any]], dialect: Dialect) -> str:
    """The select list of ``columns`` as SQLAlchemy renders it on ``dialect``."""
    text = str(sa.select(*columns).compile(dialect=dialect))
    return text[len("SELECT ") : text.find("\nFROM ")].rstrip()


_WANTED = "versioning_stages_wanted"


def want(session: Session, plan: Plan) -> None:
    """Have the stages of ``plan`` created on the session's connection at this transaction's
    commit: a statement never creates them itself (a statement costs the same round trips as
    on the Python path, which this one then takes)."""
    session.info.setdefault(_WANTED, {})[plan.old.name] = plan


@event.listens_for(Session, "before_commit")
def _create_wanted(session: Session) -> None:
    wanted = session.info.pop(_WANTED, None)
    if wanted and not session.in_nested_transaction():
        for plan in wanted.values():
            plan.create(session.connection(bind_arguments={"mapper": plan.spec.mapper}))


@event.listens_for(Session, "after_transaction_end")
def _forget_wanted(session: Session, transaction: SessionTransaction) -> None:
    if transaction.parent is None:
        session.info.pop(_WANTED, None)


@event.listens_for(Engine, "before_cursor_execute", retval=True)
def _into_stage(
    connection: Connection,
    cursor: Any,
    statement: str,
    parameters: Any,
    context: Any,
    executemany: bool,
) -> tuple[str, Any]:
    """The locked read a :class:`Stager` is given to (as the execution option ``_STAGER``)
    becomes the copy of the rows it reads."""
    if context is not None:
        stager = context.execution_options.get(STAGER)
        if stager is not None:
            return stager.rewrite(statement), parameters
    return statement, parameters


@event.listens_for(Engine, "commit")
def _committed(connection: Connection) -> None:
    info = connection.info
    created = info.pop(_CREATED, None)
    if created:
        info.setdefault(_READY, set()).update(created)


@event.listens_for(Engine, "rollback")
@event.listens_for(Engine, "rollback_savepoint")
def _rolled_back(connection: Connection, *args: Any) -> None:
    # A savepoint's rollback may take back a stage created in it: made again (IF NOT EXISTS).
    connection.info.pop(_CREATED, None)


@event.listens_for(Engine, "handle_error")
def _failed(context: ExceptionContext) -> None:
    # A failed COMMIT took back the stages it was to keep: they are made again when needed.
    connection = context.connection
    if connection is None or context.is_disconnect or connection.dialect.name == "mariadb":
        return
    try:
        info = connection.info
    except sa.exc.SQLAlchemyError:  # pragma: no cover - a connection already closed
        return
    info.pop(_READY, None)
    info.pop(_CREATED, None)


def _eligible(spec: ModelSpec) -> bool:
    mapper = spec.mapper
    return (
        spec.discriminator is None
        and mapper.inherits is None
        and not mapper.polymorphic_map
        and isinstance(mapper.local_table, sa.Table)
        and mapper.persist_selectable is mapper.local_table
        and not any(cascade_edges(table) for table in mapper.tables)
    )


def plan_for(spec: ModelSpec, dialect: Dialect) -> Plan | None:
    """The plan of ``spec`` on ``dialect``, built once; ``None`` where the SQL cannot represent
    the model (see the module's docstring): the caller then builds the rows in Python."""
    plans: dict[str, Plan | None] = spec.history.info.setdefault(_PLANS, {})
    name = dialect.name
    if name in plans:
        return plans[name]
    plan: Plan | None = None
    if _eligible(spec) and dialect.insert_returning:
        try:
            plan = Plan(spec, dialect)
        except ConfigurationError:
            plan = None
    plans[name] = plan
    return plan
