"""Database-side capture: the triggers that write a model's history inside the database.

Issue #14 (a preview): PostgreSQL, MariaDB and SQLite, one table per model.

The session path records what goes through a SQLAlchemy ``Session``; these triggers record every
write to the table, whoever makes it (raw SQL, another service, a migration), with the same
history rows: the snapshot and ``changes`` document come from :mod:`versioning.history_sql`, so
``history()``, ``as_of`` and ``restore`` read them back as they read the session path's.

PostgreSQL: one ``CONSTRAINT TRIGGER ... AFTER INSERT OR UPDATE OR DELETE ... DEFERRABLE
INITIALLY DEFERRED FOR EACH ROW`` per table. Deferred, it fires at ``COMMIT``, once per row event
in the order of the events, with each event's ``OLD`` and ``NEW`` as they were then; events of a
savepoint that rolled back never fire, nor does anything of a transaction that rolled back.

* **One transaction row per database transaction, allocated at commit.** The first firing of
  the transaction writes the transaction row and keeps its id in a transaction-local setting
  (``versioning.transaction_id``); the others reuse it. Firing at commit, after every row lock of
  the transaction is held, the id and time follow commit order for every record, as the session
  path's do (see :mod:`versioning.recording`).
* **Whose context.** An application hands its audit context over in transaction-local settings
  (``versioning.context`` = ``app`` with ``versioning.actor``, ``versioning.source_ip``,
  ``versioning.request_id``, ``versioning.reason``, ``versioning.extra``; see
  :func:`context_settings`), any time before ``COMMIT``; the transaction row carries it. Any
  other client's transaction row says what the database knows: the database user as actor, the
  client's address, and ``{"database_user", "application_name"}`` in ``extra``.
* **An update that changes nothing records nothing** (the ``changes`` document is ``NULL``).

SQLite and MariaDB: ``AFTER INSERT``, ``AFTER UPDATE`` and ``AFTER DELETE`` row triggers, which
fire at once. The application hands its context over before its transaction's first write that
may reach a captured table, in a row of ``versioning_capture_open`` (SQLite: the one row;
MariaDB: the connection's, with a key only this connection's session variable matches), deleted
at commit; the first trigger writes the transaction row from it. Another client's statement gets
a transaction row of its own (neither database lets a trigger see its transaction's identity).
MariaDB lets other transactions commit between a transaction's first write and its commit: a
change whose record has history from a later transaction row is refused
(:class:`versioning.CommitOrderError`) rather than recorded out of commit order.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.dialects import sqlite
from sqlalchemy.engine import Connection, Dialect, Engine, ExceptionContext
from sqlalchemy.orm import Session

from versioning import _compat, history_sql, trusted
from versioning.append_only import driver_message
from versioning.context import AuditContext, current_context
from versioning.declaration import (
    ModelSpec,
    database_capture_declared,
    database_captured_specs,
    versioned_spec,
)
from versioning.errors import CommitOrderError, ConfigurationError, UncapturedWriteError
from versioning.operation import Operation
from versioning.recording import CAPTURE_HANDED_OVER, _issued_at, written_context
from versioning.schema import (
    CAPTURE_OPEN_TABLE,
    CAPTURED_BY_DATABASE,
    CHANGES,
    OPERATION,
    PERSONAL,
    TRANSACTION_ID,
    capture_open_table,
)

__all__ = [
    "SETTINGS",
    "TriggerProblem",
    "captures_on",
    "check_triggers",
    "context_settings",
    "drop",
    "drop_statements",
    "install",
    "install_statements",
    "missing_triggers",
    "trigger_fingerprint",
]

#: The transaction-local settings the triggers read (PostgreSQL).
SETTINGS = {
    "context": "versioning.context",
    "transaction_id": "versioning.transaction_id",
    "actor": "versioning.actor",
    "source_ip": "versioning.source_ip",
    "request_id": "versioning.request_id",
    "reason": "versioning.reason",
    "extra": "versioning.extra",
}
_TRIGGER = "versioning_capture"
_PG_NAME_MAX = 63


def _name(base: str, suffix: str, limit: int = _PG_NAME_MAX) -> str:
    name = f"{base}_{suffix}"
    if len(name) <= limit:
        return name
    digest = hashlib.sha1(name.encode()).hexdigest()[:8]
    return f"{name[: limit - 9]}_{digest}"


def _sql(element: Any, dialect: Dialect) -> str:
    """SQL text for a function body: values as literals, and no driver's escaping of ``%``
    (compiled by a copy of the dialect with a parameter style that does not use it)."""
    make: Any = type(dialect)
    plain: Dialect = make(paramstyle="named")
    if getattr(dialect, "is_mariadb", False):
        plain.is_mariadb = True  # type: ignore[attr-defined]
        plain.server_version_info = dialect.server_version_info
    return str(element.compile(dialect=plain, compile_kwargs={"literal_binds": True}))


def _string(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _setting(name: str) -> sa.ColumnElement[str]:
    """A transaction-local setting's text, ``NULL`` when unset or empty."""
    return sa.func.nullif(sa.func.current_setting(SETTINGS[name], sa.true()), "")


def _one_table(spec: ModelSpec) -> sa.Table:
    table = spec.mapper.local_table
    if spec.base is not None or spec.mapper.inherits is not None or not isinstance(table, sa.Table):
        raise ConfigurationError(
            f"{spec.model.__name__}: database capture covers a model mapped to one table of its "
            f"own; keep this model on session capture"
        )
    return table


def _row(table: sa.Table, name: str) -> sa.TableClause:
    """A trigger's ``OLD`` or ``NEW`` row as a row source with the live column names."""
    return sa.table(name, *(sa.column(c.name, c.type) for c in table.columns))


def _transaction_insert(spec: ModelSpec, dialect: Dialect) -> str:
    """The transaction row's INSERT, returning its id ``INTO tx`` (PL/pgSQL)."""
    transactions = spec.transactions
    app = _setting("context") == "app"
    database_extra = sa.func.json_build_object(
        "database_user",
        sa.func.session_user(type_=sa.Text()),
        "application_name",
        sa.func.current_setting("application_name"),
    )

    def pick(name: str, otherwise: Any) -> Any:
        return sa.case((app, _setting(name)), else_=otherwise)

    insert = transactions.insert().values(
        issued_at=_issued_at(transactions, "postgresql"),
        actor=pick("actor", sa.literal_column("session_user")),
        source_ip=pick("source_ip", sa.func.host(sa.func.inet_client_addr())),
        request_id=pick("request_id", sa.null()),
        reason=pick("reason", sa.null()),
        extra=sa.case(
            (app, sa.cast(_setting("extra"), sa.JSON())), else_=sa.cast(database_extra, sa.JSON())
        ),
    )
    return f"{_sql(insert.returning(transactions.c.id), dialect)} INTO tx"


