"""Append-only history, enforced by the database.

``metadata.create_all()`` installs triggers on the library's own tables — every table whose
``Table.info["versioning"]`` is one of :data:`APPEND_ONLY_KINDS` (history tables, the transaction
table, the integrity tables) — that refuse ``UPDATE`` and ``DELETE`` (and ``TRUNCATE`` on
PostgreSQL), with a message naming the table:

* PostgreSQL: one shared PL/pgSQL function ``versioning_append_only()`` per schema and a
  statement-level ``BEFORE UPDATE OR DELETE OR TRUNCATE`` trigger on each table;
* MariaDB / MySQL: ``BEFORE UPDATE`` and ``BEFORE DELETE`` row triggers (``SIGNAL SQLSTATE '45000'``);
* SQLite: ``BEFORE UPDATE`` and ``BEFORE DELETE`` triggers (``RAISE(ABORT, ...)``).

Through SQLAlchemy the refusal surfaces as :class:`versioning.AppendOnlyError` on every backend.

The library's own maintenance paths (erasure, archiving) change history rows inside
:func:`maintenance`, a switch of one connection's current transaction. The triggers guard against
accidents and ordinary users, not against a database superuser (or anyone who may drop a
trigger): the hash chain is what detects that. MariaDB's ``TRUNCATE`` does not fire triggers; deny
the ``DROP`` privilege (which ``TRUNCATE`` needs) to the roles that use the database.
"""

from __future__ import annotations

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
    "MAINTENANCE_TABLE",
    "drop_triggers",
    "install_triggers",
    "is_append_only",
    "maintenance",
]

#: The values of ``Table.info["versioning"]`` whose tables are append-only.
APPEND_ONLY_KINDS = frozenset({"transaction", "history", "digest", "seal", "seal_entry"})

#: SQLite only: the table whose row (in the current transaction) lets the triggers pass; one in
#: each database (``main`` or an attached one) that holds append-only tables.
MAINTENANCE_TABLE = "versioning_maintenance"

_INFO_KEY = "versioning"
_FUNCTION = "versioning_append_only"
_PG_TRIGGER = "versioning_append_only"
_PG_SETTING = "versioning.maintenance"
_MARIADB_VARIABLE = "@versioning_maintenance"

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
        statements = [f"CREATE TABLE IF NOT EXISTS {schema}{MAINTENANCE_TABLE} (enabled INTEGER)"]
        for operation in ("UPDATE", "DELETE"):
            trigger = schema + preparer.quote(f"{table.name}_append_only_{operation.lower()}")
            statements += [
                f"DROP TRIGGER IF EXISTS {trigger}",
                f"CREATE TRIGGER {trigger} BEFORE {operation} ON {preparer.quote(table.name)} "
                f"WHEN NOT EXISTS (SELECT 1 FROM {MAINTENANCE_TABLE}) BEGIN "
                f"SELECT RAISE(ABORT, {_sql_string(_message(table.name, operation))}); END",
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
        f"DROP TRIGGER IF EXISTS {schema}"
        f"{preparer.quote(f'{table.name}_append_only_{operation}')}"
        for operation in ("update", "delete")
    ]


def install_triggers(connection: Connection, tables: Iterable[sa.Table]) -> None:
    """Install (or re-install) the append-only triggers on ``tables``, which must exist.

    ``metadata.create_all()`` does this by itself for the tables it creates; this is for a
    database whose tables exist already (see :func:`versioning.migrations.install_append_only`).
    """
    for table in tables:
        for statement in _install_statements(table, connection.dialect):
            connection.exec_driver_sql(statement)


def drop_triggers(connection: Connection, tables: Iterable[sa.Table]) -> None:
    """Drop the append-only triggers of ``tables`` (those that are not there are skipped)."""
    for table in tables:
        for statement in _drop_statements(table, connection.dialect):
            connection.exec_driver_sql(statement)


@event.listens_for(sa.Table, "after_create")
def _installed_with_the_table(table: sa.Table, connection: Connection, **kw: Any) -> None:
    if is_append_only(table):
        install_triggers(connection, [table])


# --- the maintenance switch ----------------------------------------------------------------------

#: ``Connection.info`` key (kept with the pooled DBAPI connection): the open maintenance block.
_STATE = "versioning_maintenance"
#: ``Connection.info`` key, MariaDB: the session variable may still be set (reset at check-in).
_SET = "versioning_maintenance_set"


class _Block:
    """An open :func:`maintenance` block of one connection."""

    def __init__(self) -> None:
        self.depth = 1
        #: Whether the switch is on in the database (until the block or the transaction ends).
        self.on = False
        #: SQLite: the databases whose maintenance table holds the block's row.
        self.databases: list[str] = []


