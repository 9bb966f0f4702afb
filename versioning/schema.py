"""The tables the library adds to a model's ``MetaData``: history tables and the transaction table.

* ``versioning_transaction`` — one per ``MetaData``: one row per database transaction that changed a
  versioned record (who, from where, which request, why, when).
* ``versioning_event`` — beside it: one row per recorded event (a failed or denied action), each
  in a transaction of its own (see :mod:`versioning.event_log`).
* ``<tablename>_history`` — one per versioned table hierarchy: one row per change of a record,
  holding a typed snapshot of the versioned columns, the operation and the changed fields.

History tables carry no unique constraints and no foreign keys to live tables, so records can be
deleted and re-created freely; their only foreign key points at the transaction table. A history
table lives in its live table's schema, the transaction table in the ``MetaData``'s: when they
differ, that foreign key names the transaction table's schema (see :class:`TransactionKey`).
"""

from __future__ import annotations

import datetime as dt
import hashlib
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import DDLCompiler

from versioning import _compat
from versioning.errors import ArgumentError, ConfigurationError
from versioning.operation import Operation

__all__ = [
    "CATALOG_TABLE",
    "CHANGES",
    "DIGEST_TABLE",
    "EVENT_TABLE",
    "HORIZON_TABLE",
    "META_COLUMNS",
    "OPERATION",
    "PERSONAL",
    "SEAL_ENTRY_TABLE",
    "SEAL_TABLE",
    "SEARCH_INDEXED",
    "TRANSACTION_ID",
    "TRANSACTION_TABLE",
    "VERSION_ID",
    "UTCDateTime",
    "catalog_table",
    "event_table",
    "foreign_key_index",
    "history_table_for",
    "horizon_table",
    "integrity_tables",
    "issued_at_utc",
    "operation_type",
    "personal_column",
    "transaction_table_for",
]

TRANSACTION_TABLE = "versioning_transaction"
DIGEST_TABLE = "versioning_digest"
SEAL_TABLE = "versioning_seal"
SEAL_ENTRY_TABLE = "versioning_seal_entry"
CATALOG_TABLE = "versioning_catalog"
EVENT_TABLE = "versioning_event"
HORIZON_TABLE = "versioning_horizon"

VERSION_ID = "versioning_id"
TRANSACTION_ID = "versioning_transaction_id"
OPERATION = "versioning_operation"
CHANGES = "versioning_changes"
#: Only in the history table of a model with personal columns (see :mod:`versioning.personal`).
PERSONAL = "versioning_personal"
#: ``Table.info`` key of a history table loaded from the registry: the record's key columns.
RECORD_KEY_INFO = "versioning_record_key"
META_COLUMNS = frozenset({VERSION_ID, TRANSACTION_ID, OPERATION, CHANGES, PERSONAL})

#: ``Table.info`` key of the library's own tables: ``"transaction"`` or ``"history"``.
_INFO_KEY = "versioning"
#: ``Table.info`` key of a versioned (live) table: the name of its history table. The write
#: guard (:mod:`versioning.guard`) and the declaration of relationships read it.
LIVE_TABLE_INFO = "versioning_history"
#: ``Table.info`` key of a live table whose history its triggers write: the model's spec (see
#: :mod:`versioning.triggers`).
CAPTURED_BY_DATABASE = "versioning_captured_by_database"
#: ``Table.info`` key of a history table that triggers write (``True``).
HISTORY_BY_DATABASE = "versioning_history_by_database"

#: The transaction table's columns indexed (each with ``id``) for :func:`versioning.search`;
#: ``issued_at`` has its own index, with ``id`` too.
SEARCH_INDEXED = ("actor", "request_id", "source_ip")

#: Integer ids that autoincrement on every backend (SQLite only does so for INTEGER PRIMARY KEY).
_ID_TYPE = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

#: The stored type of ``issued_at``: PostgreSQL ``timestamptz``, MariaDB ``DATETIME(6)``, SQLite
#: ``DATETIME``. Built from SQLAlchemy's own types so that Alembic renders it in a migration that
#: runs as generated; the library reads and binds it through :class:`UTCDateTime`
#: (:func:`issued_at_utc`).
_ISSUED_AT_TYPE = sa.DateTime(timezone=True).with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")