def _history_insert(spec: ModelSpec, table: sa.Table, dialect: Dialect, operation: str) -> str:
    """The history row's INSERT for one kind of event, from ``NEW`` (``OLD`` for a delete)."""
    values = _history_values(
        spec, table, dialect, operation, sa.literal_column("tx"), sa.literal_column("changes")
    )
    return _sql(spec.history.insert().values(values).inline(), dialect)


def _history_values(
    spec: ModelSpec,
    table: sa.Table,
    dialect: Dialect,
    operation: str,
    transaction_id: Any,
    changes: Any,
) -> dict[str, Any]:
    """A trigger's history row for one kind of event, by history column: the snapshot of
    ``NEW`` (``OLD`` for a delete), ``transaction_id``, the operation, ``changes`` for an
    update, and the personal columns' salts."""
    source = _row(table, "old" if operation == "DELETE" else "new")
    values: dict[str, Any] = dict(history_sql.snapshot_columns(spec, source, dialect))
    values[TRANSACTION_ID] = transaction_id
    values[OPERATION] = sa.literal(Operation[operation].value)
    values[CHANGES] = changes if operation == "UPDATE" else sa.null()
    personal = history_sql.personal_json(spec, dialect)
    if personal is not None:
        values[PERSONAL] = personal
    return values


def _sqlite_history_insert(
    spec: ModelSpec,
    table: sa.Table,
    opened: sa.Table,
    operation: str,
    only_if: sa.ColumnElement[bool] | None = None,
) -> str:
    """SQLite: the history row's INSERT, its transaction id from the open-transaction row."""
    dialect = _SQLITE
    changes = history_sql.changes_json(spec, _row(table, "old"), _row(table, "new"), dialect)
    values = _history_values(spec, table, dialect, operation, opened.c.transaction_id, changes)
    # Written out, not as insert().from_select(): a SELECT of OLD's and NEW's columns would
    # name them in its FROM list, where a trigger's row is not a table.
    preparer = dialect.identifier_preparer
    columns = ", ".join(preparer.quote(name) for name in values)
    expressions = ", ".join(_sql(value, dialect) for value in values.values())
    where = f"{preparer.format_table(opened)}.id = 1"
    if only_if is not None:
        where += f" AND ({_sql(only_if, dialect)})"
    return (
        f"INSERT INTO {preparer.format_table(spec.history)} ({columns}) "
        f"SELECT {expressions} FROM {preparer.format_table(opened)} WHERE {where}"
    )


def _key_changed(spec: ModelSpec, table: sa.Table) -> sa.ColumnElement[bool]:
    old, new = _row(table, "old"), _row(table, "new")
    names = [spec.live_columns[key].name for key in spec.pk_keys]
    return sa.or_(*(old.c[name].is_distinct_from(new.c[name]) for name in names))


def _function_body(spec: ModelSpec, table: sa.Table, dialect: Dialect) -> str:
    changes = history_sql.changes_json(spec, _row(table, "old"), _row(table, "new"), dialect)
    setting = _string(SETTINGS["transaction_id"])
    return (
        "DECLARE\n"
        "  tx bigint;\n"
        "  changes json;\n"
        "BEGIN\n"
        "  IF TG_OP = 'UPDATE' THEN\n"
        f"    changes := {_sql(changes, dialect)};\n"
        "    IF changes IS NULL THEN\n"
        "      RETURN NULL;\n"
        "    END IF;\n"
        "  END IF;\n"
        f"  tx := nullif(current_setting({setting}, true), '')::bigint;\n"
        "  IF tx IS NULL THEN\n"
        f"    {_transaction_insert(spec, dialect)};\n"
        f"    PERFORM set_config({setting}, tx::text, true);\n"
        "  END IF;\n"
        "  IF TG_OP = 'INSERT' THEN\n"
        f"    {_history_insert(spec, table, dialect, 'INSERT')};\n"
        "  ELSIF TG_OP = 'UPDATE' THEN\n"
        f"    IF {_sql(_key_changed(spec, table), dialect)} THEN\n"
        "      -- The record moved to another key: its history under the old key ends here.\n"
        f"      {_history_insert(spec, table, dialect, 'DELETE')};\n"
        "    END IF;\n"
        f"    {_history_insert(spec, table, dialect, 'UPDATE')};\n"
        "  ELSE\n"
        f"    {_history_insert(spec, table, dialect, 'DELETE')};\n"
        "  END IF;\n"
        "  RETURN NULL;\n"
        "END\n"
    )


def _function_name(table: sa.Table, dialect: Dialect) -> str:
    preparer = dialect.identifier_preparer
    schema = f"{preparer.quote_schema(table.schema)}." if table.schema else ""
    return schema + preparer.quote(_name(table.name, _TRIGGER))


def trigger_fingerprint(spec: ModelSpec, dialect: Dialect) -> str:
    """A hash of what the triggers of ``spec``'s table do: it changes with the columns, types
    and masks they name (how a stale trigger is told)."""
    return hashlib.sha256(_function_body(spec, _one_table(spec), dialect).encode()).hexdigest()


#: The statement's own key for a write from another client on SQLite (which knows no
#: transaction): its clock, fixed for one statement.
_SQLITE_STATEMENT = "'statement ' || strftime('%Y-%m-%d %H:%M:%f', 'now')"
_SQLITE: Dialect = sqlite.dialect()


