"""The registry of history tables: what the database itself says about its history.

Reading history needs to know which history tables exist, for which live tables, with which key and
columns, and how to read their values. In-process that comes from the versioned models
(:func:`from_session`, :func:`from_metadata`); a tool given only a database URL (the ``versioning``
command line, an auditor's script) reads it from the registry table ``versioning_catalog``
(:func:`load`), written beside the transaction table:

* by ``metadata.create_all()``, for every history table of that ``MetaData`` (a DDL event: the
  registry is created with the transaction table, and its rows are written once every table is);
* by :func:`versioning.migrations.write_catalog` in a migration's ``upgrade()``.

One row per history table: its live table, kind (``"model"`` or ``"link"``) and a JSON description
of its key, its columns in table order with their types (:mod:`versioning.type_descriptions`), its
masked and personal columns, and which attribute each column records (the ``changes`` document is
keyed by attribute). The registry is *not* append-only: it describes the schema, and a table's row
is replaced when the table is created again or a migration refreshes it.

A :class:`Catalog` loaded from the database has history tables whose column types are rebuilt from
the descriptions: the same Python values as the models give for SQLAlchemy's own types, the stored
value where the model's type belongs to the application (an ``Enum`` class: its stored ``str``).
Hashing them (:mod:`versioning.canonical`) gives the same bytes as from the models, so
:func:`versioning.verify` can run from a loaded catalog.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.orm import Session

from versioning.declaration import ModelSpec, all_specs
from versioning.errors import ArgumentError, CatalogError
from versioning.link_tables import LINKS_INFO, link_spec
from versioning.schema import (
    CATALOG_TABLE,
    HISTORY_BY_DATABASE,
    META_COLUMNS,
    OPERATION,
    PERSONAL,
    RECORD_KEY_INFO,
    TRANSACTION_ID,
    TRANSACTION_TABLE,
    VERSION_ID,
    catalog_table,
    event_table,
    integrity_tables,
    operation_type,
    transaction_table_for,
)
from versioning.type_descriptions import describe, is_exact, rebuild

__all__ = [
    "Catalog",
    "TableEntry",
    "from_metadata",
    "from_session",
    "load",
    "write",
]

#: The version of the description's layout; a newer one is refused by an older library.
FORMAT = 1

_INFO_KEY = "versioning"
#: Integer ids as the schema declares them (see versioning.schema).
_ID_TYPE = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


@dataclass(frozen=True)
class TableEntry:
    """One history table and what it records."""

    #: The history table, with column types that decode stored values to Python values.
    history: sa.Table
    #: The live table's name (``"schema.name"`` when it has a schema).
    live: str
    #: The live key's column names, as named in the history table.
    primary_key: tuple[str, ...]
    #: The versioned snapshot columns, in table order.
    columns: tuple[str, ...]
    masked: frozenset[str]
    #: Personal columns (their recorded values may be erased, see versioning.erase).
    personal: frozenset[str]
    #: ``"model"`` or ``"link"`` (many-to-many link history).
    kind: str
    #: The mapped class when known in-process; ``None`` when loaded from the database alone.
    model: type[Any] | None
    #: Attribute key -> history column name: the ``changes`` document is keyed by attribute.
    attributes: Mapping[str, str] = field(default_factory=dict)
    #: Columns whose type could not be rebuilt to hash as the model's does (loaded catalogs
    #: only; see versioning.type_descriptions): verifying this table from the registry is refused.
    inexact: frozenset[str] = frozenset()

    @property
    def name(self) -> str:
        """The history table's name (``"schema.name"`` when it has a schema)."""
        return self.history.fullname


@dataclass(frozen=True)
class Catalog:
    """The history tables of one transaction table, and the library's tables beside it."""

    #: ``versioning_transaction``.
    transaction: sa.Table
    tables: tuple[TableEntry, ...]

    @property
    def digests(self) -> sa.Table:
        return integrity_tables(self.transaction)[0]

    @property
    def seals(self) -> sa.Table:
        return integrity_tables(self.transaction)[1]

    @property
    def seal_entries(self) -> sa.Table:
        return integrity_tables(self.transaction)[2]

    @property
    def events(self) -> sa.Table:
        """``versioning_event``: failed and denied actions (see :mod:`versioning.event_log`)."""
        return event_table(self.transaction)

    @property
    def registry(self) -> sa.Table:
        """``versioning_catalog``."""
        return catalog_table(self.transaction)

    def entry(self, name: str) -> TableEntry:
        """The entry of a history table, by its name or its live table's name."""
        for entry in self.tables:
            if name in (entry.history.fullname, entry.live):
                return entry
        for entry in self.tables:  # a table of another schema, named without it
            if name in (entry.history.name, entry.live.rsplit(".", 1)[-1]):
                return entry
        known = ", ".join(sorted(e.live for e in self.tables)) or "none"
        raise CatalogError(
            f"no history table for {name!r} in the registry; the versioned tables are: {known}"
        )