class UTCDateTime(sa.types.TypeDecorator[dt.datetime]):
    """A timestamp stored in UTC and always returned timezone-aware, on every backend.

    PostgreSQL keeps ``timestamp with time zone``; SQLite and MariaDB, which have no time zones,
    keep the UTC wall-clock time (with microseconds) and get ``tzinfo=UTC`` back on reading.

    The transaction table's column itself has a plain SQLAlchemy type (a migration must render it
    without importing this module); the library applies this one where it reads or compares the
    column, with :func:`issued_at_utc`.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> sa.types.TypeEngine[Any]:
        if dialect.name in ("mysql", "mariadb"):
            return dialect.type_descriptor(mysql.DATETIME(fsp=6))
        return dialect.type_descriptor(sa.DateTime(timezone=True))

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ArgumentError(f"naive datetime {value!r}: pass a timezone-aware datetime")
        value = value.astimezone(dt.UTC)
        return value if dialect.name == "postgresql" else value.replace(tzinfo=None)

    def process_result_value(self, value: Any, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        stamp = value if isinstance(value, dt.datetime) else dt.datetime.fromisoformat(str(value))
        if stamp.tzinfo is None:
            return stamp.replace(tzinfo=dt.UTC)
        return stamp.astimezone(dt.UTC)

    @property
    def python_type(self) -> type[dt.datetime]:
        return dt.datetime


def issued_at_utc(transactions: sa.Table) -> sa.ColumnElement[dt.datetime]:
    """``transactions.c.issued_at`` read and compared as a timezone-aware UTC datetime."""
    return sa.type_coerce(transactions.c.issued_at, UTCDateTime())


def _index_name(table_name: str, suffix: str) -> str:
    """An index name within the 63/64-character limits of PostgreSQL and MariaDB."""
    name = f"ix_{table_name}_{suffix}"
    if len(name) <= 60:
        return name
    digest = hashlib.sha1(name.encode()).hexdigest()[:8]
    return f"{name[: 60 - 9]}_{digest}"


def transaction_table_for(metadata: sa.MetaData) -> sa.Table:
    """The transaction table of ``metadata``, created on first use."""
    key = TRANSACTION_TABLE if metadata.schema is None else f"{metadata.schema}.{TRANSACTION_TABLE}"
    existing = metadata.tables.get(key)
    if existing is not None:
        if existing.info.get(_INFO_KEY) != "transaction":
            raise ConfigurationError(
                f"the MetaData already has a table named {key!r} that is not versioning's "
                f"transaction table; rename that table, versioning needs the name"
            )
        return existing
    table = sa.Table(
        TRANSACTION_TABLE,
        metadata,
        sa.Column("id", _ID_TYPE, primary_key=True, autoincrement=True),
        sa.Column("issued_at", _ISSUED_AT_TYPE, nullable=False),
        sa.Column("actor", sa.String(255), nullable=True),
        sa.Column("source_ip", sa.String(45), nullable=True),
        sa.Column("request_id", sa.String(128), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("extra", sa.JSON(none_as_null=True), nullable=True),
        sa.Index(_index_name(TRANSACTION_TABLE, "issued_at"), "issued_at", "id"),
        # What versioning.search filters on, each with the id that orders its results.
        *(sa.Index(_index_name(TRANSACTION_TABLE, name), name, "id") for name in SEARCH_INDEXED),
        sqlite_autoincrement=True,
        info={_INFO_KEY: "transaction"},
        comment="versioning: one row per database transaction that changed versioned records",
    )
    _integrity_tables(metadata, table)
    _catalog_table(metadata)
    _event_table(metadata, table)
    return table


def _digest_text() -> sa.types.TypeEngine[Any]:
    """Text that may hold megabytes (MariaDB's TEXT holds 64 KiB)."""
    return sa.Text().with_variant(mysql.LONGTEXT(), "mysql", "mariadb")


def _integrity_tables(metadata: sa.MetaData, transactions: sa.Table) -> None:
    """The digest and seal tables beside ``transactions`` (see :mod:`versioning.integrity`)."""
    sa.Table(
        DIGEST_TABLE,
        metadata,
        sa.Column(
            "transaction_id",
            _ID_TYPE,
            sa.ForeignKey(transactions.c.id, name=f"fk_{DIGEST_TABLE}_transaction"),
            primary_key=True,
            autoincrement=False,
        ),
        sa.Column("segment", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("digest", sa.String(64), nullable=False),
        # JSON: LONGTEXT on MariaDB, so megabytes fit.
        sa.Column("rows", sa.JSON(), nullable=False),
        sa.Column("note", _digest_text(), nullable=True),
        info={_INFO_KEY: "digest"},
        comment="versioning: the digest of each transaction's history (segment 1 at commit)",
    )
    seal = sa.Table(
        SEAL_TABLE,
        metadata,
        sa.Column("id", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("previous_hash", sa.String(64), nullable=True),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.Column("sealed_at", _ISSUED_AT_TYPE, nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("last_transaction_id", sa.BigInteger(), nullable=False),
        info={_INFO_KEY: "seal"},
        comment="versioning: a chain of seals, each covering the digests it links",
    )
    sa.Table(
        SEAL_ENTRY_TABLE,
        metadata,
        sa.Column("transaction_id", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("segment", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column(
            "seal_id",
            sa.BigInteger(),
            sa.ForeignKey(seal.c.id, name=f"fk_{SEAL_ENTRY_TABLE}_seal"),
            nullable=False,
        ),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Index(_index_name(SEAL_ENTRY_TABLE, "seal"), "seal_id", "position"),
        info={_INFO_KEY: "seal_entry"},
        comment="versioning: which seal links each digest, with a copy of the digest",
    )
    sa.Table(
        HORIZON_TABLE,
        metadata,
        sa.Column(
            "transaction_id",
            _ID_TYPE,
            sa.ForeignKey(transactions.c.id, name=f"fk_{HORIZON_TABLE}_transaction"),
            primary_key=True,
            autoincrement=False,
        ),
        sa.Column("horizon_transaction_id", sa.BigInteger(), nullable=False),
        sa.Column("horizon_issued_at", _ISSUED_AT_TYPE, nullable=False),
        sa.Column("seal_id", sa.BigInteger(), nullable=False),
        sa.Column("seal_hash", sa.String(64), nullable=False),
        sa.Column("kept_entries", sa.BigInteger(), nullable=False),
        sa.Column("archive_sha256", sa.String(64), nullable=False),
        sa.Column("archive", sa.String(255), nullable=False),
        info={_INFO_KEY: "horizon"},
        comment="versioning: each prune's horizon (history before it is in an archive)",
    )


def horizon_table(transactions: sa.Table) -> sa.Table:
    """The horizon table beside the transaction table ``transactions`` (see
    :mod:`versioning.horizon`)."""
    prefix = "" if transactions.schema is None else f"{transactions.schema}."
    return transactions.metadata.tables[prefix + HORIZON_TABLE]


def _catalog_table(metadata: sa.MetaData) -> sa.Table:
    """The registry of history tables beside the transaction table (see :mod:`versioning.catalog`).

    Not append-only: it is a description of the schema, whose row of a history table is replaced
    when that table is created again or a migration changes it.
    """
    return sa.Table(
        CATALOG_TABLE,
        metadata,
        sa.Column("history_table", sa.String(255), primary_key=True),
        sa.Column("live_table", sa.String(255), nullable=False),
        sa.Column("kind", sa.String(8), nullable=False),
        # The description of the history table (its key, columns and their types...): JSON,
        # LONGTEXT on MariaDB.
        sa.Column("description", sa.JSON(), nullable=False),
        info={_INFO_KEY: "catalog"},
        comment="versioning: which history tables exist, for which live tables, with which columns",
    )


def catalog_table(transactions: sa.Table) -> sa.Table:
    """The registry table beside the transaction table ``transactions``."""
    prefix = "" if transactions.schema is None else f"{transactions.schema}."
    return transactions.metadata.tables[prefix + CATALOG_TABLE]


def integrity_tables(transactions: sa.Table) -> tuple[sa.Table, sa.Table, sa.Table]:
    """The digest, seal and seal entry tables beside the transaction table ``transactions``."""
    metadata = transactions.metadata
    prefix = "" if transactions.schema is None else f"{transactions.schema}."
    return (
        metadata.tables[prefix + DIGEST_TABLE],
        metadata.tables[prefix + SEAL_TABLE],
        metadata.tables[prefix + SEAL_ENTRY_TABLE],
    )


#: Longest accepted ``action``, ``outcome`` and ``target`` of an event (the columns' lengths).
EVENT_ACTION_MAX = 100
EVENT_OUTCOME_MAX = 32
EVENT_TARGET_MAX = 255


def _event_table(metadata: sa.MetaData, transactions: sa.Table) -> None:
    """The event table beside ``transactions`` (see :mod:`versioning.event_log`): one row per
    recorded event (a login refused, a permission denied, a commit that failed), each in a
    transaction of its own."""
    sa.Table(
        EVENT_TABLE,
        metadata,
        sa.Column("id", _ID_TYPE, primary_key=True, autoincrement=True),
        sa.Column(
            "transaction_id",
            _ID_TYPE,
            sa.ForeignKey(transactions.c.id, name=f"fk_{EVENT_TABLE}_transaction"),
            nullable=False,
        ),
        sa.Column("action", sa.String(EVENT_ACTION_MAX), nullable=False),
        sa.Column("outcome", sa.String(EVENT_OUTCOME_MAX), nullable=False),
        sa.Column("target", sa.String(EVENT_TARGET_MAX), nullable=True),
        # JSON: LONGTEXT on MariaDB.
        sa.Column("details", sa.JSON(none_as_null=True), nullable=True),
        sa.Index(_index_name(EVENT_TABLE, "transaction"), "transaction_id"),
        sa.Index(_index_name(EVENT_TABLE, "action"), "action", "transaction_id"),
        sa.Index(_index_name(EVENT_TABLE, "outcome"), "outcome", "transaction_id"),
        sqlite_autoincrement=True,
        info={_INFO_KEY: "event"},
        comment="versioning: failed and denied actions on record, one transaction each",
    )


CAPTURE_OPEN_TABLE = "versioning_capture_open"


def capture_open_table(transactions: sa.Table) -> sa.Table:
    """Beside the transaction table, where the database has capture triggers and no
    transaction-local settings (SQLite): one row, the open transaction's context and transaction
    row (see :mod:`versioning.triggers`). Made when a model captured by the database is declared."""
    metadata = transactions.metadata
    prefix = "" if transactions.schema is None else f"{transactions.schema}."
    found = metadata.tables.get(prefix + CAPTURE_OPEN_TABLE)
    if found is not None:
        return found
    return sa.Table(
        CAPTURE_OPEN_TABLE,
        metadata,
        # SQLite: 1; MariaDB: the connection's CONNECTION_ID() (up to 2**32 - 1).
        sa.Column("id", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("key", sa.String(64), nullable=False),
        sa.Column("transaction_id", _ID_TYPE, nullable=True),
        sa.Column("actor", sa.String(255), nullable=True),
        sa.Column("source_ip", sa.String(45), nullable=True),
        sa.Column("request_id", sa.String(128), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("extra", sa.Text(), nullable=True),
        schema=transactions.schema,
        info={_INFO_KEY: "capture_open"},
    )


def opened_table(transactions: sa.Table) -> sa.Table | None:
    """The open-transaction table beside ``transactions`` if a model captured by the database
    was declared there (see :func:`capture_open_table`)."""
    prefix = "" if transactions.schema is None else f"{transactions.schema}."
    return transactions.metadata.tables.get(prefix + CAPTURE_OPEN_TABLE)


def event_table(transactions: sa.Table) -> sa.Table:
    """The event table beside the transaction table ``transactions``."""
    prefix = "" if transactions.schema is None else f"{transactions.schema}."
    return transactions.metadata.tables[prefix + EVENT_TABLE]


_UNRESOLVED = "versioning_unresolved_types"


def _masked_type() -> sa.types.TypeEngine[Any]:
    """A masked snapshot column: any mask output, whatever its length (MariaDB's TEXT is 64 KiB)."""
    return sa.Text().with_variant(mysql.LONGTEXT(), "mysql", "mariadb")


def snapshot_column(name: str, source: sa.Column[Any], masked: bool) -> sa.Column[Any]:
    """A nullable, constraint-free copy of ``source`` for a history snapshot.

    A foreign-key column whose target table is declared later has no type yet (SQLAlchemy fills
    it in when the target appears); its copy is remembered and gets the type at that moment.
    """
    type_: sa.types.TypeEngine[Any] = _masked_type() if masked else source.type
    column = sa.Column(name, type_, nullable=True, autoincrement=False)
    if _compat.type_is_null(type_) and isinstance(source.table, sa.Table):
        pending = source.table.metadata.info.setdefault(_UNRESOLVED, [])
        pending.append((column, source))
    return column


@event.listens_for(sa.Column, "after_parent_attach")
def _resolve_types(column: sa.Column[Any], table: sa.Table) -> None:
    """Give deferred snapshot copies the type their live column has just received."""
    metadata = getattr(table, "metadata", None)
    pending = metadata.info.get(_UNRESOLVED) if metadata is not None else None
    if not pending:
        return
    for entry in list(pending):
        copy, source = entry
        if not _compat.type_is_null(source.type):
            copy.type = source.type
            pending.remove(entry)


class TransactionKey(sa.ForeignKeyConstraint):
    """The foreign key of a history table to its transaction table.

    The transaction table has the ``MetaData``'s schema; ``None`` means the connection's default
    schema, which an unqualified name only reaches from a table in that schema. A history table in
    another schema (``__table_args__ = {"schema": ...}``) would then name a table that does not
    exist there (MariaDB: errno 150), so the DDL names the default schema, known once connected.
    """

    inherit_cache = True


@compiles(TransactionKey)
def _compile_transaction_key(
    constraint: TransactionKey, compiler: DDLCompiler, **kw: Any
) -> str | None:
    sql: str | None = compiler.visit_foreign_key_constraint(constraint, **kw)
    if sql is None:  # SQLite: no foreign key across attached databases
        return None
    local = constraint.table
    remote = constraint.elements[0].column.table
    default = compiler.dialect.default_schema_name
    if local.schema is None or remote.schema is not None or not default or local.schema == default:
        return sql
    preparer = compiler.preparer
    unqualified = f"REFERENCES {preparer.format_table(remote)} "
    qualified = f"REFERENCES {preparer.quote_schema(default)}.{preparer.format_table(remote)} "
    assert unqualified in sql, sql
    return sql.replace(unqualified, qualified, 1)


def personal_column() -> sa.Column[Any]:
    """The :data:`PERSONAL` column: per personal column of the row, its salt or commitments."""
    return sa.Column(PERSONAL, sa.JSON(none_as_null=True), nullable=True)


def operation_type() -> sa.Enum:
    """The type of a history table's :data:`OPERATION` column (stores ``insert``...)."""
    return sa.Enum(
        Operation,
        native_enum=False,
        length=6,
        values_callable=lambda members: [m.value for m in members],
        validate_strings=True,
        name="versioning_operation",
    )


def history_table_for(
    model_name: str,
    name: str,
    live: sa.Table,
    transactions: sa.Table,
    key_columns: list[sa.Column[Any]],
    data_columns: list[sa.Column[Any]],
    extra_columns: tuple[sa.Column[Any], ...] = (),
) -> sa.Table:
    """Create the history table ``name`` beside ``live`` in the same ``MetaData`` and schema.

    ``key_columns`` are snapshot columns of the primary key (already built with
    :func:`snapshot_column`), ``data_columns`` the other snapshot columns, ``extra_columns``
    the library's own columns a model's options add (:func:`personal_column`).
    """
    metadata = live.metadata
    key = name if live.schema is None else f"{live.schema}.{name}"
    if key in metadata.tables:
        raise ConfigurationError(
            f"cannot create history table {key!r} for {model_name} (table {live.name!r}): the "
            f"MetaData already has a table of that name; set {model_name}.__versioned__"
            f"['table_name'] to another name"
        )
    operation = operation_type()
    return sa.Table(
        name,
        metadata,
        sa.Column(VERSION_ID, _ID_TYPE, primary_key=True, autoincrement=True),
        sa.Column(TRANSACTION_ID, _ID_TYPE, nullable=False),
        sa.Column(OPERATION, operation, nullable=False),
        *key_columns,
        *data_columns,
        sa.Column(CHANGES, sa.JSON(none_as_null=True), nullable=True),
        *extra_columns,
        TransactionKey([TRANSACTION_ID], [transactions.c.id], name=f"fk_{name}_transaction"[:60]),
        sa.Index(_index_name(name, "record"), *[c.name for c in key_columns], TRANSACTION_ID),
        sa.Index(_index_name(name, "transaction"), TRANSACTION_ID),
        # Beside the live table: in the default schema too when the MetaData has another one.
        schema=live.schema if live.schema is not None else sa.BLANK_SCHEMA,
        info={_INFO_KEY: "history", "live_table": live.fullname},
        comment=f"versioning: history of {live.fullname}",
    )


def foreign_key_index(history: sa.Table, column: str) -> None:
    """Index a snapshot column that holds a foreign key, with the transaction id.

    Reading a one-to-many relationship as of a moment looks children up by that column in their
    history (see :mod:`versioning.related`): without the index it would scan all of it.
    """
    name = _index_name(history.name, f"fk_{column}")
    if any(index.name == name for index in history.indexes):
        return
    sa.Index(name, history.c[column], history.c[TRANSACTION_ID])