def _sqlite_bodies(spec: ModelSpec, table: sa.Table) -> dict[str, str]:
    """SQLite: the body of each operation's row trigger."""
    dialect = _SQLITE
    transactions = spec.transactions
    opened = capture_open_table(transactions)
    open_name = dialect.identifier_preparer.format_table(opened)
    ensure = (
        f"INSERT OR REPLACE INTO {open_name} (id, key, transaction_id, actor, extra) "
        f"SELECT 1, {_SQLITE_STATEMENT}, NULL, 'sqlite', '{{\"client\":\"sqlite\"}}' "
        f"WHERE NOT EXISTS (SELECT 1 FROM {open_name} WHERE id = 1 "
        f"AND key IN ('app', {_SQLITE_STATEMENT}))"
    )
    transaction = _sql(
        transactions.insert().from_select(
            ["issued_at", "actor", "source_ip", "request_id", "reason", "extra"],
            sa.select(
                _issued_at(transactions, "sqlite"),
                opened.c.actor,
                opened.c.source_ip,
                opened.c.request_id,
                opened.c.reason,
                opened.c.extra,
            ).where(opened.c.id == 1, opened.c.transaction_id.is_(None)),
        ),
        dialect,
    )
    remember = (
        f"UPDATE {open_name} SET transaction_id = last_insert_rowid() "
        f"WHERE id = 1 AND transaction_id IS NULL"
    )
    head = f"{ensure}; {transaction}; {remember}; "
    # The record moved to another key: its history under the old key ends here.
    delete_if_moved = _sqlite_history_insert(
        spec, table, opened, "DELETE", _key_changed(spec, table)
    )
    return {
        "INSERT": head + _sqlite_history_insert(spec, table, opened, "INSERT") + ";",
        "UPDATE": head
        + delete_if_moved
        + "; "
        + _sqlite_history_insert(spec, table, opened, "UPDATE")
        + ";",
        "DELETE": head + _sqlite_history_insert(spec, table, opened, "DELETE") + ";",
    }


def _sqlite_statements(spec: ModelSpec, table: sa.Table) -> list[str]:
    preparer = _SQLITE.identifier_preparer
    changes = _sql(
        history_sql.changes_json(spec, _row(table, "old"), _row(table, "new"), _SQLITE), _SQLITE
    )
    bodies = _sqlite_bodies(spec, table)
    fingerprint = hashlib.sha256("\n".join(bodies.values()).encode()).hexdigest()
    statements = []
    for operation, body in bodies.items():
        name = preparer.quote(_name(table.name, f"{_TRIGGER}_{operation.lower()}"))
        when = f" WHEN ({changes}) IS NOT NULL" if operation == "UPDATE" else ""
        statements += [
            f"DROP TRIGGER IF EXISTS {name}",
            f"CREATE TRIGGER {name} AFTER {operation} ON {preparer.quote(table.name)} "
            f"FOR EACH ROW{when} BEGIN "
            f"SELECT 'versioning capture {fingerprint}'; {body} END",
        ]
    return statements


_MARIADB_NAME_MAX = 64
#: MariaDB's limit on a SIGNAL's MESSAGE_TEXT.
_MARIADB_MESSAGE_MAX = 128
#: The session variable an application's hand-off sets (with the open row's key): only the
#: connection that wrote the open row, in its current life, matches it (see _open_before_writing).
_MARIADB_TOKEN = "@versioning_capture_token"
#: Another client's statement: its key (the connection and the statement's start) and the
#: transaction row its first row event wrote.
_MARIADB_STATEMENT = "@versioning_capture_statement"
_MARIADB_TRANSACTION = "@versioning_capture_transaction"
_MARIADB_STATEMENT_KEY = "CONCAT(CONNECTION_ID(), ' ', NOW(6))"
#: PostgreSQL: the function refusing TRUNCATE of a captured table (one for every table).
_TRUNCATE_FUNCTION = "versioning_capture_refuse_truncate"
#: What that refusal says, before the table's name.
TRUNCATE_REFUSAL = "versioning: TRUNCATE is not recorded by database capture, refused on "
#: What a refusal to record out of commit order says (MariaDB; see _mariadb_bodies).
ORDER_REFUSAL = "versioning: out of commit order in "


def _is_mariadb(dialect: Dialect) -> bool:
    return dialect.name == "mariadb" or (
        dialect.name == "mysql" and bool(getattr(dialect, "is_mariadb", False))
    )


def _mariadb_history_insert(
    spec: ModelSpec, table: sa.Table, dialect: Dialect, operation: str
) -> str:
    """MariaDB: the history row's INSERT for one kind of event, with ``versioning_tx``."""
    values = _history_values(
        spec,
        table,
        dialect,
        operation,
        sa.literal_column("versioning_tx"),
        sa.literal_column("versioning_doc"),
    )
    preparer = dialect.identifier_preparer
    columns = ", ".join(preparer.quote(name) for name in values)
    expressions = ", ".join(_sql(value, dialect) for value in values.values())
    return f"INSERT INTO {preparer.format_table(spec.history)} ({columns}) VALUES ({expressions})"


def _mariadb_order_check(spec: ModelSpec, table: sa.Table, dialect: Dialect, row: str) -> str:
    """MariaDB: refuse to record a record's change under a transaction row older than the
    newest one its history has (a transaction that committed while this one was open).

    A MariaDB trigger fires at once, not at commit: this transaction's row (and id) was written
    at its first row event, and another transaction may since have changed this record and
    committed. Its history would then show the later change first; the statement is refused
    instead (the caller retries the transaction). A locking read, so that it sees what committed
    after this transaction's snapshot."""
    preparer = dialect.identifier_preparer
    history = spec.history
    where = " AND ".join(
        f"{preparer.quote(history.c[spec.live_columns[key].name].name)} = "
        f"{row}.{preparer.quote(spec.live_columns[key].name)}"
        for key in spec.pk_keys
    )
    message = (ORDER_REFUSAL + table.name)[:_MARIADB_MESSAGE_MAX]
    # The application's transactions are checked at their commit instead (_check_commit_order),
    # where the locks of this read are held for a moment only.
    return (
        f"IF versioning_app = 0 THEN "
        f"SELECT MAX({preparer.quote(TRANSACTION_ID)}) INTO versioning_newest "
        f"FROM {preparer.format_table(history)} WHERE {where} LOCK IN SHARE MODE; "
        f"IF versioning_newest > versioning_tx THEN "
        f"SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = {_string(message)}; END IF; END IF;"
    )