# --- in-process ----------------------------------------------------------------------------------


def _record_index_key(history: sa.Table) -> tuple[str, ...]:
    """The key columns of a history table known by its table alone: its record index's columns."""
    for index in history.indexes:
        if index.name and index.name.endswith("_record"):
            return tuple(c.name for c in index.columns if c.name != TRANSACTION_ID)
    return ()


def _model_entry(history: sa.Table, specs: list[ModelSpec]) -> TableEntry:
    root = next((spec for spec in specs if spec.base is None), specs[0].root)
    attributes: dict[str, str] = {}
    masked: set[str] = set()
    for spec in [root, *(spec for spec in specs if spec is not root)]:
        for key, name in spec.history_names.items():
            attributes.setdefault(key, name)
        masked.update(spec.history_names[key] for key in spec.masks)
    return TableEntry(
        history=history,
        live=str(history.info.get("live_table", "")),
        primary_key=tuple(root.history_names[key] for key in root.pk_keys),
        columns=_snapshot_columns(history),
        masked=frozenset(masked),
        personal=frozenset(history.info.get(PERSONAL, {}).values()),
        kind="model",
        model=root.model,
        attributes=attributes,
    )


def _snapshot_columns(history: sa.Table) -> tuple[str, ...]:
    return tuple(c.name for c in history.columns if c.name not in META_COLUMNS)


def _link_entry(history: sa.Table, association: sa.Table) -> TableEntry:
    spec = link_spec(association)
    keys = tuple(c.name for c in spec.keys) if spec is not None else _record_index_key(history)
    columns = _snapshot_columns(history)
    return TableEntry(
        history=history,
        live=association.fullname,
        primary_key=keys,
        columns=columns,
        masked=frozenset(),
        personal=frozenset(),
        kind="link",
        model=None,
        attributes={name: name for name in columns},
    )


def _bare_entry(history: sa.Table) -> TableEntry:
    """A history table whose model this process no longer has: what its table says."""
    columns = _snapshot_columns(history)
    return TableEntry(
        history=history,
        live=str(history.info.get("live_table", "")),
        primary_key=_record_index_key(history),
        columns=columns,
        masked=frozenset(),
        personal=frozenset(history.info.get(PERSONAL, {}).values()),
        kind="model",
        model=None,
        attributes={name: name for name in columns},
    )


def _entries(metadata: sa.MetaData, only: set[str] | None = None) -> list[TableEntry]:
    """An entry per history table of ``metadata`` (of ``only`` those full names, if given)."""
    specs: dict[sa.Table, list[ModelSpec]] = {}
    for spec in all_specs():
        if spec.history.metadata is metadata:
            specs.setdefault(spec.history, []).append(spec)
    associations = {
        table.info[LINKS_INFO]: table
        for table in metadata.tables.values()
        if LINKS_INFO in table.info
    }
    out: list[TableEntry] = []
    for history in sorted(metadata.tables.values(), key=lambda t: t.fullname):
        if history.info.get(_INFO_KEY) != "history":
            continue
        if only is not None and history.fullname not in only:
            continue
        if history in specs:
            out.append(_model_entry(history, specs[history]))
            continue
        association = associations.get(history.name)
        link = link_spec(association) if association is not None else None
        if association is not None and link is not None and link.history is history:
            out.append(_link_entry(history, association))
        else:
            out.append(_bare_entry(history))
    return out


def _transaction_table(metadata: sa.MetaData) -> sa.Table | None:
    key = TRANSACTION_TABLE if metadata.schema is None else f"{metadata.schema}.{TRANSACTION_TABLE}"
    table = metadata.tables.get(key)
    if table is None or table.info.get(_INFO_KEY) != "transaction":
        return None
    return table