@contextmanager
def maintenance(connection: Connection) -> Iterator[None]:
    """Within this block, this connection's current transaction may UPDATE/DELETE history rows.

    The switch covers the transaction in progress (one is begun if none is) until the block ends
    or that transaction ends, whichever comes first: a commit or a rollback inside the block
    turns it off, and no other connection or transaction ever sees it on. Blocks may nest.
    """
    if not isinstance(connection, Connection):
        raise ArgumentError(
            f"maintenance() takes a Connection (session.connection()), got {connection!r}"
        )
    block: _Block | None = connection.info.get(_STATE)
    if block is not None:
        block.depth += 1
        try:
            if not block.on:  # the transaction it was on for has ended: on for this one
                _switch_on(connection, block)
            yield
        finally:
            block.depth -= 1
        return
    block = connection.info[_STATE] = _Block()
    try:
        _switch_on(connection, block)
        yield
    finally:
        try:
            if block.on and connection.in_transaction() and not connection.invalidated:
                _switch_off(connection, block)
        finally:
            del connection.info[_STATE]


def _switch_on(connection: Connection, block: _Block) -> None:
    dialect = connection.dialect.name
    if dialect == "postgresql":
        connection.exec_driver_sql(f"SELECT set_config('{_PG_SETTING}', 'on', true)")
    elif dialect in ("mysql", "mariadb"):
        connection.info[_SET] = True
        connection.exec_driver_sql(f"SET {_MARIADB_VARIABLE} = 1")
    elif dialect == "sqlite":
        databases = [str(row[1]) for row in connection.exec_driver_sql("PRAGMA database_list")]
        quote = connection.dialect.identifier_preparer.quote
        for database in databases:
            found = connection.exec_driver_sql(
                f"SELECT 1 FROM {quote(database)}.sqlite_master "
                f"WHERE type = 'table' AND name = '{MAINTENANCE_TABLE}'"
            ).first()
            if found:
                connection.exec_driver_sql(
                    f"INSERT INTO {quote(database)}.{MAINTENANCE_TABLE} (enabled) VALUES (1)"
                )
                block.databases.append(database)
    block.on = True


def _switch_off(connection: Connection, block: _Block) -> None:
    """Turn the switch off in the transaction, which goes on."""
    dialect = connection.dialect.name
    if dialect == "postgresql":
        if _pg_transaction_failed(connection):
            return  # only a rollback can follow, and it ends the setting with the transaction
        connection.exec_driver_sql(f"SELECT set_config('{_PG_SETTING}', '', true)")
    else:
        _switch_off_in_driver(connection.connection.dbapi_connection, connection.info, block)
    block.on = False


def _switch_off_in_driver(dbapi_connection: Any, info: dict[Any, Any], block: _Block) -> None:
    """MariaDB and SQLite: the switch off, on the DBAPI connection (also from commit events)."""
    if dbapi_connection is None:
        return
    cursor = dbapi_connection.cursor()
    try:
        if block.databases:
            for database in block.databases:
                quoted = '"' + database.replace('"', '""') + '"'
                cursor.execute(f"DELETE FROM {quoted}.{MAINTENANCE_TABLE}")
        elif info.get(_SET):
            cursor.execute(f"SET {_MARIADB_VARIABLE} = NULL")
            info.pop(_SET, None)
    finally:
        cursor.close()
    block.on = False


def _pg_transaction_failed(connection: Connection) -> bool:
    driver = connection.connection.driver_connection
    info = getattr(driver, "info", None)
    status = getattr(info, "transaction_status", None)
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
            _switch_off_in_driver(connection.connection.dbapi_connection, connection.info, block)


@event.listens_for(Engine, "rollback")
def _off_at_rollback(connection: Connection) -> None:
    block: _Block | None = connection.info.get(_STATE)
    if block is not None and block.on:
        block.databases = []  # SQLite: the rollback takes the row back
        if connection.dialect.name in ("mysql", "mariadb"):
            try:
                _switch_off_in_driver(connection.connection.dbapi_connection, connection.info, block)
            except Exception:  # noqa: BLE001 - the check-in reset or invalidation follows
                pass
        block.on = False


@event.listens_for(Pool, "checkin")
def _reset_at_checkin(dbapi_connection: Any, record: Any) -> None:
    """MariaDB: a pooled connection never keeps the session variable for its next user."""
    if dbapi_connection is None or not record.info.get(_SET):
        return
    try:
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"SET {_MARIADB_VARIABLE} = NULL")
        finally:
            cursor.close()
        record.info.pop(_SET, None)
    except Exception:  # noqa: BLE001 - a connection that cannot be reset is not used again
        record.invalidate()


# --- refusals as AppendOnlyError -----------------------------------------------------------------


def _driver_message(error: BaseException) -> str:
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
    match = _REFUSAL.match(_driver_message(error))
    if match is None:
        return None
    return AppendOnlyError(match["table"], match["operation"])