def _mariadb_bodies(spec: ModelSpec, table: sa.Table, dialect: Dialect) -> dict[str, str]:
    """MariaDB: the body of each operation's row trigger (see the module's docstring)."""
    transactions = spec.transactions
    opened = capture_open_table(transactions)
    preparer = dialect.identifier_preparer
    open_name = preparer.format_table(opened)
    tx_name = preparer.format_table(transactions)
    key = preparer.quote("key")
    columns = "issued_at, actor, source_ip, request_id, reason, extra"
    host = "SUBSTRING_INDEX(USER(), '@', -1)"
    mine = f"id = CONNECTION_ID() AND {key} = {_MARIADB_TOKEN}"
    head = (
        f"SET versioning_tx = (SELECT transaction_id FROM {open_name} WHERE {mine}); "
        f"IF versioning_tx IS NOT NULL THEN SET versioning_app = 1; "
        f"ELSEIF EXISTS (SELECT 1 FROM {open_name} WHERE {mine}) THEN "
        # The application's transaction: its audit context, handed over before its first write.
        f"SET versioning_app = 1; "
        f"INSERT INTO {tx_name} ({columns}) SELECT UTC_TIMESTAMP(6), actor, source_ip, "
        f"request_id, reason, extra FROM {open_name} WHERE id = CONNECTION_ID(); "
        f"SET versioning_tx = LAST_INSERT_ID(); "
        f"UPDATE {open_name} SET transaction_id = versioning_tx WHERE id = CONNECTION_ID(); "
        f"ELSEIF {_MARIADB_STATEMENT} <=> {_MARIADB_STATEMENT_KEY} THEN "
        f"SET versioning_tx = {_MARIADB_TRANSACTION}; "
        f"ELSE "
        # Another client: what the database knows of it, one transaction row per statement.
        f"INSERT INTO {tx_name} ({columns}) VALUES (UTC_TIMESTAMP(6), "
        f"SUBSTRING_INDEX(USER(), '@', 1), IF(INET6_ATON({host}) IS NULL, NULL, {host}), "
        f"NULL, NULL, JSON_OBJECT('database_user', USER(), 'client', 'mariadb')); "
        f"SET versioning_tx = LAST_INSERT_ID(); "
        f"SET {_MARIADB_STATEMENT} = {_MARIADB_STATEMENT_KEY}, "
        f"{_MARIADB_TRANSACTION} = versioning_tx; "
        f"END IF; "
    )
    changes = _sql(
        history_sql.changes_json(spec, _row(table, "old"), _row(table, "new"), dialect), dialect
    )
    moved = _sql(_key_changed(spec, table), dialect)
    declare = (
        "DECLARE versioning_tx BIGINT DEFAULT NULL; DECLARE versioning_newest BIGINT DEFAULT NULL; "
        "DECLARE versioning_app TINYINT DEFAULT 0; "
    )
    return {
        "INSERT": declare
        + head
        + _mariadb_order_check(spec, table, dialect, "NEW")
        + " "
        + _mariadb_history_insert(spec, table, dialect, "INSERT")
        + ";",
        "UPDATE": declare
        + "DECLARE versioning_doc LONGTEXT DEFAULT NULL; "
        + f"SET versioning_doc = {changes}; "
        + "IF versioning_doc IS NOT NULL THEN "
        + head
        + f"IF {moved} THEN "
        # The record moved to another key: its history under the old key ends here.
        + _mariadb_order_check(spec, table, dialect, "OLD")
        + " "
        + _mariadb_history_insert(spec, table, dialect, "DELETE")
        + "; END IF; "
        + _mariadb_order_check(spec, table, dialect, "NEW")
        + " "
        + _mariadb_history_insert(spec, table, dialect, "UPDATE")
        + "; END IF;",
        "DELETE": declare
        + head
        + _mariadb_order_check(spec, table, dialect, "OLD")
        + " "
        + _mariadb_history_insert(spec, table, dialect, "DELETE")
        + ";",
    }


def _mariadb_statements(spec: ModelSpec, table: sa.Table, dialect: Dialect) -> list[str]:
    preparer = dialect.identifier_preparer
    statements = []
    for operation, body in _mariadb_bodies(spec, table, dialect).items():
        name = preparer.quote(
            _name(table.name, f"{_TRIGGER}_{operation.lower()}", _MARIADB_NAME_MAX)
        )
        statements += [
            f"DROP TRIGGER IF EXISTS {name}",
            f"CREATE TRIGGER {name} AFTER {operation} ON {preparer.format_table(table)} "
            f"FOR EACH ROW BEGIN {body} END",
        ]
    return statements


def install_statements(spec: ModelSpec, dialect: Dialect) -> list[str]:
    """The DDL that installs (or refreshes) the capture trigger of ``spec``'s table."""
    if dialect.name == "sqlite":
        return _sqlite_statements(spec, _one_table(spec))
    if _is_mariadb(dialect):
        return _mariadb_statements(spec, _one_table(spec), dialect)
    if dialect.name != "postgresql":
        raise ConfigurationError(
            f"{spec.model.__name__}: database capture is available on PostgreSQL, MariaDB and "
            f"SQLite; keep this model on session capture on {dialect.name}"
        )
    table = _one_table(spec)
    function = _function_name(table, dialect)
    body = _function_body(spec, table, dialect)
    fingerprint = hashlib.sha256(body.encode()).hexdigest()
    qualified = dialect.identifier_preparer.format_table(table)
    return [
        f"CREATE OR REPLACE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql "
        f"AS $versioning$\n{body}$versioning$",
        f"COMMENT ON FUNCTION {function}() IS {_string('versioning capture ' + fingerprint)}",
        f"DROP TRIGGER IF EXISTS {_TRIGGER} ON {qualified}",
        f"CREATE CONSTRAINT TRIGGER {_TRIGGER} AFTER INSERT OR UPDATE OR DELETE ON {qualified} "
        f"DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION {function}()",
        # TRUNCATE fires no row trigger: refused rather than left unrecorded.
        f"CREATE OR REPLACE FUNCTION {_TRUNCATE_FUNCTION}() RETURNS trigger LANGUAGE plpgsql "
        f"AS $versioning$ BEGIN RAISE EXCEPTION '{TRUNCATE_REFUSAL}%', TG_TABLE_NAME "
        f"USING ERRCODE = 'P0001'; END $versioning$",
        f"DROP TRIGGER IF EXISTS {_TRIGGER}_truncate ON {qualified}",
        f"CREATE TRIGGER {_TRIGGER}_truncate BEFORE TRUNCATE ON {qualified} "
        f"FOR EACH STATEMENT EXECUTE FUNCTION {_TRUNCATE_FUNCTION}()",
    ]


def drop_statements(spec: ModelSpec, dialect: Dialect) -> list[str]:
    """The DDL that removes the capture trigger of ``spec``'s table and its function."""
    table = _one_table(spec)
    if dialect.name == "sqlite" or _is_mariadb(dialect):
        limit = _MARIADB_NAME_MAX if _is_mariadb(dialect) else _PG_NAME_MAX
        preparer = dialect.identifier_preparer
        return [
            f"DROP TRIGGER IF EXISTS "
            f"{preparer.quote(_name(table.name, f'{_TRIGGER}_{operation}', limit))}"
            for operation in ("insert", "update", "delete")
        ]
    qualified = dialect.identifier_preparer.format_table(table)
    return [
        f"DROP TRIGGER IF EXISTS {_TRIGGER} ON {qualified}",
        f"DROP TRIGGER IF EXISTS {_TRIGGER}_truncate ON {qualified}",
        f"DROP FUNCTION IF EXISTS {_function_name(table, dialect)}()",
    ]