def from_metadata(metadata: sa.MetaData) -> Catalog:
    """The catalog of a ``MetaData``'s versioned models (in-process: no database is read)."""
    if not isinstance(metadata, sa.MetaData):
        raise ArgumentError(
            f"versioning.catalog.from_metadata() takes a MetaData, got {metadata!r}"
        )
    transactions = _transaction_table(metadata)
    if transactions is None:
        raise CatalogError(
            "this MetaData has no versioned model (no versioning_transaction table): import the "
            "models that mix in versioning.Versioned before asking for their catalog"
        )
    return Catalog(transactions, tuple(_entries(metadata)))


def existing_tables(connection: Connection, schemas: Iterable[str | None]) -> set[str]:
    """The names (``schema.name``) of the tables in ``schemas`` that exist on ``connection``.

    Only schemas the database has are looked into (a process may hold models of schemas that
    this database does not have).
    """
    inspector = sa.inspect(connection)
    wanted = set(schemas)
    present = set(inspector.get_schema_names()) if wanted - {None} else set()
    names: set[str] = set()
    for schema in wanted:
        if schema is not None and schema not in present:
            continue
        prefix = "" if schema is None else f"{schema}."
        names.update(prefix + table for table in inspector.get_table_names(schema=schema))
    return names


def session_catalogs(
    session: Session, metadata: sa.MetaData | None, name: str
) -> list[tuple[Any, Catalog]]:
    """Per transaction table the session reaches and that exists in its database: a mapper bound
    to it (to ask the session for its connection) and its catalog. ``metadata`` restricts them to
    that ``MetaData``'s; without it, a ``MetaData`` counts only if every history table of its
    models exists (a process may declare models of several over the same database)."""
    if metadata is not None and not isinstance(metadata, sa.MetaData):
        raise ArgumentError(f"versioning.{name}() takes metadata=MetaData, got {metadata!r}")
    by_key: dict[tuple[Any, str], list[ModelSpec]] = {}
    for spec in all_specs():
        if metadata is not None and spec.transactions.metadata is not metadata:
            continue
        try:
            bind = session.get_bind(mapper=spec.mapper)
        except sa.exc.UnboundExecutionError:
            continue
        engine = bind.engine if isinstance(bind, Connection) else bind
        by_key.setdefault((engine, spec.transactions.fullname), []).append(spec)
    found = []
    for (_, _), specs in sorted(by_key.items(), key=lambda item: item[0][1]):
        connection = session.connection(bind_arguments={"mapper": specs[0].mapper})
        schemas = {spec.history.schema for spec in specs} | {
            spec.transactions.schema for spec in specs
        }
        existing = existing_tables(connection, schemas)
        catalog = _pick(specs, existing, metadata is not None)
        if catalog is not None:
            found.append((specs[0].mapper, catalog))
    return found


def _pick(specs: list[ModelSpec], existing: set[str], given: bool) -> Catalog | None:
    """The catalog of specs sharing one transaction table: their MetaData whose tables exist."""
    first = specs[0].transactions
    if first.fullname not in existing:
        return None
    by_metadata: dict[sa.MetaData, list[ModelSpec]] = {}
    for spec in specs:
        by_metadata.setdefault(spec.transactions.metadata, []).append(spec)
    chosen = [
        (meta, group)
        for meta, group in by_metadata.items()
        if given or all(spec.history.fullname in existing for spec in group)
    ]
    if not chosen:
        return None
    entries: dict[str, TableEntry] = {}
    for meta, group in chosen:
        # The models' history tables, and the link history tables of their MetaData that exist.
        wanted = {spec.history.fullname for spec in group} | {
            table.fullname
            for table in meta.tables.values()
            if table.info.get(_INFO_KEY) == "history" and table.fullname in existing
        }
        for entry in _entries(meta, wanted):
            known = entries.setdefault(entry.history.fullname, entry)
            if known is not entry and known.history.c.keys() != entry.history.c.keys():
                raise ArgumentError(
                    f"several MetaData describe the history table {known.history.fullname!r} "
                    f"differently: pass metadata= (your models' MetaData)"
                )
    transactions = chosen[0][1][0].transactions
    return Catalog(transactions, tuple(entries[name] for name in sorted(entries)))


