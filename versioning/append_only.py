"""Append-only history, enforced by the database.

``metadata.create_all()`` installs triggers on the library's own tables — every table whose
``Table.info["versioning"]`` is one of :data:`APPEND_ONLY_KINDS` (history tables, the transaction
table, the integrity tables, the event table) — that refuse ``UPDATE`` and ``DELETE`` (and
``TRUNCATE`` on PostgreSQL), with a message naming the table:

* PostgreSQL: one shared PL/pgSQL function ``versioning_append_only()`` per schema and a
  statement-level ``BEFORE UPDATE OR DELETE OR TRUNCATE`` trigger on each table;
* MariaDB / MySQL: ``BEFORE UPDATE`` and ``BEFORE DELETE`` row triggers (``SIGNAL SQLSTATE``);
* SQLite: ``BEFORE UPDATE`` and ``BEFORE DELETE`` triggers (``RAISE(ABORT, ...)``).

A trigger's message starts ``versioning append-only: table <name> refuses <operation>``.

Through SQLAlchemy the refusal surfaces as :class:`versioning.AppendOnlyError` on every backend.

The library's own maintenance paths (erasure, archiving) change history rows inside
:func:`maintenance`, a switch of one connection's current transaction. The triggers guard against
accidents and ordinary users, not against a database superuser (or anyone who may drop a
trigger): the hash chain is what detects that. MariaDB's ``TRUNCATE`` does not fire triggers; deny
the ``DROP`` privilege (which ``TRUNCATE`` needs) to the roles that use the database.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine, ExceptionContext
from sqlalchemy.pool import Pool

from versioning.errors import AppendOnlyError, ArgumentError

__all__ = [
    "APPEND_ONLY_KINDS",
    "drop_triggers",
    "install_triggers",
    "is_append_only",
    "maintenance",
]

#: The values of ``Table.info["versioning"]`` whose tables are append-only.
APPEND_ONLY_KINDS = frozenset(
    {"transaction", "history", "digest", "seal", "seal_entry", "event", "horizon"}
)

_INFO_KEY = "versioning"
_FUNCTION = "versioning_append_only"
_PG_TRIGGER = "versioning_append_only"
_PG_SETTING = "versioning.maintenance"
_MARIADB_VARIABLE = "@versioning_maintenance"
#: The end of the name of SQLite's triggers, less the operation (how maintenance finds them).
_SQLITE_SUFFIX = "append_only_"

#: The start of every refusal's message, on every backend (how :func:`_translate` knows it).
_MARKER = "versioning append-only:"
_HINT = "history is append-only; only versioning.append_only.maintenance() may change it"
_SHORT_HINT = "see versioning.append_only.maintenance"
_REFUSAL = re.compile(
    re.escape(_MARKER) + r" table (?P<table>\S+) refuses (?P<operation>UPDATE|DELETE|TRUNCATE)\b"
)
#: MariaDB's limit on a SIGNAL's MESSAGE_TEXT.
_MARIADB_MESSAGE_MAX = 128


def is_append_only(table: sa.Table) -> bool:
    """Whether ``table`` is one of the library's append-only tables (by ``Table.info``)."""
    return table.info.get(_INFO_KEY) in APPEND_ONLY_KINDS


def _message(table: str, operation: str, limit: int | None = None) -> str:
    """The refusal's text; within ``limit`` characters, as much of the hint as fits."""
    start = f"{_MARKER} table {table} refuses {operation}"
    for hint in (f" ({_HINT})", f" ({_SHORT_HINT})", ""):
        if limit is None or len(start + hint) <= limit:
            return start + hint
    return start[:limit]


def _name(table: str, suffix: str, limit: int = 64) -> str:
    """A trigger name within MariaDB's 64 characters."""
    name = f"{table}_{suffix}"
    if len(name) <= limit:
        return name
    digest = hashlib.sha1(name.encode()).hexdigest()[:8]
    return f"{name[: limit - 9]}_{digest}"