def _run(connection: Connection, statements: list[str]) -> None:
    """Run DDL text as it is (a driver with ``%`` placeholders reads ``%%`` as ``%``)."""
    escape = connection.dialect.paramstyle in ("format", "pyformat")
    for statement in statements:
        connection.exec_driver_sql(statement.replace("%", "%%") if escape else statement)


def install(connection: Connection, spec: ModelSpec) -> None:
    """Install (or refresh) the capture trigger of ``spec``'s table, in the connection's
    transaction."""
    _run(connection, install_statements(spec, connection.dialect))


def drop(connection: Connection, spec: ModelSpec) -> None:
    """Remove the capture trigger of ``spec``'s table."""
    _run(connection, drop_statements(spec, connection.dialect))


def context_settings(
    connection: Connection,
    context: AuditContext,
    transaction_id: int | None = None,
    reason: str | None = None,
) -> None:
    """Hand the application's audit context to the triggers of this transaction, in one
    statement: transaction-local settings, gone at commit or rollback. Unset values are empty
    (the triggers read them as ``NULL``); ``extra`` is its JSON text, as the session path
    stores it (``NULL`` when empty). ``transaction_id``: the transaction row the session path
    wrote, which the triggers then use too (one row per database transaction); ``reason``:
    instead of the context's (a restore's noted line)."""
    values: dict[str, str | None] = {"context": "app"}
    if transaction_id is not None:
        values["transaction_id"] = str(transaction_id)
    values |= {
        "actor": context.actor,
        "source_ip": context.source_ip,
        "request_id": context.request_id,
        "reason": reason if reason is not None else context.reason,
        "extra": json.dumps(dict(context.extra), separators=(",", ":"), ensure_ascii=False)
        if context.extra
        else None,
    }
    statement = _SETTING_STATEMENTS.get(tuple(values))
    if statement is None:
        # Built once for each set of settings, the values as parameters: built anew with its
        # values, the statement and its cache key cost a third of a single-row commit.
        statement = _SETTING_STATEMENTS[tuple(values)] = sa.text(
            "SELECT "
            + ", ".join(f"set_config({_string(SETTINGS[name])}, :{name}, true)" for name in values)
        )
    connection.execute(
        statement, {name: "" if value is None else value for name, value in values.items()}
    )


#: The statements of :func:`context_settings`, by the names of the settings they set.
_SETTING_STATEMENTS: dict[tuple[str, ...], sa.TextClause] = {}


@event.listens_for(sa.Table, "after_create")
def _installed_with_the_table(table: sa.Table, connection: Connection, **kw: Any) -> None:
    spec: ModelSpec | None = table.info.get(CAPTURED_BY_DATABASE)
    if spec is not None:
        _TABLES_CHANGED[0] += 1
        install(connection, spec)


@event.listens_for(sa.Table, "after_drop")
def _dropped_with_the_table(table: sa.Table, connection: Connection, **kw: Any) -> None:
    spec: ModelSpec | None = table.info.get(CAPTURED_BY_DATABASE)
    if spec is not None:
        _TABLES_CHANGED[0] += 1
    if spec is not None and connection.dialect.name == "postgresql":
        _run(connection, [f"DROP FUNCTION IF EXISTS {_function_name(table, connection.dialect)}()"])


#: ``Session.info`` key: a flush of this transaction wrote a model captured by the database.
_FLUSHED = "versioning_flushed_database_captured"


@event.listens_for(Session, "after_flush")
def _note_flushed(session: Session, flush_context: Any) -> None:
    if not database_capture_declared():
        return
    committing = session.info.get(_COMMITTING) is session.get_transaction()
    if _FLUSHED in session.info and not committing:
        return
    for state in flush_context.states:
        spec = versioned_spec(state.mapper)
        if spec is not None and spec.capture == "database":
            session.info[_FLUSHED] = True
            if committing:
                # A flush from a before_commit hook that ran after the hand-over: hand over now.
                _hand_over(session)
            return


@event.listens_for(Session, "after_transaction_end")
def _forget_flushed(session: Session, transaction: Any) -> None:
    if transaction.parent is None:
        session.info.pop(_FLUSHED, None)
        session.info.pop(_COMMITTING, None)
        session.info.pop(_OPENED, None)
        session.info.pop(_LOOKED, None)
        session.info.pop(_TOKEN, None)
        session.info.pop(_FIRST_CONTEXT, None)
        session.info.pop(CAPTURE_HANDED_OVER, None)
    elif transaction.nested:
        # A savepoint ended: if it rolled back, so did an open-transaction row written in it;
        # the next write writes it again (keeping a transaction row written before).
        session.info.pop(_OPENED, None)
        session.info.pop(_LOOKED, None)


@event.listens_for(Session, "before_commit")
def _hand_over_context(session: Session) -> None:
    """PostgreSQL, at commit (after the session path wrote its rows): hand the audit context,
    and the transaction row the session path wrote, to the triggers that fire at ``COMMIT``, if
    the transaction flushed a model captured by the database or ran any other statement that
    may write (raw SQL may write such a table)."""
    if not database_capture_declared() or session.in_nested_transaction():
        return
    session.info[_COMMITTING] = session.get_transaction()
    if (
        _FLUSHED not in session.info
        and not trusted.wrote_outside_flushes(session)
        and session.info.get(_OPENED) is None
    ):
        return
    _hand_over(session)


def _hand_over(session: Session) -> None:
    """PostgreSQL: the context to the triggers; MariaDB: the commit-order check of what they
    recorded (before the commit, where a refusal leaves the transaction to roll back)."""
    for connection in _compat.open_connections(session):
        if connection.dialect.name == "postgresql":
            noted = session.info.get(_FIRST_CONTEXT)
            first = (
                noted[1] if noted is not None and noted[0] is session.get_transaction() else None
            )
            transaction_id, context, reason = written_context(session, connection, first)
            context_settings(connection, context, transaction_id, reason)
        elif _OPEN_ROW in connection.info and _is_mariadb(connection.dialect):
            _check_commit_order(connection)