def from_session(session: Session, *, metadata: sa.MetaData | None = None) -> Catalog:
    """The catalog of the versioned models the session reaches (in-process), whose tables exist
    in its database; ``metadata`` chooses among several transaction tables."""
    from versioning import arguments

    session = arguments.session(session, "catalog.from_session")
    found = session_catalogs(session, metadata, "catalog.from_session")
    if not found:
        raise CatalogError(
            "the session reaches no versioned table that exists in its database: import the "
            "versioned models and create their tables (metadata.create_all or a migration)"
        )
    if len(found) > 1:
        names = ", ".join(catalog.transaction.fullname for _, catalog in found)
        raise ArgumentError(
            f"versioning.catalog.from_session() reaches several transaction tables ({names}): "
            f"pass metadata="
        )
    return found[0][1]


# --- the registry's rows -------------------------------------------------------------------------


def _class_path(model: type[Any] | None) -> str | None:
    return None if model is None else f"{model.__module__}.{model.__qualname__}"


def describe_entry(entry: TableEntry, dialect: Dialect) -> dict[str, Any]:
    """The JSON description of a history table, its types as ``dialect`` stores them (and,
    for one the database's triggers write, ``"capture": "database"``: how seal and verify
    from the registry alone know it)."""
    described = _description(entry, dialect)
    if entry.history.info.get(HISTORY_BY_DATABASE):
        described["capture"] = "database"
    return described


def _description(entry: TableEntry, dialect: Dialect) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "schema": entry.history.schema,
        "name": entry.history.name,
        "primary_key": list(entry.primary_key),
        "columns": [
            {"name": column.name, "type": describe(column.type, dialect)}
            for column in entry.history.columns
            if column.name not in META_COLUMNS
        ],
        "order": [column.name for column in entry.history.columns],
        "masked": sorted(entry.masked),
        "personal": dict(sorted(entry.history.info.get(PERSONAL, {}).items())),
        "attributes": dict(entry.attributes),
        "model": _class_path(entry.model),
    }


def write(connection: Connection, catalog: Catalog, *, replace_all: bool = False) -> None:
    """Write (replace) the registry rows of ``catalog``'s tables. The registry table must exist.

    ``replace_all`` also deletes the rows of history tables the database no longer has.
    """
    registry = catalog.registry
    names = [entry.history.fullname for entry in catalog.tables]
    if names:
        connection.execute(registry.delete().where(registry.c.history_table.in_(names)))
        connection.execute(
            registry.insert(),
            [
                {
                    "history_table": entry.history.fullname,
                    "live_table": entry.live,
                    "kind": entry.kind,
                    "description": describe_entry(entry, connection.dialect),
                }
                for entry in catalog.tables
            ],
        )
    if replace_all:
        listed = connection.execute(sa.select(registry.c.history_table)).scalars().all()
        schemas = {name.rpartition(".")[0] or None for name in listed}
        existing = existing_tables(connection, schemas)
        gone = [name for name in listed if name not in existing]
        if gone:
            connection.execute(registry.delete().where(registry.c.history_table.in_(gone)))


@event.listens_for(sa.MetaData, "after_create")
def _written_with_the_tables(metadata: sa.MetaData, connection: Connection, **kw: Any) -> None:
    """``create_all()``: the registry rows of the ``MetaData``'s history tables that exist."""
    transactions = _transaction_table(metadata)
    if transactions is None:
        return
    registry = catalog_table(transactions)
    entries = _entries(metadata)
    if not entries:
        return
    schemas = {registry.schema} | {entry.history.schema for entry in entries}
    existing = existing_tables(connection, schemas)
    if registry.fullname not in existing:
        return  # create_all(tables=[...]) without it
    present = tuple(entry for entry in entries if entry.history.fullname in existing)
    write(connection, Catalog(transactions, present))


# --- loading from the database -------------------------------------------------------------------


def _meta_column(name: str) -> sa.Column[Any]:
    if name in (VERSION_ID, TRANSACTION_ID):
        return sa.Column(name, _ID_TYPE, primary_key=name == VERSION_ID, autoincrement=False)
    if name == OPERATION:
        return sa.Column(name, operation_type())
    return sa.Column(name, sa.JSON(none_as_null=True))  # CHANGES, PERSONAL