def _sql_string(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


# --- installing and dropping the triggers --------------------------------------------------------


def _install_statements(table: sa.Table, dialect: sa.Dialect) -> list[str]:
    preparer = dialect.identifier_preparer
    qualified = preparer.format_table(table)
    schema = f"{preparer.quote_schema(table.schema)}." if table.schema else ""
    if dialect.name == "postgresql":
        # Concatenated, not RAISE's % placeholders: drivers read % as a parameter marker.
        head, rest = _message("\0", "\1").split("\0")
        middle, tail = rest.split("\1")
        message = (
            f"{_sql_string(head)} || TG_TABLE_NAME || {_sql_string(middle)} || TG_OP || "
            f"{_sql_string(tail)}"
        )
        function = f"{schema}{_FUNCTION}"
        return [
            f"CREATE OR REPLACE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS $body$\n"
            f"BEGIN\n"
            f"  IF coalesce(current_setting({_sql_string(_PG_SETTING)}, true), '') <> 'on' THEN\n"
            f"    RAISE EXCEPTION USING MESSAGE = {message};\n"
            f"  END IF;\n"
            f"  RETURN NULL;\n"
            f"END\n"
            f"$body$",
            f"DROP TRIGGER IF EXISTS {_PG_TRIGGER} ON {qualified}",
            f"CREATE TRIGGER {_PG_TRIGGER} BEFORE UPDATE OR DELETE OR TRUNCATE ON {qualified} "
            f"FOR EACH STATEMENT EXECUTE FUNCTION {function}()",
        ]
    if dialect.name in ("mysql", "mariadb"):
        statements = []
        for operation in ("UPDATE", "DELETE"):
            trigger = schema + preparer.quote(_name(table.name, f"append_only_{operation.lower()}"))
            message = _message(table.name, operation, _MARIADB_MESSAGE_MAX)
            statements += [
                f"DROP TRIGGER IF EXISTS {trigger}",
                f"CREATE TRIGGER {trigger} BEFORE {operation} ON {qualified} FOR EACH ROW "
                f"IF NOT ({_MARIADB_VARIABLE} <=> 1) THEN "
                f"SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = {_sql_string(message)}; END IF",
            ]
        return statements
    if dialect.name == "sqlite":
        statements = []
        for operation in ("UPDATE", "DELETE"):
            trigger = schema + preparer.quote(_sqlite_trigger(table.name, operation))
            statements += [
                f"DROP TRIGGER IF EXISTS {trigger}",
                f"CREATE TRIGGER {trigger} BEFORE {operation} ON {preparer.quote(table.name)} "
                f"BEGIN SELECT RAISE(ABORT, {_sql_string(_message(table.name, operation))}); END",
            ]
        return statements
    raise ArgumentError(
        f"append-only triggers are not available on {dialect.name!r}: versioning supports "
        f"PostgreSQL, MariaDB / MySQL and SQLite"
    )


def _drop_statements(table: sa.Table, dialect: sa.Dialect) -> list[str]:
    preparer = dialect.identifier_preparer
    schema = f"{preparer.quote_schema(table.schema)}." if table.schema else ""
    if dialect.name == "postgresql":
        return [f"DROP TRIGGER IF EXISTS {_PG_TRIGGER} ON {preparer.format_table(table)}"]
    if dialect.name in ("mysql", "mariadb"):
        return [
            f"DROP TRIGGER IF EXISTS {schema}"
            f"{preparer.quote(_name(table.name, f'append_only_{operation}'))}"
            for operation in ("update", "delete")
        ]
    return [
        f"DROP TRIGGER IF EXISTS {schema}{preparer.quote(_sqlite_trigger(table.name, operation))}"
        for operation in ("UPDATE", "DELETE")
    ]


def _sqlite_trigger(table: str, operation: str) -> str:
    return f"{table}_{_SQLITE_SUFFIX}{operation.lower()}"


def install_triggers(connection: Connection, tables: Iterable[sa.Table]) -> None:
    """Install (or re-install) the append-only triggers on ``tables``, which must exist.

    ``metadata.create_all()`` does this by itself for the tables it creates; this is for a
    database whose tables exist already (see :func:`versioning.migrations.install_append_only`).
    """
    for table in tables:
        for statement in _install_statements(table, connection.dialect):
            connection.exec_driver_sql(statement)


def drop_triggers(connection: Connection, tables: Iterable[sa.Table]) -> None:
    """Drop the append-only triggers of ``tables`` (those that are not there are skipped).

    On PostgreSQL, a schema's shared function goes too once no trigger uses it."""
    tables = list(tables)
    for table in tables:
        for statement in _drop_statements(table, connection.dialect):
            connection.exec_driver_sql(statement)
    _drop_unused_functions(connection, tables)


def _drop_unused_functions(connection: Connection, tables: list[sa.Table]) -> None:
    if connection.dialect.name != "postgresql":
        return
    preparer = connection.dialect.identifier_preparer
    for schema in sorted({t.schema or "" for t in tables if is_append_only(t)}):
        function = f"{preparer.quote_schema(schema)}.{_FUNCTION}" if schema else _FUNCTION
        name = _sql_string(f"{function}()")
        connection.exec_driver_sql(
            f"DO $body$ BEGIN IF to_regprocedure({name}) IS NOT NULL AND NOT EXISTS "
            f"(SELECT 1 FROM pg_trigger WHERE tgfoid = to_regprocedure({name})) "
            f"THEN DROP FUNCTION {function}(); END IF; "
            # A function another role owns stays: it does no harm.
            f"EXCEPTION WHEN insufficient_privilege THEN NULL; END $body$"
        )


@event.listens_for(sa.Table, "after_create")
def _installed_with_the_table(table: sa.Table, connection: Connection, **kw: Any) -> None:
    if is_append_only(table):
        install_triggers(connection, [table])


@event.listens_for(sa.MetaData, "after_drop")
def _function_dropped_with_the_last_table(
    metadata: sa.MetaData, connection: Connection, **kw: Any
) -> None:
    """``drop_all`` leaves nothing behind: PostgreSQL's function goes with its last trigger."""
    _drop_unused_functions(connection, list(kw.get("tables") or metadata.tables.values()))


# --- the maintenance switch ----------------------------------------------------------------------
#
# PostgreSQL: a transaction-local setting the function reads (set_config(..., true)).
# MariaDB: a session variable the triggers read, reset when the block or the transaction ends and,
#   should that reset fail, when the connection goes back to the pool.
# SQLite: the block drops the triggers inside its transaction and creates them again before the
#   transaction commits (or at the block's end): SQLite's DDL is transactional and it has one
#   writer at a time, so no other connection ever sees them missing, and a rollback (or a crash)
#   brings them back by itself.

#: ``Connection.info`` key (kept with the pooled DBAPI connection): the open maintenance block.
_STATE = "versioning_maintenance"
#: ``Connection.info`` key, MariaDB: the session variable may still be set (reset at check-in).
_SET = "versioning_maintenance_set"


class _Block:
    """An open :func:`maintenance` block of one connection."""

    def __init__(self) -> None:
        #: Whether the switch is on in the database (until the block or the transaction ends).
        self.on = False
        #: SQLite: the triggers dropped for the block, as ``(database, CREATE TRIGGER ...)``.
        self.dropped: list[tuple[str, str]] = []


@contextmanager
def maintenance(connection: Connection) -> Iterator[None]:
    """Within this block, this connection's current transaction may UPDATE/DELETE history rows.

    The switch covers the transaction in progress (begun if none is) until the block ends or
    that transaction ends, whichever comes first: a commit or a rollback inside the block turns
    it off, and no other connection or transaction ever sees it on. Blocks may nest.
    """
    if not isinstance(connection, Connection):
        raise ArgumentError(
            f"maintenance() takes a Connection (e.g. session.connection()), got {connection!r}"
        )
    block: _Block | None = connection.info.get(_STATE)
    if block is not None:  # nested: the outer block turns the switch off
        if not block.on:  # the transaction it was on for has ended: on for this one
            _switch_on(connection, block)
        yield
        return
    info = connection.info  # kept: an invalidated connection has none to give
    block = info[_STATE] = _Block()
    try:
        _switch_on(connection, block)
        yield
    finally:
        try:
            if block.on and not connection.invalidated and connection.in_transaction():
                _switch_off(connection, block)
        finally:
            info.pop(_STATE, None)


def _switch_on(connection: Connection, block: _Block) -> None:
    dialect = connection.dialect.name
    if dialect == "postgresql":
        connection.exec_driver_sql(f"SELECT set_config('{_PG_SETTING}', 'on', true)")
    elif dialect in ("mysql", "mariadb"):
        connection.info[_SET] = True
        connection.exec_driver_sql(f"SET {_MARIADB_VARIABLE} = 1")
    elif dialect == "sqlite":
        quote = connection.dialect.identifier_preparer.quote
        databases = connection.exec_driver_sql("SELECT name FROM pragma_database_list").scalars()
        triggers = [
            (str(database), str(name), str(sql))
            for database in list(databases)
            for name, sql in connection.exec_driver_sql(
                f"SELECT name, sql FROM {quote(database)}.sqlite_master WHERE type = 'trigger' "
                f"AND name LIKE '%{_SQLITE_SUFFIX}%' AND sql LIKE '%{_MARKER}%'"
            )
        ]
        dbapi_connection = connection.connection.dbapi_connection
        assert dbapi_connection is not None
        if getattr(dbapi_connection, "in_transaction", True) is False:
            # pysqlite begins a transaction before DML only: the DROPs must not autocommit.
            _run(dbapi_connection, ["BEGIN"])
        _run(
            dbapi_connection,
            [f"DROP TRIGGER {quote(database)}.{quote(name)}" for database, name, _ in triggers],
        )
        block.dropped = [(database, sql) for database, _, sql in triggers]
    block.on = True


def _switch_off(connection: Connection, block: _Block) -> None:
    """Turn the switch off in the transaction, which goes on."""
    if connection.dialect.name == "postgresql":
        if not _pg_transaction_failed(connection):  # else only a rollback, which ends it, follows
            connection.exec_driver_sql(f"SELECT set_config('{_PG_SETTING}', '', true)")
        block.on = False
    else:
        _switch_off_in_driver(connection, block)


def _switch_off_in_driver(connection: Connection, block: _Block) -> None:
    """MariaDB and SQLite, on the DBAPI connection (also from the commit event)."""
    dbapi_connection = connection.connection.dbapi_connection
    if block.dropped:
        quote = connection.dialect.identifier_preparer.quote
        _run(
            dbapi_connection,
            [
                sql.replace("CREATE TRIGGER ", f"CREATE TRIGGER IF NOT EXISTS {quote(db)}.", 1)
                for db, sql in block.dropped
            ],
        )
        block.dropped = []
    elif connection.info.get(_SET):
        _run(dbapi_connection, [f"SET {_MARIADB_VARIABLE} = NULL"])
        connection.info.pop(_SET, None)
    block.on = False


def _run(dbapi_connection: Any, statements: list[str]) -> None:
    """Statements on the DBAPI connection: no SQLAlchemy event sees the library's switch."""
    if not statements:
        return
    cursor = dbapi_connection.cursor()
    try:
        for statement in statements:
            cursor.execute(statement)
    finally:
        cursor.close()


def _pg_transaction_failed(connection: Connection) -> bool:
    driver = connection.connection.driver_connection
    status = getattr(getattr(driver, "info", None), "transaction_status", None)
    if status is not None:  # psycopg 3
        return int(status) == 3  # TransactionStatus.INERROR
    get_status = getattr(driver, "get_transaction_status", None)
    if get_status is not None:  # psycopg2
        return int(get_status()) == 3  # TRANSACTION_STATUS_INERROR
    return False


@event.listens_for(Engine, "commit")
def _off_before_commit(connection: Connection) -> None:
    block: _Block | None = connection.info.get(_STATE)
    if block is not None and block.on:
        if connection.dialect.name == "postgresql":
            block.on = False  # set_config(..., true) ends with the transaction
        else:
            _switch_off_in_driver(connection, block)  # SQLite: the triggers are committed


@event.listens_for(Engine, "rollback")
def _off_at_rollback(connection: Connection) -> None:
    block: _Block | None = connection.info.get(_STATE)
    if block is None or not block.on:
        return
    block.dropped = []  # SQLite: the rollback brings the triggers back
    block.on = False
    if connection.info.get(_SET):
        # Should the reset fail, it is done at check-in (or the connection is discarded).
        with contextlib.suppress(Exception):
            _switch_off_in_driver(connection, block)


@event.listens_for(Pool, "checkin")
def _reset_at_checkin(dbapi_connection: Any, record: Any) -> None:
    """MariaDB: a pooled connection never keeps the session variable for its next user."""
    if dbapi_connection is None or not record.info.get(_SET):
        return
    try:
        _run(dbapi_connection, [f"SET {_MARIADB_VARIABLE} = NULL"])
        record.info.pop(_SET, None)
    except Exception:  # a connection that cannot be reset is not used again
        record.invalidate()


# --- refusals as AppendOnlyError -----------------------------------------------------------------


def driver_message(error: BaseException) -> str:
    diag = getattr(error, "diag", None)
    primary = getattr(diag, "message_primary", None)
    if isinstance(primary, str):  # psycopg
        return primary
    args = error.args
    if len(args) >= 2 and isinstance(args[0], int) and isinstance(args[1], str):  # pymysql
        return args[1]
    return str(error)


@event.listens_for(Engine, "handle_error")
def _translate(context: ExceptionContext) -> BaseException | None:
    """A statement refused by the triggers raises :class:`AppendOnlyError` naming the table."""
    error = context.original_exception
    if context.is_disconnect or not isinstance(error, Exception):
        return None
    match = _REFUSAL.match(driver_message(error))
    if match is None:
        return None
    return AppendOnlyError(match["table"], match["operation"])