#: ``Session.info`` key: the root transaction whose commit has begun (the hand-over ran).
_COMMITTING = "versioning_capture_committing"
#: ``Session.info`` key, PostgreSQL: the root transaction and the audit context in force at its
#: first statement that may write a captured table.
_FIRST_CONTEXT = "versioning_capture_first_context"


@event.listens_for(Engine, "commit")
def _close_open_row(connection: Connection) -> None:
    """SQLite and MariaDB, just before the connection's ``COMMIT`` (after every
    ``before_commit`` hook's flush too): delete the open-transaction row the session wrote, so
    that another client's later writes are not taken for this transaction's."""
    if connection.info.pop(_OPEN_ROW, None) is None:
        return
    if connection.dialect.name == "sqlite":
        connection.exec_driver_sql(f"DELETE FROM {CAPTURE_OPEN_TABLE} WHERE key = 'app'")
    else:
        connection.exec_driver_sql(f"DELETE FROM {CAPTURE_OPEN_TABLE} WHERE id = CONNECTION_ID()")


def _check_commit_order(connection: Connection) -> None:
    """MariaDB, at the application's commit: refuse it (:class:`versioning.CommitOrderError`)
    if a record its triggers recorded has history from a later transaction row — another
    transaction changed it and committed after this one's first write, so this one's history
    would come first though it commits last. A locking read (it sees what committed after this
    transaction's snapshot) of the records' newest rows, taken at commit so that its locks are
    held for a moment only (the triggers check another client's statements themselves)."""
    mine = connection.exec_driver_sql(
        f"SELECT transaction_id FROM {CAPTURE_OPEN_TABLE} WHERE id = CONNECTION_ID() "
        f"AND `key` = {_MARIADB_TOKEN}"
    ).scalar()
    if mine is None:
        return  # the triggers wrote nothing
    for spec in _present_specs(connection):
        own, newer = _order_statements(spec)
        keys = connection.execute(own, {"mine": mine}).all()
        if keys:
            values = [key for (key,) in keys] if len(spec.pk_keys) == 1 else keys
            if connection.execute(newer, {"mine": mine, "keys": values}).first() is not None:
                raise CommitOrderError(_one_table(spec).name)


def _order_statements(spec: ModelSpec) -> tuple[sa.Select[Any], sa.Select[Any]]:
    """The two reads of :func:`_check_commit_order` for ``spec`` (built once): the records of
    this transaction's own rows, without locks (the next transaction's rows in the index are not
    to be waited for); then, with locks, whether any of those records has a newer row."""
    found: tuple[sa.Select[Any], sa.Select[Any]] | None = spec.read_cache.get(_order_statements)
    if found is None:
        history = spec.history
        columns = [history.c[spec.live_columns[k].name] for k in spec.pk_keys]
        mine: sa.BindParameter[Any] = sa.bindparam("mine")
        keys: sa.BindParameter[Any] = sa.bindparam("keys", expanding=True)
        # A key of one column as a plain IN: MariaDB reads the (key, transaction) index for it,
        # where a row constructor's IN may scan the table.
        records = columns[0].in_(keys) if len(columns) == 1 else sa.tuple_(*columns).in_(keys)
        found = spec.read_cache[_order_statements] = (
            sa.select(*columns).distinct().where(history.c[TRANSACTION_ID] == mine),
            sa.select(sa.literal(1))
            .where(records, history.c[TRANSACTION_ID] > mine)
            .limit(1)
            .with_for_update(read=True),
        )
    return found


#: Per engine URL, the specs captured by the database whose history table that database has,
#: as of a generation of :data:`_TABLES_CHANGED` (a captured table created or dropped).
_PRESENT: dict[str, tuple[int, list[ModelSpec]]] = {}
_TABLES_CHANGED = [0]


def _present_specs(connection: Connection) -> list[ModelSpec]:
    specs = database_captured_specs()
    key = f"{connection.engine.url!r} {len(specs)}"
    found = _PRESENT.get(key)
    if found is None or found[0] != _TABLES_CHANGED[0]:
        inspector = sa.inspect(connection)
        present = [
            spec
            for spec in specs
            if inspector.has_table(spec.history.name, schema=spec.history.schema)
        ]
        found = _PRESENT[key] = (_TABLES_CHANGED[0], present)
    return found[1]


@event.listens_for(Engine, "rollback")
def _forget_open_row(connection: Connection) -> None:
    connection.info.pop(_OPEN_ROW, None)  # rolled back with the transaction


#: ``Connection.info`` key (kept with the DB-API connection): this connection's transaction
#: wrote an open-transaction row (SQLite, MariaDB), deleted at its commit.
_OPEN_ROW = "versioning_capture_open_row"


#: ``Session.info`` keys: the root transaction in which the audit context was handed over
#: (SQLite, before the transaction's first write), and the one in which that was looked at.
_OPENED = "versioning_capture_opened"
_LOOKED = "versioning_capture_looked"


@event.listens_for(Engine, "before_cursor_execute")
def _open_before_writing(
    connection: Connection,
    cursor: Any,
    statement: str,
    parameters: Any,
    context: Any,
    executemany: bool,
) -> None:
    """SQLite: before the first statement of a session's transaction that may write, the
    audit context goes to the open-transaction row, where the capture triggers (which fire at
    once, there being no deferred ones) take it from (see the module's docstring)."""
    if not database_capture_declared():
        return
    mariadb = _is_mariadb(connection.dialect)
    postgresql = connection.dialect.name == "postgresql"
    if connection.dialect.name != "sqlite" and not mariadb and not postgresql:
        return
    if CAPTURE_OPEN_TABLE in statement or not _may_write_captured(statement, context):
        return
    session = trusted.session_of(connection)
    root = session.get_transaction() if session is not None else None
    if session is None or root is None or session.info.get(_LOOKED) is root:
        return
    if postgresql:
        # The context of the transaction's first write, handed over at its commit (where the
        # context in force may be another one, or none).
        session.info[_LOOKED] = root
        noted = session.info.get(_FIRST_CONTEXT)
        if noted is None or noted[0] is not root:  # not again after a savepoint ended
            session.info[_FIRST_CONTEXT] = (root, current_context())
        return
    session.info[_LOOKED] = root
    if mariadb:
        _open_on_mariadb(connection, cursor, session, root)
        return
    # Asked once a transaction (in process): a schema may change under a connection.
    # (An async driver's adapted cursor returns nothing from execute(): fetch from the cursor.)
    cursor.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (CAPTURE_OPEN_TABLE,)
    )
    if cursor.fetchone() is None:
        return
    written, audit, reason = written_context(session, connection)
    extra = audit.extra
    # The transaction row the session path wrote already (a write from a later before_commit
    # hook), or one the triggers wrote for this transaction (before a savepoint that rolled
    # back the session's note of this) is kept; one of an earlier transaction (whose row a
    # commit around the session left behind) is not.
    if written is not None:
        kept = str(int(written))
    elif session.info.get(CAPTURE_HANDED_OVER) is root:
        kept = f"(SELECT transaction_id FROM {CAPTURE_OPEN_TABLE} WHERE id = 1 AND key = 'app')"
    else:
        kept = "NULL"
    cursor.execute(
        f"INSERT OR REPLACE INTO {CAPTURE_OPEN_TABLE} "
        "(id, key, transaction_id, actor, source_ip, request_id, reason, extra) "
        f"SELECT 1, 'app', {kept}, ?, ?, ?, ?, ?",
        (
            audit.actor,
            audit.source_ip,
            audit.request_id,
            reason,
            json.dumps(dict(extra), separators=(",", ":"), ensure_ascii=False) if extra else None,
        ),
    )
    session.info[_OPENED] = session.info[CAPTURE_HANDED_OVER] = root
    connection.info[_OPEN_ROW] = True