def _strings(value: Any, what: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{what} is not a list of names")
    return list(value)


def _mapping(value: Any, what: str) -> dict[str, str]:
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise ValueError(f"{what} is not an object of names")
    return dict(value)


def _loaded_entry(
    metadata: sa.MetaData, live: str, kind: str, document: Mapping[str, Any]
) -> TableEntry:
    fmt = document.get("format")
    if not isinstance(fmt, int) or fmt > FORMAT:
        raise CatalogError(
            f"the registry row of {document.get('name')!r} has format {fmt!r}, newer than this "
            f"versioning reads ({FORMAT}): upgrade sqlalchemy-versioning"
        )
    name = document["name"]
    schema = document.get("schema")
    if not isinstance(name, str) or not (schema is None or isinstance(schema, str)):
        raise ValueError("name or schema is not a string")
    described = {}
    for item in document["columns"]:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise ValueError("a column has no name")
        if not isinstance(item.get("type"), dict):
            raise ValueError(f"column {item['name']!r} has no type")
        described[item["name"]] = item["type"]
    columns: list[sa.Column[Any]] = []
    for column in _strings(document["order"], "order"):
        if column in META_COLUMNS:
            columns.append(_meta_column(column))
        elif column in described:
            columns.append(sa.Column(column, rebuild(described[column]), nullable=True))
        else:
            raise ValueError(f"column {column!r} has no description")
    personal = _mapping(document.get("personal", {}), "personal")
    info: dict[str, Any] = {_INFO_KEY: "history", "live_table": live}
    if personal:
        info[PERSONAL] = personal
    primary_key = tuple(_strings(document["primary_key"], "primary_key"))
    # What the models' tables say of themselves (their key, a link's table), for the readers of
    # a table alone (versioning.archive_format.key_columns, versioning.pruning.kept).
    info[RECORD_KEY_INFO] = primary_key
    if kind == "link":
        info["link_table"] = live
    if document.get("capture") == "database":
        info[HISTORY_BY_DATABASE] = True
    history = sa.Table(
        name,
        metadata,
        *columns,
        schema=schema if schema is not None else sa.BLANK_SCHEMA,
        info=info,
    )
    return TableEntry(
        history=history,
        live=live,
        primary_key=primary_key,
        columns=_snapshot_columns(history),
        masked=frozenset(_strings(document.get("masked", []), "masked")),
        personal=frozenset(personal.values()),
        kind=kind,
        model=None,
        attributes=_mapping(document.get("attributes", {}), "attributes"),
        inexact=frozenset(name for name, type_ in described.items() if not is_exact(type_)),
    )


def _missing(schema: str | None) -> CatalogError:
    where = f" in schema {schema!r}" if schema else ""
    return CatalogError(
        f"the database has no {CATALOG_TABLE} table{where} (the registry of history tables): "
        f"run metadata.create_all(engine) with the versioned models imported, or "
        f"versioning.migrations.write_catalog(op) in a migration"
    )


def load(connection: Connection, *, schema: str | None = None) -> Catalog:
    """The catalog of the database ``connection`` is on, from its registry table alone.

    ``schema`` is the schema of the transaction table (the ``MetaData``'s schema; default: the
    connection's). History tables the registry names but the database no longer has are left out.
    """
    if not isinstance(connection, Connection):
        raise ArgumentError(
            f"versioning.catalog.load() takes a sqlalchemy Connection (engine.connect()), got "
            f"{connection!r}"
        )
    metadata = sa.MetaData(schema=schema)
    transactions = transaction_table_for(metadata)
    registry = catalog_table(transactions)
    existing = existing_tables(connection, {schema})
    if registry.fullname not in existing:
        raise _missing(schema)
    rows = connection.execute(
        sa.select(
            registry.c.history_table,
            registry.c.live_table,
            registry.c.kind,
            registry.c.description,
        )
    ).all()
    documents = []
    for history_name, live, kind, document in sorted(rows, key=lambda row: str(row[0])):
        if isinstance(document, str):  # a driver that does not decode JSON
            document = json.loads(document)
        documents.append((str(history_name), str(live), str(kind), document))
    schemas = {
        document.get("schema") if isinstance(document, dict) else None
        for _, _, _, document in documents
    }
    existing |= existing_tables(connection, schemas - {schema})
    entries: list[TableEntry] = []
    for history_name, live, kind, document in documents:
        if history_name not in existing:
            continue
        try:
            if not isinstance(document, dict):
                raise ValueError("the description is not a JSON object")
            entries.append(_loaded_entry(metadata, live, kind, document))
        except (KeyError, ValueError, TypeError) as error:
            raise CatalogError(
                f"the registry row of {history_name!r} in {registry.fullname} cannot be read "
                f"({error}): write it again with metadata.create_all(engine) or "
                f"versioning.migrations.write_catalog(op)"
            ) from None
    return Catalog(transactions, tuple(entries))