#: The first words of SQL text that change no rows (no capture trigger fires); any other text
#: may (a comment first, a CTE, a procedure call, ...).
_NO_ROW_WRITES = frozenset(
    [
        "select",
        "show",
        "savepoint",
        "release",
        "rollback",
        "commit",
        "begin",
        "start",
        "set",
        "explain",
        "describe",
        "desc",
        "analyze",
        "create",
        "alter",
        "drop",
        "grant",
        "revoke",
        "lock",
        "unlock",
        "truncate",
    ]
)


def _may_write_captured(statement: str, context: Any) -> bool:
    """Whether a statement may change rows of a table a capture trigger is on: a compiled
    INSERT, UPDATE or DELETE of such a table, or SQL text that may change rows (which tables is
    not known). Not a SELECT, a savepoint, a setting, DDL or the session path's own writes."""
    compiled = getattr(context, "compiled", None)
    if compiled is not None and (context.isinsert or context.isupdate or context.isdelete):
        table = getattr(compiled.statement, "table", None)
        return not isinstance(table, sa.Table) or CAPTURED_BY_DATABASE in table.info
    words = statement.lstrip().split(None, 1)
    return bool(words) and words[0].lower() not in _NO_ROW_WRITES


#: ``Session.info`` key, MariaDB: the root transaction the open row was written for, and its key.
_TOKEN = "versioning_capture_token"


def _open_on_mariadb(connection: Connection, cursor: Any, session: Session, root: Any) -> None:
    """MariaDB: the audit context to this connection's open row (keyed by ``CONNECTION_ID()``),
    with a key of this transaction's that only this connection's session variable matches: a row
    left behind (a transaction committed around the session) or another connection that gets
    the same id later (after a restart) does not match it. After a savepoint rolled back, the
    row is written again with the same key, keeping a transaction row written before it."""
    found: tuple[Any, str] | None = session.info.get(_TOKEN)
    again = found is not None and found[0] is root
    token = found[1] if found is not None and again else f"app {uuid.uuid4().hex}"
    session.info[_TOKEN] = (root, token)
    written, audit, reason = written_context(session, connection)
    extra = audit.extra
    # As on SQLite (see _open_before_writing).
    first = "NULL" if written is None else str(int(written))
    keep = (
        first
        if written is not None or not again
        else "IF(`key` = VALUES(`key`), transaction_id, NULL)"
    )
    try:
        cursor.execute(
            f"INSERT INTO {CAPTURE_OPEN_TABLE} "
            "(id, `key`, transaction_id, actor, source_ip, request_id, reason, extra) "
            f"VALUES (CONNECTION_ID(), {_MARIADB_TOKEN} := %s, {first}, %s, %s, %s, %s, %s) "
            f"ON DUPLICATE KEY UPDATE transaction_id = {keep}, "
            "`key` = VALUES(`key`), actor = VALUES(actor), source_ip = VALUES(source_ip), "
            "request_id = VALUES(request_id), reason = VALUES(reason), extra = VALUES(extra)",
            (
                token,
                audit.actor,
                audit.source_ip,
                audit.request_id,
                reason,
                json.dumps(dict(extra), separators=(",", ":"), ensure_ascii=False)
                if extra
                else None,
            ),
        )
    except connection.dialect.loaded_dbapi.ProgrammingError as error:
        if error.args and error.args[0] == _NO_SUCH_TABLE:
            return  # no model of this database is captured by it
        raise
    session.info[_OPENED] = session.info[CAPTURE_HANDED_OVER] = root
    connection.info[_OPEN_ROW] = True


#: MariaDB's error number for a table that does not exist.
_NO_SUCH_TABLE = 1146


@event.listens_for(Engine, "handle_error")
def _translate(context: ExceptionContext) -> BaseException | None:
    """A statement a capture trigger refused raises a ``versioning`` error naming the table:
    :class:`versioning.CommitOrderError` (MariaDB, commit order) or
    :class:`versioning.UncapturedWriteError` (PostgreSQL, ``TRUNCATE``)."""
    error = context.original_exception
    if context.is_disconnect or not isinstance(error, Exception):
        return None
    message = driver_message(error)
    if message.startswith(TRUNCATE_REFUSAL):
        table = message[len(TRUNCATE_REFUSAL) :]
        return UncapturedWriteError(
            f"TRUNCATE {table}: its history is written by the database's triggers, and TRUNCATE "
            f"fires none, so it was refused: use DELETE FROM {table} (each row's deletion is "
            f"then recorded)"
        )
    if not message.startswith(ORDER_REFUSAL):
        return None
    return CommitOrderError(message[len(ORDER_REFUSAL) :])


@dataclass(frozen=True)
class TriggerProblem:
    """A table captured by the database whose trigger is missing or does not match its model."""

    table: str
    kind: str  # "missing" or "stale"
    detail: str


def _captured_specs(metadata: sa.MetaData | None) -> list[ModelSpec]:
    if metadata is None:
        return database_captured_specs()
    return [
        t.info[CAPTURED_BY_DATABASE]
        for t in metadata.sorted_tables
        if CAPTURED_BY_DATABASE in t.info
    ]


def check_triggers(
    bind: Engine | Connection, metadata: sa.MetaData | None = None
) -> list[TriggerProblem]:
    """The tables captured by the database (of ``metadata``, else of every model declared)
    whose capture trigger is missing or stale — installed for other columns, types or masks
    than the model has now (after a migration added or dropped a column, say): empty when all
    are current. Refresh them with :func:`install` (or the Alembic helper
    ``versioning.migrations.install_capture_triggers``)."""
    if isinstance(bind, Engine):
        with bind.connect() as connection:
            return check_triggers(connection, metadata)
    connection = bind
    problems: list[TriggerProblem] = []
    inspector = sa.inspect(connection)
    dialect = connection.dialect
    for spec in _captured_specs(metadata):
        table = _one_table(spec)
        if not inspector.has_table(table.name, schema=table.schema):
            continue
        name = table.fullname
        if dialect.name == "sqlite" or _is_mariadb(dialect):
            problem = _compare_row_triggers(connection, spec, table)
            if problem is not None:
                problems.append(_problem(spec, name, problem))
            continue
        if dialect.name != "postgresql":
            problems.append(
                TriggerProblem(
                    name, "missing", f"{name}: database capture is not available on {dialect.name}"
                )
            )
            continue
        comment = connection.execute(
            sa.text(
                "SELECT obj_description(t.tgfoid, 'pg_proc') FROM pg_trigger t "
                "WHERE t.tgrelid = to_regclass(:table) AND t.tgname = :trigger"
            ),
            {"table": dialect.identifier_preparer.format_table(table), "trigger": _TRIGGER},
        ).first()
        if comment is None:
            problems.append(_problem(spec, name, "missing"))
        elif comment[0] != "versioning capture " + trigger_fingerprint(spec, dialect):
            problems.append(_problem(spec, name, "stale"))
    return problems


#: SQLite and MariaDB: where each trigger's text is kept (the server keeps it as written; on
#: SQLite each text holds the fingerprint of all three, on MariaDB its body is compared).
_TRIGGER_TEXTS = {
    "sqlite": "SELECT name, sql FROM sqlite_master WHERE type = 'trigger' AND name IN :names",
    "mariadb": "SELECT TRIGGER_NAME, ACTION_STATEMENT FROM information_schema.TRIGGERS "
    "WHERE EVENT_OBJECT_SCHEMA = DATABASE() AND TRIGGER_NAME IN :names",
}


def _compare_row_triggers(connection: Connection, spec: ModelSpec, table: sa.Table) -> str | None:
    """SQLite and MariaDB: ``"missing"`` if one of the table's three row triggers is not
    installed, ``"stale"`` if one's text is not what the model makes now, else ``None``."""
    dialect = connection.dialect
    if dialect.name == "sqlite":
        kind, limit = "sqlite", _PG_NAME_MAX
        texts = _sqlite_statements(spec, table)[1::2]
    else:
        kind, limit = "mariadb", _MARIADB_NAME_MAX
        created = _mariadb_statements(spec, table, dialect)[1::2]
        texts = [statement.split(" FOR EACH ROW ", 1)[1] for statement in created]
    wanted = {
        _name(table.name, f"{_TRIGGER}_{operation}", limit): text
        for operation, text in zip(("insert", "update", "delete"), texts, strict=True)
    }
    installed: dict[str, str] = dict(
        connection.execute(
            sa.text(_TRIGGER_TEXTS[kind]).bindparams(sa.bindparam("names", expanding=True)),
            {"names": list(wanted)},
        ).all()
    )
    if set(installed) != set(wanted):
        return "missing"
    return "stale" if installed != wanted else None


def captures_on(dialect: Dialect) -> bool:
    """Whether database capture is available on ``dialect``'s database (PostgreSQL, MariaDB,
    SQLite)."""
    return dialect.name in ("postgresql", "sqlite") or _is_mariadb(dialect)


def missing_triggers(
    connection: Connection, table_name: str, schema: str | None = None
) -> list[str] | None:
    """The operations (``"insert"``, ``"update"``, ``"delete"``) whose capture trigger the table
    lacks, by the triggers' names alone (whether they are current needs the model: see
    :func:`check_triggers`): ``["all"]`` if it has none, ``[]`` if it has every one; ``None``
    where database capture is not available."""
    dialect = connection.dialect
    operations = ("insert", "update", "delete")
    if dialect.name == "postgresql":
        found = connection.execute(
            sa.text(
                "SELECT 1 FROM pg_trigger WHERE tgrelid = to_regclass(:table) AND tgname = :name"
            ),
            {
                "table": dialect.identifier_preparer.format_table(
                    sa.table(table_name, schema=schema)
                ),
                "name": _TRIGGER,
            },
        ).first()
        return [] if found is not None else ["all"]
    if _is_mariadb(dialect):
        names = {
            _name(table_name, f"{_TRIGGER}_{operation}", _MARIADB_NAME_MAX): operation
            for operation in operations
        }
        query = (
            "SELECT TRIGGER_NAME FROM information_schema.TRIGGERS WHERE "
            "EVENT_OBJECT_SCHEMA = COALESCE(:schema, DATABASE()) "
            "AND EVENT_OBJECT_TABLE = :table AND TRIGGER_NAME IN :names"
        )
    elif dialect.name == "sqlite":
        names = {
            _name(table_name, f"{_TRIGGER}_{operation}"): operation for operation in operations
        }
        master = "sqlite_master"
        if schema is not None:
            master = f"{dialect.identifier_preparer.quote_schema(schema)}.{master}"
        query = (
            f"SELECT name FROM {master} WHERE type = 'trigger' AND tbl_name = :table "
            f"AND name IN :names"
        )
    else:
        return None
    present = set(
        connection.execute(
            sa.text(query).bindparams(sa.bindparam("names", expanding=True)),
            {"schema": schema, "table": table_name, "names": list(names)},
        ).scalars()
    )
    lacking = [operation for name, operation in names.items() if name not in present]
    return ["all"] if len(lacking) == len(names) else lacking


def _problem(spec: ModelSpec, name: str, kind: str) -> TriggerProblem:
    if kind == "missing":
        detail = (
            f"{name} has no capture trigger: its writes are not recorded; install it "
            f"(versioning.migrations.install_capture_triggers in a migration)"
        )
    else:
        detail = (
            f"the capture trigger of {name} was installed for other columns than "
            f"{spec.model.__name__} has now: refresh it "
            f"(versioning.migrations.install_capture_triggers in a migration)"
        )
    return TriggerProblem(name, kind, detail)
